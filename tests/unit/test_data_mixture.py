"""Mixtures of data sources and ``--oversample``: the configured proportions are drawn, the
draw is a function of the seed, every source keeps its own file:line errors, and what was drawn
is reported."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from alignkit.data.mixture import Draw, parse_oversample
from alignkit.data.preferences import (PreferencePair, build_groups, load_preference_groups,
                                       split_groups)
from alignkit.data.prompts import load_prompt_sets
from alignkit.data.readers import read_records
from alignkit.data.schemas import parse_sft, problem_of, validate
from alignkit.errors import DataError, UserError

pytestmark = pytest.mark.unit


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path.name


def sft_rows(tag: str, n: int, harmful_every: int = 0) -> list[dict]:
    return [{"prompt": f"{tag}{i}", "completion": "ok",
             "category": "harmful" if harmful_every and i % harmful_every == 0 else "helpful"}
            for i in range(n)]


@pytest.fixture
def two(in_tmp):
    write(in_tmp / "a.jsonl", sft_rows("a", 600, harmful_every=10))
    write(in_tmp / "b.jsonl", sft_rows("b", 250))
    return in_tmp


def drawn(spec: str, **kw) -> tuple[list, dict]:
    draw = Draw(**kw)
    records = read_records(spec, draw=draw)
    return records, draw.report


def test_two_sources_draw_the_configured_proportions(two):
    records, report = drawn("a.jsonl:0.7,b.jsonl:0.3", seed=1, size=10_000)
    share = Counter(r.source for r in records)
    assert len(records) == 10_000
    assert abs(share["a.jsonl"] / 10_000 - 0.7) <= 0.02
    assert abs(share["b.jsonl"] / 10_000 - 0.3) <= 0.02
    # exact here: largest-remainder counts, whole passes over a source, then a sample of it
    assert share == {"a.jsonl": 7000, "b.jsonl": 3000}
    # 7000 of a's 600 records: 11 whole passes, then 400 records once more
    assert Counter(Counter(r.where for r in records if r.source == "a.jsonl").values()) == {
        11: 200, 12: 400}
    assert set(Counter(r.where for r in records if r.source == "b.jsonl").values()) == {12}
    assert report == {"data_mixture": {
        "seed": 1, "size": 10_000,
        "sources": [{"data": "a.jsonl", "weight": 0.7, "records": 600, "drawn": 7000},
                    {"data": "b.jsonl", "weight": 0.3, "records": 250, "drawn": 3000}]}}


def test_the_draw_is_a_function_of_the_seed(two):
    wheres = lambda seed: [r.where for r in drawn("a.jsonl:0.7,b.jsonl:0.3", seed=seed,  # noqa
                                                  size=1000)[0]]
    first = wheres(5)
    assert wheres(5) == first
    other = wheres(6)
    assert other != first and Counter(w.split(":")[0] for w in other) == \
        Counter(w.split(":")[0] for w in first)


def test_weights_are_normalised_and_default_size_is_all_records(two):
    records, report = drawn("a.jsonl:7,b.jsonl:3", seed=0)
    assert len(records) == 850
    assert Counter(r.source for r in records) == {"a.jsonl": 595, "b.jsonl": 255}
    assert [s["weight"] for s in report["data_mixture"]["sources"]] == [0.7, 0.3]


def test_sources_without_weights_are_read_whole_in_order(two):
    records, report = drawn("a.jsonl,b.jsonl", seed=3)
    assert [r.where for r in records] == ([r.where for r in read_records("a.jsonl")]
                                          + [r.where for r in read_records("b.jsonl")])
    assert [s["drawn"] for s in report["data_mixture"]["sources"]] == [600, 250]


def test_yaml_mixture_file_equals_the_inline_form(two):
    (two / "mix").mkdir()
    (two / "mix" / "m.yaml").write_text(
        "# relative paths are taken from this file's folder when they exist there\n"
        "- {path: ../a.jsonl, weight: 0.7}\n"
        "- path: ../b.jsonl\n"
        "  weight: 0.3\n", encoding="utf-8")
    inline, _ = drawn("mix/../a.jsonl:0.7,mix/../b.jsonl:0.3", seed=2, size=900)
    from_file, report = drawn("mix/m.yaml", seed=2, size=900)
    assert [r.fields for r in from_file] == [r.fields for r in inline]
    assert [s["data"] for s in report["data_mixture"]["sources"]] == ["mix/../a.jsonl",
                                                                      "mix/../b.jsonl"]


def test_oversample_triples_a_category(two):
    plain = read_records("a.jsonl")
    records, report = drawn("a.jsonl", seed=0, oversample="category=harmful:3")
    harmful = lambda recs: sum(r.fields["category"] == "harmful" for r in recs)  # noqa: E731
    assert harmful(plain) == 60
    assert harmful(records) == 180 and len(records) == 600 + 120
    # every harmful record exactly 3 times, every other once, in file order
    counts = Counter(r.where for r in records)
    assert {counts[r.where] for r in plain if r.fields["category"] == "harmful"} == {3}
    assert {counts[r.where] for r in plain if r.fields["category"] != "harmful"} == {1}
    assert report["data_mixture"]["oversample"] == [
        {"rule": "category=harmful", "factor": 3.0, "records": 60, "drawn": 180}]
    # the category's share: 3p / (3p + 1 - p) with p = 0.1
    assert harmful(records) / len(records) == pytest.approx(0.3 / 1.2)


def test_oversample_inside_a_weighted_mixture_keeps_the_source_shares(two):
    records, report = drawn("a.jsonl:0.5,b.jsonl:0.5", seed=4, size=4000,
                            oversample="category=harmful:3")
    assert Counter(r.source for r in records) == {"a.jsonl": 2000, "b.jsonl": 2000}
    # within a.jsonl the deck holds 180 harmful of 720: 2000 draws = 2 passes + 560 sampled
    harmful = sum(r.fields["category"] == "harmful" for r in records)
    assert 360 <= harmful <= 360 + 180
    assert report["data_mixture"]["oversample"][0]["drawn"] == harmful


def test_fractional_factor_is_seeded(two):
    a, _ = drawn("a.jsonl", seed=1, oversample="category=helpful:1.5")
    b, _ = drawn("a.jsonl", seed=1, oversample="category=helpful:1.5")
    c, _ = drawn("a.jsonl", seed=2, oversample="category=helpful:1.5")
    assert [r.where for r in a] == [r.where for r in b] != [r.where for r in c]
    assert 540 + 200 < len(a) < 540 + 340  # about half of the 540 helpful records twice


@pytest.mark.parametrize("text,message", [
    ("category=violent:3", "--oversample category=violent:3: no valid record of --data has "
                           "category = 'violent'"),
    ("category=harmful", "--oversample 'category=harmful': expected FIELD=VALUE:FACTOR, e.g. "
                         "category=harmful:3"),
    ("harmful:3", "--oversample 'harmful:3': expected FIELD=VALUE:FACTOR, e.g. "
                  "category=harmful:3"),
    ("category=harmful:0", "--oversample 'category=harmful:0': the factor must be a positive "
                           "number, got 0"),
    ("category=harmful:nan", "--oversample 'category=harmful:nan': the factor must be a "
                             "positive number, got nan"),
])
def test_oversample_errors_name_the_flag(two, text, message):
    with pytest.raises(UserError) as info:
        drawn("a.jsonl", oversample=text)
    assert str(info.value) == message


def test_oversample_matches_text_numbers_and_booleans():
    rules = parse_oversample("n=3:2, flag=true:2")
    assert [r.matches({"n": 3}) for r in rules] == [True, False]
    assert [r.matches({"flag": True}) for r in rules] == [False, True]
    assert not any(r.matches({"n": [3], "flag": "True"}) for r in rules)


@pytest.mark.parametrize("spec,message", [
    ("a.jsonl:0.7,b.jsonl", "--data 'a.jsonl:0.7,b.jsonl': give every source a weight, or none "
                            "(then each source's records are all used once)"),
    ("a.jsonl:0.7,,b.jsonl:0.3", "--data 'a.jsonl:0.7,,b.jsonl:0.3': an empty source between "
                                 "commas"),
    ("a.jsonl:-1,b.jsonl:1", "--data 'a.jsonl:-1': the weight must be a positive number, got -1"),
    ("a.jsonl:0.7,c.jsonl:0.3", "c.jsonl: data file or folder not found"),
])
def test_mixture_spec_errors(two, spec, message):
    with pytest.raises(UserError) as info:
        read_records(spec)
    assert str(info.value) == message


def test_mixture_file_problems_name_their_lines(two):
    (two / "m.yaml").write_text("- {path: a.jsonl, weight: -2}\n"
                                "- path: b.jsonl\n"
                                "  wait: 1\n"
                                "- 3\n"
                                "- {weight: 1}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records("m.yaml")
    assert info.value.problems == [
        "m.yaml:1: 'weight' must be a positive number, got -2",
        "m.yaml:3: unknown key 'wait' (a source has 'path' and 'weight')",
        "m.yaml:4: expected a mapping with 'path' and 'weight'",
        "m.yaml:5: 'path' is missing"]
    (two / "m.yaml").write_text("path: a.jsonl\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^m\.yaml:1: a mixture file is a list of sources"):
        read_records("m.yaml")
    (two / "m.yaml").write_bytes(b"- {path: a.jsonl}\n- \xff\n")
    with pytest.raises(UserError, match=r"^m\.yaml: not UTF-8 text \(byte 0xff\)"):
        read_records("m.yaml")


def test_each_source_keeps_its_own_errors_and_bad_records_are_not_drawn(two):
    write(two / "bad.jsonl", [{"prompt": "x", "completion": "y"}, {"prompt": "z"},
                              {"completion": "w"}])
    (two / "bad.jsonl").write_text((two / "bad.jsonl").read_text() + "not json\n")
    problems: list[str] = []
    draw = Draw(seed=0, size=100)
    records = read_records("a.jsonl:0.5,bad.jsonl:0.5", problems, draw,
                           check=problem_of(parse_sft))
    assert problems == ["bad.jsonl:4: not valid JSON (Expecting value at column 1)"]
    assert Counter(r.where for r in records if r.source == "bad.jsonl") == {
        "bad.jsonl:1": 50, "bad.jsonl:2": 1, "bad.jsonl:3": 1}
    assert len(records) == 102  # 100 drawn + the two invalid records once each, at the end
    _, found = validate(records, parse_sft, skip_invalid=True, problems=problems)
    assert found == ['bad.jsonl:2: field "completion" is missing',
                     'bad.jsonl:3: field "prompt" is missing',
                     "bad.jsonl:4: not valid JSON (Expecting value at column 1)"]
    assert draw.report["data_mixture"]["sources"][1] == {
        "data": "bad.jsonl", "weight": 0.5, "records": 1, "drawn": 50}


def test_a_weighted_source_with_no_valid_record_is_an_error(two):
    (two / "bad.jsonl").write_text('{"prompt": "z"}\noops\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records("a.jsonl:0.5,bad.jsonl:0.5", [], Draw(), check=problem_of(parse_sft))
    assert info.value.problems == [
        'bad.jsonl:1: field "completion" is missing',
        "bad.jsonl:2: not valid JSON (Expecting value at column 1)",
        "bad.jsonl: no valid record to draw from (every record above is invalid)"]


def test_one_source_without_options_is_read_as_it_is(two):
    draw = Draw(seed=9)
    assert read_records("a.jsonl", draw=draw) == read_records("a.jsonl")
    assert draw.report == {}


def test_preference_groups_of_a_mixture(in_tmp, tiny_tokenizer):
    pairs = lambda tag, n: [{"prompt": f"{tag}{i}", "chosen": "Yes.", "rejected": "No.",  # noqa
                             "category": "harmful" if i < 2 else "helpful"} for i in range(n)]
    write(in_tmp / "p.jsonl", pairs("p", 10))
    write(in_tmp / "q.jsonl", pairs("q", 10) + [{"prompt": "bad", "chosen": "x"}])
    draw = Draw(seed=0, size=40, oversample="category=harmful:2")
    groups, skipped = load_preference_groups("p.jsonl:0.75,q.jsonl:0.25", tiny_tokenizer,
                                             skip_invalid=True, draw=draw)
    assert skipped == ['q.jsonl:11: field "rejected" is missing']
    # each draw of a record is a group of its own (the reward loss weighs groups, not pairs)
    assert len(groups) == 40 and {len(g.pairs) for g in groups} == {1}
    assert sum(g.prompt.startswith("p") for g in groups) == 30
    by_prompt: dict[str, list[int]] = {}
    for g in groups:
        by_prompt.setdefault(g.prompt, []).append(g.copy)
    assert all(c == list(range(len(c))) for c in by_prompt.values())
    # p's deck: 2 harmful records twice + 8 others = 12; 30 draws = 2 passes + 6 more
    assert all(4 <= len(by_prompt[f"p{i}"]) <= 6 for i in range(2))
    assert all(2 <= len(by_prompt[f"p{i}"]) <= 3 for i in range(2, 10))
    assert sum(len(by_prompt[f"p{i}"]) for i in range(10)) == 30
    assert draw.report["data_mixture"]["oversample"][0]["records"] == 4
    # every draw of a prompt lands on one side; the held-out side keeps first draws only
    train, held = split_groups(groups, 0.25, seed=0)
    assert len(held) == 5 and {g.copy for g in held} == {0}
    assert not {g.prompt for g in train} & {g.prompt for g in held}
    assert len(train) == 40 - sum(len(by_prompt[g.prompt]) for g in held)


def test_groups_without_repeated_draws_split_as_before(tiny_tokenizer):
    pairs = [PreferencePair(f"q{i % 7}", f"a{i}", "no", where=f"f:{i + 1}") for i in range(20)]
    groups, _ = build_groups(pairs, tiny_tokenizer)
    assert len(groups) == 7 and {g.copy for g in groups} == {0}
    train, held = split_groups(groups, 0.3, seed=5)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(5)).tolist()[:2]
    assert held == [g for i, g in enumerate(groups) if i in order]
    assert train == [g for i, g in enumerate(groups) if i not in order]


def test_sampling_stages_draw_their_prompts(in_tmp, tiny_tokenizer):
    write(in_tmp / "a.jsonl", [{"prompt": f"a{i}"} for i in range(8)])
    write(in_tmp / "b.jsonl", [{"prompt": f"b{i}", "category": "harmful"} for i in range(2)])
    cfg = SimpleNamespace(data="a.jsonl:0.5,b.jsonl:0.5", eval_data="b.jsonl", seed=0,
                          oversample=None, mixture_size=20, chat="auto", max_prompt_length=64,
                          skip_invalid=False)
    train, heldout = load_prompt_sets(cfg, tiny_tokenizer)
    counts = Counter(train.texts)
    assert Counter(t[0] for t in train.texts) == {"a": 10, "b": 10}
    # 10 of a's 8 prompts: one pass and 2 more; 10 of b's 2: five passes
    assert sorted(counts[f"a{i}"] for i in range(8)) == [1] * 6 + [2] * 2
    assert (counts["b0"], counts["b1"]) == (5, 5)
    assert len(train.ids) == 20 and train.categories.count("harmful") == 10
    assert train.drawn["data_mixture"]["size"] == 20
    assert heldout.texts == ["b0", "b1"] and heldout.drawn == {}
