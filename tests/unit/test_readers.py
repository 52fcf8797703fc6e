"""Every data format of README.md "Data" is read into records with their 1-based line / row
numbers, and chat-message fields survive each format."""

from __future__ import annotations

import csv
import json

import pytest

from alignkit.data.readers import (SHIPPED, Record, read_records, resolve_data_path,
                                   shipped_data_path)
from alignkit.data.schemas import (parse_preference, parse_prompt, parse_ranking, parse_sft,
                                   validate)
from alignkit.errors import DataError, UserError

pytestmark = pytest.mark.unit

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, \"friend\", 1,2"},
        {"role": "assistant", "content": "Hello!\nHow can I help?"}]
PROMPT_MSGS = [{"role": "user", "content": "Why?"}]


def as_tuples(records: list[Record]) -> list[tuple[str, int, dict]]:
    return [(r.source, r.line, r.fields) for r in records]


# ---------------------------------------------------------------------------------------------
# JSONL / JSON


def test_jsonl_records_and_line_numbers(in_tmp):
    (in_tmp / "data.jsonl").write_text(
        '{"prompt": "a", "completion": "b", "category": "x"}\n'
        "\n"  # blank lines are skipped but still counted
        f'{json.dumps({"messages": CHAT})}\n'
        "   \n"
        '{"text": "plain text"}\n', encoding="utf-8")
    records = read_records("data.jsonl")
    assert as_tuples(records) == [
        ("data.jsonl", 1, {"prompt": "a", "completion": "b", "category": "x"}),
        ("data.jsonl", 3, {"messages": CHAT}),
        ("data.jsonl", 5, {"text": "plain text"}),
    ]
    assert [r.where for r in records] == ["data.jsonl:1", "data.jsonl:3", "data.jsonl:5"]


@pytest.mark.parametrize("suffix", [".ndjson", ".JSONL", ".json"])
def test_json_lines_other_suffixes(in_tmp, suffix):
    (in_tmp / f"d{suffix}").write_text('{"prompt": "a", "completion": "b"}\n'
                                       '{"prompt": "c", "completion": "d"}\n', encoding="utf-8")
    assert as_tuples(read_records(f"d{suffix}")) == [
        (f"d{suffix}", 1, {"prompt": "a", "completion": "b"}),
        (f"d{suffix}", 2, {"prompt": "c", "completion": "d"}),
    ]


def test_json_array_records_are_numbered_by_element(in_tmp):
    items = [{"prompt": "a", "completion": "b"}, {"messages": CHAT}, {"prompt": PROMPT_MSGS}]
    (in_tmp / "data.json").write_text(json.dumps(items, indent=2), encoding="utf-8")
    assert as_tuples(read_records("data.json")) == [
        ("data.json", 1, {"prompt": "a", "completion": "b"}),
        ("data.json", 2, {"messages": CHAT}),
        ("data.json", 3, {"prompt": PROMPT_MSGS}),
    ]


def test_json_array_with_leading_blank_line(in_tmp):
    """A JSON array file is recognised even when blank lines come before its '['."""
    items = [{"prompt": "a", "completion": "b"}]
    (in_tmp / "data.json").write_text("\n" + json.dumps(items, indent=1) + "\n", encoding="utf-8")
    assert as_tuples(read_records("data.json")) == [
        ("data.json", 1, {"prompt": "a", "completion": "b"})]


def test_jsonl_with_utf8_bom(in_tmp):
    """A JSONL file saved with a UTF-8 byte-order mark (Windows editors, Excel) reads normally."""
    (in_tmp / "data.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n')
    assert as_tuples(read_records("data.jsonl")) == [
        ("data.jsonl", 1, {"prompt": "a", "completion": "b"})]


def test_non_utf8_jsonl_is_a_user_error(in_tmp):
    """Each line that is not UTF-8 is named (with the other problems of the file)."""
    (in_tmp / "data.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n{"prompt": "ok"}\n[1]\n')
    with pytest.raises(DataError) as info:
        read_records("data.jsonl")
    assert info.value.problems == [
        "data.jsonl:1: not UTF-8 text (byte 0xe9 at column 16); save the file as UTF-8",
        "data.jsonl:3: expected a JSON object, got list"]


def test_unreadable_files_are_user_errors(in_tmp, monkeypatch):
    """Permission bits cannot deny root (which CI may be): the refusal is simulated."""
    from pathlib import Path

    from alignkit.config import read_yaml_file

    (in_tmp / "data.jsonl").write_text('{"prompt": "a"}\n', encoding="utf-8")
    (in_tmp / "c.yaml").write_text("lr: 1\n", encoding="utf-8")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=r"^data\.jsonl: cannot read the file \(Permission "):
        read_records("data.jsonl")
    with pytest.raises(UserError, match=r"^c\.yaml: cannot read the config file \(Permission "):
        read_yaml_file("c.yaml", "config file")


def test_utf16_file_is_a_user_error(in_tmp):
    (in_tmp / "data.jsonl").write_bytes('{"prompt": "a"}\n'.encode("utf-16"))
    with pytest.raises(UserError, match=r"^data\.jsonl: UTF-16 text; save the file as UTF-8$"):
        read_records("data.jsonl")


# ---------------------------------------------------------------------------------------------
# CSV / TSV


def write_delimited(path, rows, delimiter=",", encoding="utf-8"):
    with path.open("w", encoding=encoding, newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)


@pytest.mark.parametrize("name,delimiter", [("data.csv", ","), ("data.tsv", "\t")])
def test_csv_and_tsv_records_and_line_numbers(in_tmp, name, delimiter):
    write_delimited(in_tmp / name, [
        ["prompt", "completion", "category"],
        ["a", "b", "x"],                                  # line 2
        ["two\nlines", "c, with a comma\tand tab", "y"],  # lines 3-4 (quoted newline)
        [json.dumps(PROMPT_MSGS), "d", ""],               # line 5; empty cell is dropped
    ], delimiter=delimiter)
    assert as_tuples(read_records(name)) == [
        (name, 2, {"prompt": "a", "completion": "b", "category": "x"}),
        (name, 3, {"prompt": "two\nlines", "completion": "c, with a comma\tand tab",
                   "category": "y"}),
        (name, 5, {"prompt": PROMPT_MSGS, "completion": "d"}),
    ]


def test_csv_cell_holding_a_chat_message_list(in_tmp):
    write_delimited(in_tmp / "chat.csv", [["messages", "note"],
                                          [json.dumps(CHAT), "[{not json"]])
    (rec,) = read_records("chat.csv")
    assert (rec.line, rec.fields) == (2, {"messages": CHAT, "note": "[{not json"})
    (example,), problems = validate([rec], parse_sft)
    assert problems == [] and example.kind == "messages" and example.messages == CHAT


def test_csv_header_only_and_empty_file(in_tmp):
    (in_tmp / "h.csv").write_text("prompt,completion\n", encoding="utf-8")
    (in_tmp / "e.csv").write_text("", encoding="utf-8")
    assert read_records("h.csv") == []
    assert read_records("e.csv") == []


def test_csv_numeric_margin_cell_is_a_number(in_tmp):
    """A numeric `margin` cell in a preference CSV is read as a number (CSV cells are text)."""
    write_delimited(in_tmp / "data.csv", [["prompt", "chosen", "rejected", "margin"],
                                          ["q", "good", "bad", "0.5"]])
    examples, problems = validate(read_records("data.csv"), parse_preference, skip_invalid=True)
    assert problems == []
    assert [(e.prompt, e.chosen, e.rejected, e.margin) for e in examples] == [
        ("q", "good", "bad", 0.5)]


def test_csv_ranking_columns_hold_json_lists(in_tmp):
    """Ranking CSVs give `responses` and `ranking` as JSON lists in their cells."""
    write_delimited(in_tmp / "rank.csv", [["prompt", "responses", "ranking"],
                                          ["q", json.dumps(["x", "y"]), json.dumps([1, 0])]])
    examples, problems = validate(read_records("rank.csv"), parse_ranking, skip_invalid=True)
    assert problems == []
    assert [(e.responses, e.ranking) for e in examples] == [(["x", "y"], [1, 0])]


def test_lines_that_are_not_text_or_past_decoder_limits_are_named(in_tmp):
    """Bytes that are not UTF-8, a NUL, a cell over the csv module's size limit (it cannot read
    on after that one), and JSON past the decoder's limits, are data problems."""
    (in_tmp / "data.csv").write_bytes(b"prompt,completion\ncaf\xe9,a\nb\0,c\n" + b"[" * 100_000
                                      + b",d\nok,e\n" + b"x" * 200_000 + b",f\nnever,read\n")
    with pytest.raises(DataError) as info:
        read_records("data.csv")
    assert info.value.problems == [
        "data.csv:2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        "data.csv:3: a NUL character (binary data, not text)",
        f"data.csv:6: a cell is longer than {csv.field_size_limit()} characters"]
    (in_tmp / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (in_tmp / "deep.json").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (in_tmp / "long.jsonl").write_text('{"n": ' + "1" * 5000 + "}\n")
    for name, problem in [("deep.jsonl", "deep.jsonl:1: not valid JSON (nested too deeply)"),
                          ("deep.json", "deep.json: not valid JSON (nested too deeply)"),
                          ("long.jsonl", "long.jsonl:1: not valid JSON (a number with too many "
                                         "digits)")]:
        with pytest.raises(UserError) as info:
            read_records(name)
        assert str(info.value).endswith(problem)


def test_lone_surrogates_and_keys_named_twice_are_named(in_tmp):
    """JSON's escapes can spell a lone UTF-16 surrogate, which no tokenizer or database takes;
    and an object may name a key twice, where ``json`` keeps the last value silently."""
    (in_tmp / "data.jsonl").write_text(
        '{"prompt": "x\\ud800", "completion": "y"}\n'
        '{"prompt": "a", "completion": "b"}\n'
        '{"prompt": "a", "completion": "b", "prompt": "c"}\n'
        '{"messages": [{"role": "user", "content": "\\udfff"}]}\n'
        '{"prompt": "a", "x\\udc00": 1}\n'
        '{"prompt": "a", "completion": "\\ud83d\\ude00 a pair is text"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records("data.jsonl")
    assert info.value.problems == [
        "data.jsonl:1: a lone surrogate (\\ud800) is not text",
        'data.jsonl:3: the key "prompt" appears twice in one object',
        "data.jsonl:4: a lone surrogate (\\udfff) is not text",
        "data.jsonl:5: a lone surrogate (\\udc00) is not text"]
    (in_tmp / "data.json").write_text('[{"prompt": "a"},\n {"prompt": "b", "prompt": "c"}]')
    with pytest.raises(UserError, match='data.json: the key "prompt" appears twice'):
        read_records("data.json")
    (in_tmp / "data.csv").write_text("prompt,completion,prompt\na,b,c\n")
    with pytest.raises(DataError) as info:
        read_records("data.csv")
    assert info.value.problems == ['data.csv:1: header: the column "prompt" appears twice']


def test_a_record_with_a_pair_and_a_ranking_is_refused(in_tmp):
    from alignkit.data.preferences import parse_comparison
    from alignkit.data.schemas import RecordProblem
    from alignkit.feedback.tasks import read_task_records

    both = {"prompt": "p", "chosen": "a", "rejected": "b", "responses": ["a", "b", "c"]}
    with pytest.raises(RecordProblem, match=r'a ranking \("responses"\) and a pair'):
        parse_comparison(Record("x.jsonl", 1, both))
    (in_tmp / "tasks.jsonl").write_text(json.dumps(both) + "\n")
    with pytest.raises(DataError) as info:
        read_task_records("tasks.jsonl")
    assert info.value.problems == ['tasks.jsonl:1: a ranking ("responses") and a pair '
                                   '("chosen", "rejected") in one record: keep one']


def test_csv_with_utf8_bom(in_tmp):
    """A CSV saved by Excel as 'CSV UTF-8' (with a byte-order mark) keeps its first column name."""
    write_delimited(in_tmp / "data.csv", [["prompt", "completion"], ["a", "b"]],
                    encoding="utf-8-sig")
    assert as_tuples(read_records("data.csv")) == [
        ("data.csv", 2, {"prompt": "a", "completion": "b"})]


# ---------------------------------------------------------------------------------------------
# Parquet


def test_parquet_rows_and_chat_messages(in_tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "completion": "b", "messages": None, "score": 1},
            {"prompt": None, "completion": None, "messages": CHAT, "score": 2},
            {"prompt": "c", "completion": "d", "messages": None, "score": None}]
    pq.write_table(pa.Table.from_pylist(rows), in_tmp / "data.parquet")
    assert as_tuples(read_records("data.parquet")) == [
        ("data.parquet", 1, {"prompt": "a", "completion": "b", "score": 1}),
        ("data.parquet", 2, {"messages": CHAT, "score": 2}),
        ("data.parquet", 3, {"prompt": "c", "completion": "d"}),
    ]
    examples, problems = validate(read_records("data.parquet"), parse_sft)
    assert problems == [] and [e.kind for e in examples] == ["prompt_completion", "messages",
                                                             "prompt_completion"]
    assert examples[1].messages == CHAT


def test_parquet_prompt_messages_for_preferences(in_tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": PROMPT_MSGS, "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}], "margin": 1.5}]
    pq.write_table(pa.Table.from_pylist(rows), in_tmp / "pref.parquet")
    (ex,), problems = validate(read_records("pref.parquet"), parse_preference)
    assert problems == []
    assert (ex.prompt, ex.chosen, ex.rejected, ex.margin, ex.where) == (
        PROMPT_MSGS, [{"role": "assistant", "content": "yes"}],
        [{"role": "assistant", "content": "no"}], 1.5, "pref.parquet:1")


def test_damaged_parquet_is_a_user_error(in_tmp):
    (in_tmp / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"^bad\.parquet: cannot read Parquet file \("):
        read_records("bad.parquet")


# ---------------------------------------------------------------------------------------------
# saved Hugging Face datasets folders

HF_ROWS = [{"prompt": "a", "completion": "b", "messages": None},
           {"prompt": None, "completion": None, "messages": CHAT}]


def test_saved_dataset_folder(in_tmp):
    from datasets import Dataset

    Dataset.from_list(HF_ROWS).save_to_disk(str(in_tmp / "ds"))
    assert as_tuples(read_records("ds")) == [
        ("ds", 1, {"prompt": "a", "completion": "b"}),
        ("ds", 2, {"messages": CHAT}),
    ]


def test_saved_dataset_dict_uses_train_split(in_tmp):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(HF_ROWS),
                 "test": Dataset.from_list(HF_ROWS[:1])}).save_to_disk(str(in_tmp / "dd"))
    records = read_records("dd")
    assert as_tuples(records) == [
        ("dd[train]", 1, {"prompt": "a", "completion": "b"}),
        ("dd[train]", 2, {"messages": CHAT}),
    ]
    assert records[1].where == "dd[train]:2"


def test_dataset_dict_without_train_split(in_tmp):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(HF_ROWS)}).save_to_disk(str(in_tmp / "dd"))
    with pytest.raises(UserError) as info:
        read_records("dd")
    assert str(info.value) == ("dd: DatasetDict has no 'train' split (splits: ['test']); point "
                               "--data at one split's folder")


def test_plain_folder_is_not_a_dataset(in_tmp):
    (in_tmp / "folder").mkdir()
    with pytest.raises(UserError, match=r"^folder: not a saved datasets folder \("):
        read_records("folder")


# ---------------------------------------------------------------------------------------------
# shipped data


def _count_nonblank_lines(path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@pytest.mark.parametrize("name,parse,file", [
    ("demo", parse_sft, "sft.jsonl"),
    ("demo-sft", parse_sft, "sft.jsonl"),
    ("demo-prompts", parse_prompt, "prompts_train.jsonl"),
    ("demo-prompts-heldout", parse_prompt, "prompts_heldout.jsonl"),
])
def test_shipped_data_resolves_and_parses(name, parse, file):
    path = resolve_data_path(name)
    assert path == shipped_data_path(name) and path.name == file and path.is_file()
    assert SHIPPED[name] == file
    records = read_records(name)
    n = _count_nonblank_lines(path)
    assert n > 0 and len(records) == n
    assert [r.line for r in records] == list(range(1, n + 1))
    assert {r.source for r in records} == {str(path)}
    examples, problems = validate(records, parse)
    assert problems == [] and len(examples) == n
    if parse is parse_sft:
        assert {e.kind for e in examples} == {"prompt_completion"}
        assert all(isinstance(e.prompt, str) and isinstance(e.completion, str) for e in examples)
    else:
        assert all(isinstance(e.prompt, str) and e.prompt.strip() for e in examples)


def test_shipped_first_demo_record():
    (first, *_) = read_records("demo")
    assert first.line == 1
    assert first.fields["prompt"] == "How long should I boil an egg for a runny yolk?"
    assert first.fields["completion"].startswith("Lower the egg into boiling water")


def test_shipped_prompt_sets_do_not_overlap():
    train = {r.fields["prompt"] for r in read_records("demo-prompts")}
    heldout = {r.fields["prompt"] for r in read_records("demo-prompts-heldout")}
    assert train & heldout == set()
