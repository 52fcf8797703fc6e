"""Token ids and shifted targets of every SFT format, packing, the block-causal mask, packed ==
separate forward passes, and the data order of micro-batches."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from alignkit.data.collate import (block_causal_mask, collate_packed, collate_padded, pack_rows)
from alignkit.data.schemas import SFTExample
from alignkit.data.sft import epoch_order, load_sft_data, micro_batch_indices
from alignkit.data.tokenize import (IGNORE, TokenizedExample, render_prompt, tokenize_sft,
                                    use_chat_template)
from alignkit.errors import UserError

pytestmark = pytest.mark.unit

IM_START, IM_END, NEWLINE = "<|im_start|>", "<|im_end|>", "\n"


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def plain_tok(tiny_tokenizer):
    """The tiny tokenizer without a chat template (like a base model's)."""
    t = copy.deepcopy(tiny_tokenizer)
    t.chat_template = None
    assert not t.chat_template and tiny_tokenizer.chat_template
    return t


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def shifted(input_ids: list[int], learn: list[bool]) -> list[int]:
    """Reference: targets[t] = input_ids[t+1] where token t+1 is learned, last is IGNORE."""
    return [input_ids[t + 1] if learn[t + 1] else IGNORE
            for t in range(len(input_ids) - 1)] + [IGNORE]


def test_tiny_tokenizer_special_ids(tok):
    assert tok.convert_tokens_to_ids([IM_START, IM_END]) == [1, 2]
    assert tok.eos_token_id == 2 and tok.pad_token_id == 3 and tok.bos_token_id == 0
    # no BOS is added, so add_special_tokens=True gives the same ids as False
    assert tok("Hi there")["input_ids"] == ids(tok, "Hi there")


# ---------------------------------------------------------------------------------------------
# prompt / completion


def test_prompt_completion_with_chat_template(tok):
    ex = SFTExample("prompt_completion", prompt="Why is the sky blue?",
                    completion="Rayleigh scattering.", where="d.jsonl:1")
    out = tokenize_sft(ex, tok, chat="auto")
    prompt_part = ids(tok, f"{IM_START}user\nWhy is the sky blue?{IM_END}\n{IM_START}assistant\n")
    answer_part = ids(tok, f"Rayleigh scattering.{IM_END}\n")
    content = ids(tok, "Rayleigh scattering.")
    assert prompt_part[0] == 1 and prompt_part[-1] == ids(tok, NEWLINE)[0]
    # the learned part is the answer, its end-of-turn token, and the template's newline after it
    assert answer_part == content + [2] + ids(tok, NEWLINE)
    assert out.input_ids == prompt_part + answer_part
    n_p, n = len(prompt_part), len(prompt_part) + len(answer_part)
    expected = [IGNORE] * (n_p - 1) + answer_part + [IGNORE]
    assert out.targets == expected
    assert len(out.targets) == n == len(out)
    assert out.num_targets == len(answer_part)
    # positions that predict template markup or prompt text are never learned
    assert all(t == IGNORE for t in out.targets[:n_p - 1])
    assert out.where == "d.jsonl:1"


def test_prompt_completion_always_equals_auto_with_template(tok):
    ex = SFTExample("prompt_completion", prompt="Q?", completion="A.")
    assert tokenize_sft(ex, tok, chat="always") == tokenize_sft(ex, tok, chat="auto")


def test_train_on_prompt_learns_everything(tok):
    ex = SFTExample("prompt_completion", prompt="Why is the sky blue?",
                    completion="Rayleigh scattering.")
    out = tokenize_sft(ex, tok, chat="auto", train_on_prompt=True)
    assert out.input_ids == tokenize_sft(ex, tok, chat="auto").input_ids
    assert out.targets == out.input_ids[1:] + [IGNORE]
    assert out.num_targets == len(out) - 1


def test_plain_concatenation_appends_eos(tok):
    ex = SFTExample("prompt_completion", prompt="Question: why?", completion=" Because.")
    out = tokenize_sft(ex, tok, chat="never")
    p, c = ids(tok, "Question: why?"), ids(tok, " Because.")
    assert out.input_ids == p + c + [tok.eos_token_id]
    assert out.targets == [IGNORE] * (len(p) - 1) + c + [tok.eos_token_id] + [IGNORE]
    assert out.num_targets == len(c) + 1
    everything = tokenize_sft(ex, tok, chat="never", train_on_prompt=True)
    assert everything.input_ids == out.input_ids
    assert everything.targets == out.input_ids[1:] + [IGNORE]


def test_auto_without_template_is_plain(tok, plain_tok):
    ex = SFTExample("prompt_completion", prompt="Q?", completion=" A.")
    assert tokenize_sft(ex, plain_tok, chat="auto") == tokenize_sft(ex, tok, chat="never")


def test_chat_messages_need_a_template(plain_tok):
    ex = SFTExample("prompt_completion", prompt=[{"role": "user", "content": "Q?"}],
                    completion="A.", where="d.jsonl:3")
    with pytest.raises(UserError) as info:
        tokenize_sft(ex, plain_tok, chat="auto")
    assert str(info.value) == (
        "d.jsonl:3: chat messages need a model with a chat template, and this tokenizer has none: "
        "give one with --chat-template (a Jinja file, or chatml, llama3, zephyr, plain), use a "
        "chat model, or give plain strings instead of message lists")
    # a {"messages"} record too (it went to the template unchecked before)
    msgs = SFTExample("messages", messages=[{"role": "user", "content": "Q?"},
                                            {"role": "assistant", "content": "A."}],
                      where="d.jsonl:4")
    with pytest.raises(UserError, match="^d.jsonl:4: chat messages need a model with a chat "
                                        "template"):
        tokenize_sft(msgs, plain_tok, chat="never")
    with pytest.raises(UserError) as info:
        tokenize_sft(SFTExample("prompt_completion", prompt="Q?", completion="A.",
                                where="d.jsonl:5"), plain_tok, chat="always")
    assert str(info.value) == (
        "d.jsonl:5: --chat always needs a model with a chat template, and this tokenizer has "
        "none: give one with --chat-template, use a chat model, or --chat never (plain text)")


MSG_PROMPT = [{"role": "user", "content": "Q?"}]


def _no_template_readers():
    """reader -> (read(spec, tokenizer), a plain record, a record with chat messages)."""
    from alignkit.data.preferences import load_preference_groups
    from alignkit.data.prompts import load_prompts, read_prompts
    from alignkit.data.sft import tokenize_file
    from alignkit.generation.responses import sample_responses

    def label(spec, tok):  # checked before the (absent) model samples
        sample_responses(None, tok, read_prompts(spec, 0), 2, 8, 1.0, 1.0, 2, 0)

    pair = {"prompt": "q", "chosen": "a", "rejected": "b"}
    chat_pair = {**pair, "prompt": MSG_PROMPT}
    return {
        "sft": (lambda spec, tok: tokenize_file(spec, tok, "auto", False, 512, False),
                {"prompt": "q", "completion": "a"},
                {"messages": [*MSG_PROMPT, {"role": "assistant", "content": "A."}]}),
        "preferences": (lambda spec, tok: load_preference_groups(spec, tok), pair, chat_pair),
        "dpo": (lambda spec, tok: load_preference_groups(spec, tok, backbone="policy"), pair,
                chat_pair),
        "prompts": (lambda spec, tok: load_prompts(spec, tok), {"prompt": "q"},
                    {"prompt": MSG_PROMPT}),
        "label": (label, {"prompt": "q"}, {"prompt": MSG_PROMPT}),
    }


@pytest.mark.parametrize("reader", ["sft", "preferences", "dpo", "prompts", "label"])
def test_chat_records_without_a_template_name_file_and_line(in_tmp, plain_tok, reader):
    """At data-loading time (no transformers error from deep inside a stage)."""
    read, plain, chat_record = _no_template_readers()[reader]
    (in_tmp / "d.jsonl").write_text(json.dumps(plain) + "\n" + json.dumps(chat_record) + "\n",
                                    encoding="utf-8")
    with pytest.raises(UserError) as info:
        read("d.jsonl", plain_tok)
    assert str(info.value) == (
        "d.jsonl:2: chat messages need a model with a chat template, and this tokenizer has none: "
        "give one with --chat-template (a Jinja file, or chatml, llama3, zephyr, plain), use a "
        "chat model, or give plain strings instead of message lists")


def test_chat_always_without_a_template_names_the_prompt(in_tmp, plain_tok):
    from alignkit.data.prompts import load_prompts

    (in_tmp / "p.jsonl").write_text('{"prompt": "q"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"^p\.jsonl:1: --chat always needs a model with a chat "
                                        r"template.*--chat never \(plain text\)$"):
        load_prompts("p.jsonl", plain_tok, chat="always")
    assert load_prompts("p.jsonl", plain_tok, chat="never").texts == ["q"]


def test_message_list_prompt_uses_template_even_with_chat_never(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    ex = SFTExample("prompt_completion", prompt=msgs, completion="A.")
    out = tokenize_sft(ex, tok, chat="never")
    prompt_part = ids(tok, f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nQ?{IM_END}\n"
                           f"{IM_START}assistant\n")
    answer_part = ids(tok, f"A.{IM_END}\n")
    assert out.input_ids == prompt_part + answer_part
    assert out.targets == [IGNORE] * (len(prompt_part) - 1) + answer_part + [IGNORE]


@pytest.mark.parametrize("mode,has,needs,expected", [
    ("auto", True, False, True), ("auto", False, False, False),
    ("always", True, False, True), ("never", True, False, False),
    ("never", False, False, False), ("never", True, True, True), ("auto", True, True, True),
])
def test_use_chat_template_decision(tok, plain_tok, mode, has, needs, expected):
    assert use_chat_template(tok if has else plain_tok, mode, needs) is expected


def test_render_prompt(tok, plain_tok):
    assert render_prompt(tok, "Q?") == f"{IM_START}user\nQ?{IM_END}\n{IM_START}assistant\n"
    assert render_prompt(tok, "Q?", chat="never") == "Q?"
    assert render_prompt(plain_tok, "Q?") == "Q?"


# ---------------------------------------------------------------------------------------------
# multi-turn messages and text


def test_multi_turn_messages_learn_only_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    out = tokenize_sft(SFTExample("messages", messages=msgs), tok, chat="never")
    pieces = [
        (f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nHi{IM_END}\n"
         f"{IM_START}assistant\n", False),
        (f"Hello!{IM_END}\n", True),
        (f"{IM_START}user\nBye{IM_END}\n{IM_START}assistant\n", False),
        (f"Goodbye.{IM_END}\n", True),
    ]
    assert "".join(p for p, _ in pieces) == tok.apply_chat_template(msgs, tokenize=False)
    input_ids, learn = [], []
    for text, flag in pieces:
        piece = ids(tok, text)
        input_ids += piece
        learn += [flag] * len(piece)
    assert out.input_ids == input_ids
    assert out.targets == shifted(input_ids, learn)
    assert [t for t in out.targets if t != IGNORE] == (ids(tok, f"Hello!{IM_END}\n")
                                                       + ids(tok, f"Goodbye.{IM_END}\n"))
    # train_on_prompt learns the user turns and markup too
    everything = tokenize_sft(SFTExample("messages", messages=msgs), tok, train_on_prompt=True)
    assert everything.targets == input_ids[1:] + [IGNORE]


def test_messages_ending_with_a_user_turn(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "Bye"}]
    out = tokenize_sft(SFTExample("messages", messages=msgs), tok)
    a = ids(tok, f"{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n")
    b = ids(tok, f"Yo{IM_END}\n")
    c = ids(tok, f"{IM_START}user\nBye{IM_END}\n")
    assert out.input_ids == a + b + c
    assert out.targets == shifted(a + b + c, [False] * len(a) + [True] * len(b) + [False] * len(c))


def test_text_format_learns_all(tok):
    out = tokenize_sft(SFTExample("text", text="Once upon a time."), tok)
    body = ids(tok, "Once upon a time.")
    assert out.input_ids == body + [tok.eos_token_id]
    assert out.targets == body[1:] + [tok.eos_token_id, IGNORE]
    assert out.num_targets == len(body)


# ---------------------------------------------------------------------------------------------
# packing


@pytest.mark.parametrize("lengths,capacity,rows", [
    ([], 8, []),
    ([1, 1, 1, 1], 4, [[0, 1, 2, 3]]),
    # 2 rows: 5 -> r0, 4 -> r1, 3 -> r1 (4 < 5), 2 -> r0 (5 < 7)
    ([5, 3, 4, 2], 8, [[0, 3], [1, 2]]),
    # 2 rows overflow (6+6 > 10), so 3 rows
    ([6, 6, 6], 10, [[0], [1], [2]]),
    # an example longer than the capacity gets a row of its own
    ([12, 3], 10, [[0], [1]]),
    # 12 -> r0, 3 -> r1, 2 -> r1
    ([3, 12, 2], 10, [[1], [0, 2]]),
    # ties in length keep index order: 3(i0) -> r0, 3(i1) -> r1, 2(i2) -> r0 ... 2 rows overflow
    ([3, 3, 2, 2, 2], 6, [[0, 4], [1], [2, 3]]),
    ([4, 4], 8, [[0, 1]]),
])
def test_pack_rows(lengths, capacity, rows):
    assert pack_rows(lengths, capacity) == rows


def test_pack_rows_invariants():
    lengths = [7, 1, 3, 9, 2, 2, 5, 4, 6, 8, 1, 3]
    rows = pack_rows(lengths, 12)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert len(rows) == 5  # sum 51 -> at least ceil(51/12) = 5 rows


def test_block_causal_mask_exact():
    seg = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0]])
    mask = block_causal_mask(seg)
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.float32
    allowed = torch.tensor([
        [[1, 0, 0, 0],
         [1, 1, 0, 0],
         [0, 0, 1, 0],
         [0, 0, 0, 1]],
        [[1, 0, 0, 0],
         [1, 1, 0, 0],
         [1, 1, 1, 0],
         [1, 1, 1, 1]],
    ], dtype=torch.bool)
    low = torch.finfo(torch.float32).min
    expected = torch.where(allowed, torch.tensor(0.0), torch.tensor(low))[:, None]
    assert torch.equal(mask, expected)


def test_block_causal_mask_padding_and_dtype():
    seg = torch.tensor([[0, 1, 1, -1, -1]])
    mask = block_causal_mask(seg, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [0, 1, 0, 0, 0],
                       [0, 1, 1, 0, 0],
                       [0, 0, 0, 1, 0],
                       [0, 0, 0, 1, 1]]
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.bfloat16).min}


HAND = [TokenizedExample([10, 11, 12], [IGNORE, 12, IGNORE], "a:1"),
        TokenizedExample([20, 21], [21, IGNORE], "a:2"),
        TokenizedExample([30, 31, 32, 33], [31, 32, 33, IGNORE], "a:3")]


def test_collate_packed_exact():
    b = collate_packed(HAND, capacity=5, pad_id=3)  # rows [[2], [0, 1]]
    assert b.input_ids.tolist() == [[30, 31, 32, 33, 3], [10, 11, 12, 20, 21]]
    assert b.targets.tolist() == [[31, 32, 33, IGNORE, IGNORE], [IGNORE, 12, IGNORE, 21, IGNORE]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert torch.equal(b.attention_mask, block_causal_mask(torch.tensor(
        [[0, 0, 0, 0, -1], [0, 0, 0, 1, 1]])))
    assert (b.num_targets, b.num_tokens) == (5, 9)


def test_collate_padded_exact():
    b = collate_padded(HAND, pad_id=3)
    assert b.input_ids.tolist() == [[10, 11, 12, 3], [20, 21, 3, 3], [30, 31, 32, 33]]
    assert b.targets.tolist() == [[IGNORE, 12, IGNORE, IGNORE], [21, IGNORE, IGNORE, IGNORE],
                                  [31, 32, 33, IGNORE]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2, 3]]
    assert (b.num_targets, b.num_tokens) == (5, 9)


# ---------------------------------------------------------------------------------------------
# packed forward == separate forward


def _alone_logits(model, example):
    from alignkit.models.lm import hidden_states, logits_at

    x = torch.tensor([example.input_ids])
    h = hidden_states(model, x, torch.ones_like(x), torch.arange(len(example))[None])
    return logits_at(model, h)[0]


def _examples(tok):
    pairs = [("Hi", "Hello there"), ("Why is the sky blue?", "Rayleigh scattering."),
             ("Boil an egg", "Six minutes."), ("Why?", "Because.")]
    return [tokenize_sft(SFTExample("prompt_completion", prompt=p, completion=c), tok)
            for p, c in pairs]


@torch.no_grad()
def test_packed_batch_matches_separate_examples(tok, tiny_model):
    from alignkit.models.lm import hidden_states, logits_at

    examples = _examples(tok)
    lengths = [len(e) for e in examples]
    capacity = max(lengths) + min(lengths)
    rows = pack_rows(lengths, capacity)
    assert any(len(r) > 1 for r in rows)  # some row really holds several examples
    b = collate_packed(examples, capacity, tok.pad_token_id)
    packed = logits_at(tiny_model, hidden_states(tiny_model, b.input_ids, b.attention_mask,
                                                 b.position_ids))
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            k = lengths[i]
            torch.testing.assert_close(packed[r, at:at + k], _alone_logits(tiny_model,
                                                                           examples[i]),
                                       rtol=0, atol=1e-5)
            assert b.targets[r, at:at + k].tolist() == examples[i].targets
            at += k


@torch.no_grad()
def test_padded_batch_matches_separate_examples(tok, tiny_model):
    from alignkit.models.lm import hidden_states, logits_at

    examples = _examples(tok)
    b = collate_padded(examples, tok.pad_token_id)
    padded = logits_at(tiny_model, hidden_states(tiny_model, b.input_ids, b.attention_mask,
                                                 b.position_ids))
    for i, e in enumerate(examples):
        torch.testing.assert_close(padded[i, :len(e)], _alone_logits(tiny_model, e),
                                   rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# data order


def test_micro_batch_indices_cover_each_example_once_per_epoch():
    n, bs, seed = 10, 3, 7
    per_epoch = 4  # ceil(10 / 3); the last batch of an epoch holds 1 example
    for epoch in range(3):
        batches = [micro_batch_indices(epoch * per_epoch + j, n, bs, seed)
                   for j in range(per_epoch)]
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert flat == epoch_order(n, seed, epoch)


def test_micro_batch_indices_deterministic_in_seed():
    first = [micro_batch_indices(k, 10, 3, 1) for k in range(8)]
    assert first == [micro_batch_indices(k, 10, 3, 1) for k in range(8)]
    assert first != [micro_batch_indices(k, 10, 3, 2) for k in range(8)]
    assert epoch_order(10, 1, 0) != epoch_order(10, 1, 1)  # reshuffled every epoch
    assert micro_batch_indices(5, 1, 8, 0) == [0]


def test_heldout_split_is_seeded_and_disjoint(in_tmp, tok):
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)]
    (in_tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = SimpleNamespace(data="d.jsonl", eval_data=None, eval_fraction=0.2, seed=3, chat="auto",
                          train_on_prompt=False, max_length=512, skip_invalid=False)
    data = load_sft_data(cfg, tok)
    again = load_sft_data(cfg, tok)
    assert (len(data.train), len(data.heldout), data.skipped) == (8, 2, [])
    assert sorted(e.where for e in data.train + data.heldout) == sorted(
        f"d.jsonl:{i}" for i in range(1, 11))
    assert [e.where for e in data.heldout] == [e.where for e in again.heldout]
    # a tiny fraction still holds out one example; 0 holds out none
    cfg.eval_fraction = 0.01
    assert len(load_sft_data(cfg, tok).heldout) == 1
    cfg.eval_fraction = 0.0
    assert len(load_sft_data(cfg, tok).heldout) == 0
    cfg.eval_fraction = 1.0
    with pytest.raises(UserError, match=r"^--eval-fraction must be in \[0, 1\), got 1\.0$"):
        load_sft_data(cfg, tok)


# ---------------------------------------------------------------------------------------------
# shared-prefix packing: the system prompt runs once per row, results unchanged


def test_shared_prefix_length_rules(tok):
    examples = _examples(tok)  # chat-rendered: all start "<|im_start|>user\n"
    first = examples[0].input_ids
    common = 0
    while all(len(e.input_ids) > common and e.input_ids[common] == first[common]
              for e in examples):
        common += 1
    from alignkit.data.collate import shared_prefix_length
    # the last common token stays with each example (its target differs)
    assert shared_prefix_length(examples, minimum=1) == common - 1
    assert shared_prefix_length(examples[:1], minimum=1) == 0  # nothing to share alone
    learn_all = [tokenize_sft(SFTExample("prompt_completion", prompt="Hi", completion="Yo"), tok,
                              train_on_prompt=True)] * 2
    assert shared_prefix_length(learn_all, minimum=1) == 0  # the prefix carries loss: not shared


def test_shared_prefix_batch_matches_separate_examples_in_loss_and_gradient(tok, tiny_model):
    from alignkit.data.collate import shared_prefix_length
    from alignkit.losses.sft import sft_loss_sum
    from alignkit.models.lm import hidden_states, logits_at

    system = [{"role": "system", "content": "You are a careful, friendly assistant."}]
    pairs = [("Hi", "Hello there"), ("Why is the sky blue?", "Rayleigh scattering."),
             ("Boil an egg", "Six minutes."), ("Why?", "Because.")]
    examples = [tokenize_sft(SFTExample("messages", messages=system + [
        {"role": "user", "content": p}, {"role": "assistant", "content": c}]), tok)
        for p, c in pairs]
    shared = shared_prefix_length(examples)
    assert shared >= 8

    def loss_and_grads(batches):
        tiny_model.zero_grad()
        total = 0.0
        for b in batches:
            h = hidden_states(tiny_model, b.input_ids, b.attention_mask, b.position_ids)
            keep = b.targets != -100
            loss, _ = sft_loss_sum(logits_at(tiny_model, h[keep]), b.targets[keep])
            loss.backward()
            total += loss.item()
        return total, {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    b = collate_packed(examples, 64, tok.pad_token_id, share_prefix=True)
    assert b.input_ids.shape[0] >= 2  # the prefix is repeated once per row
    assert b.computed_tokens == b.num_tokens - shared * (len(examples) - b.input_ids.shape[0])
    assert b.num_targets == sum(e.num_targets for e in examples)
    got_loss, got_grads = loss_and_grads([b])
    ref_loss, ref_grads = loss_and_grads([collate_padded([e], tok.pad_token_id) for e in examples])
    assert got_loss == pytest.approx(ref_loss, rel=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6)
    tiny_model.zero_grad()


def test_stream_batches_are_full_and_cover_each_epoch_once():
    from alignkit.data.sft import epoch_order, stream_batch_indices

    batches = [stream_batch_indices(k, 10, 4, seed=5) for k in range(5)]  # 20 = two epochs
    assert all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert flat[:10] == epoch_order(10, 5, 0) and flat[10:] == epoch_order(10, 5, 1)
