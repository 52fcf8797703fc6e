"""Bad records are rejected with exact ``file:line: message`` texts, every problem of a file is
reported at once, ``skip_invalid`` drops them with a report, and the CLI turns them into exit
code 2 with no traceback."""

from __future__ import annotations

import json

import pytest

from alignkit.data.readers import Record, read_records
from alignkit.data.schemas import (parse_preference, parse_prompt, parse_ranking, parse_sft,
                                   validate)
from alignkit.errors import DataError, UserError

pytestmark = pytest.mark.unit

OK = {"prompt": "q", "completion": "a"}
ROLES_TEXT = "system, user, assistant, tool"


def write_jsonl(path, items) -> None:
    lines = [it if isinstance(it, str) else json.dumps(it) for it in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def problems_of(fields: dict, parse, name: str = "data.jsonl", line: int = 17) -> list[str]:
    _, problems = validate([Record(name, line, fields)], parse, skip_invalid=True)
    return problems


# ---------------------------------------------------------------------------------------------
# one bad record -> one exact message

SFT_CASES = [
    # missing / empty / wrong type
    ({"prompt": "q"}, 'field "completion" is missing'),
    ({"completion": "a"}, 'field "prompt" is missing'),
    ({"prompt": "", "completion": "a"}, 'field "prompt" is empty'),
    ({"prompt": "q", "completion": "  \n\t"}, 'field "completion" is empty'),
    ({"prompt": 3, "completion": "a"},
     'field "prompt" must be a string or a list of chat messages, got int'),
    ({"prompt": "q", "completion": {"text": "a"}},
     'field "completion" must be a string or a list of chat messages, got dict'),
    ({"prompt": "q", "completion": None},
     'field "completion" must be a string or a list of chat messages, got NoneType'),
    ({"category": "x"},
     'no training fields: expected "prompt" and "completion", "messages", or "text"'),
    # message lists
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}],
      "completion": "a"},
     f'field "prompt"[1].role must be one of {ROLES_TEXT}, got \'robot\''),
    ({"prompt": [{"content": "q"}], "completion": "a"},
     f'field "prompt"[0].role must be one of {ROLES_TEXT}, got None'),
    ({"prompt": [{"role": "user", "content": 5}], "completion": "a"},
     'field "prompt"[0].content must be a string'),
    ({"prompt": [{"role": "user"}], "completion": "a"},
     'field "prompt"[0].content must be a string'),
    ({"prompt": ["hello"], "completion": "a"},
     'field "prompt"[0] must be an object with "role" and "content", got str'),
    ({"prompt": [], "completion": "a"}, 'field "prompt" is an empty message list'),
    ({"prompt": "q", "completion": [{"role": "user", "content": "a"}]},
     'field "completion" may only hold assistant messages'),
    ({"messages": [{"role": "user", "content": "q"}]},
     'field "messages" has no assistant message to learn'),
    ({"messages": [{"role": "user", "content": "q"}, "oops"]},
     'field "messages"[1] must be an object with "role" and "content", got str'),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     'field "messages"[1].content must be a string'),
    ({"messages": [{"role": "User", "content": "q"}, {"role": "assistant", "content": "a"}]},
     f'field "messages"[0].role must be one of {ROLES_TEXT}, got \'User\''),
    ({"messages": []}, 'field "messages" is an empty message list'),
    ({"messages": "hello"}, 'field "messages" must be a list of chat messages'),
    ({"text": 5}, 'field "text" must be a string'),
    ({"text": " "}, 'field "text" is empty'),
]


@pytest.mark.parametrize("fields,message", SFT_CASES)
def test_bad_sft_record_message(fields, message):
    assert problems_of(fields, parse_sft) == [f"data.jsonl:17: {message}"]


PREF_OK = {"prompt": "q", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("fields,message", [
    ({"prompt": "q", "chosen": "a"}, 'field "rejected" is missing'),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, 'field "prompt" is empty'),
    ({**PREF_OK, "chosen": 1.5}, 'field "chosen" must be a string or a list of chat messages, '
                                 "got float"),
    ({**PREF_OK, "margin": "high"}, 'field "margin" must be a number'),
    ({**PREF_OK, "margin": True}, 'field "margin" must be a number'),
    ({**PREF_OK, "margin": None}, 'field "margin" must be a number'),
    ({**PREF_OK, "annotator": ["a"]}, 'field "annotator" must be a string'),
    ({**PREF_OK, "aspect": 1.0}, 'field "aspect" must be a string'),
])
def test_bad_preference_record_message(fields, message):
    assert problems_of(fields, parse_preference) == [f"data.jsonl:17: {message}"]


def test_good_preference_record():
    (ex,), problems = validate([Record("p.jsonl", 4, {**PREF_OK, "chosen": "", "margin": 2,
                                                      "annotator": 7, "aspect": "honesty"})],
                               parse_preference)
    assert problems == []
    assert (ex.prompt, ex.chosen, ex.rejected, ex.margin, ex.annotator, ex.aspect, ex.where) == (
        "q", "", "b", 2.0, "7", "honesty", "p.jsonl:4")
    assert isinstance(ex.margin, float)


PERM = 'field "ranking" must list every response index once, best first (a permutation of 0..{}'


@pytest.mark.parametrize("fields,message", [
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 1]}, PERM.format(2) + ")"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, PERM.format(2) + ")"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, 2, 3]}, PERM.format(2) + ")"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [True, False]}, PERM.format(1) + ")"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [0.0, 1.0]}, PERM.format(1) + ")"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": "0,1"}, PERM.format(1) + ")"),
    ({"prompt": "q", "responses": ["a", "b"]}, PERM.format(1) + ")"),
    ({"prompt": "q", "responses": ["a"], "ranking": [0]},
     'field "responses" must be a list of at least 2 responses'),
    ({"prompt": "q", "responses": "a", "ranking": [0]},
     'field "responses" must be a list of at least 2 responses'),
    ({"prompt": "q", "responses": ["a", 3], "ranking": [0, 1]},
     'field "responses"[1] must be a string or messages'),
    ({"responses": ["a", "b"], "ranking": [0, 1]}, 'field "prompt" is missing'),
])
def test_bad_ranking_record_message(fields, message):
    assert problems_of(fields, parse_ranking) == [f"data.jsonl:17: {message}"]


def test_good_ranking_record():
    (ex,), problems = validate([Record("r.jsonl", 2, {"prompt": "q", "responses": ["a", "b", "c"],
                                                      "ranking": [2, 0, 1]})], parse_ranking)
    assert problems == [] and (ex.responses, ex.ranking, ex.where) == (["a", "b", "c"],
                                                                      [2, 0, 1], "r.jsonl:2")


def test_ranking_response_message_lists_are_validated():
    """A ranking response given as a message list is validated like every other text field."""
    fields = {"prompt": "q", "ranking": [0, 1],
              "responses": ["a", [{"role": "robot", "content": "b"}]]}
    assert problems_of(fields, parse_ranking) == [
        f'data.jsonl:17: field "responses"[1][0].role must be one of {ROLES_TEXT}, got \'robot\'']


def test_bad_prompt_record_message():
    assert problems_of({"question": "q"}, parse_prompt) == [
        'data.jsonl:17: field "prompt" is missing']
    (ex,), problems = validate([Record("p.jsonl", 1, {"prompt": "q", "category": "c"})],
                               parse_prompt)
    assert problems == [] and (ex.prompt, ex.extra, ex.where) == ("q", {"category": "c"},
                                                                 "p.jsonl:1")


# ---------------------------------------------------------------------------------------------
# whole files


def test_every_problem_of_a_file_is_reported(in_tmp):
    write_jsonl(in_tmp / "data.jsonl", [
        OK,                                                      # 1
        {"prompt": "q"},                                         # 2
        OK,                                                      # 3
        {"prompt": "", "completion": "a"},                       # 4
        {"messages": [{"role": "user", "content": "q"}]},        # 5
        OK,                                                      # 6
    ])
    with pytest.raises(DataError) as info:
        validate(read_records("data.jsonl"), parse_sft)
    expected = ['data.jsonl:2: field "completion" is missing',
                'data.jsonl:4: field "prompt" is empty',
                'data.jsonl:5: field "messages" has no assistant message to learn']
    assert info.value.problems == expected
    assert str(info.value) == "invalid data (3 problem(s)):\n" + "\n".join(expected)
    assert isinstance(info.value, UserError)


def test_skip_invalid_drops_and_reports(in_tmp):
    write_jsonl(in_tmp / "data.jsonl", [OK, {"prompt": "q"}, {"prompt": "q2", "completion": "a2"},
                                        {"text": 1}])
    examples, problems = validate(read_records("data.jsonl"), parse_sft, skip_invalid=True)
    assert [(e.prompt, e.completion, e.where) for e in examples] == [
        ("q", "a", "data.jsonl:1"), ("q2", "a2", "data.jsonl:3")]
    assert problems == ['data.jsonl:2: field "completion" is missing',
                        'data.jsonl:4: field "text" must be a string']


def test_all_good_gives_no_problems(in_tmp):
    write_jsonl(in_tmp / "data.jsonl", [OK, {"text": "t"}])
    examples, problems = validate(read_records("data.jsonl"), parse_sft)
    assert problems == [] and [e.kind for e in examples] == ["prompt_completion", "text"]


def test_invalid_json_and_non_object_lines_are_all_reported(in_tmp):
    write_jsonl(in_tmp / "data.jsonl", [
        OK,                            # 1
        "not json",                    # 2
        '{"prompt": "a",}',            # 3
        "[1, 2]",                      # 4
        '"just a string"',             # 5
        "42",                          # 6
    ])
    with pytest.raises(DataError) as info:
        read_records("data.jsonl")
    assert info.value.problems == [
        "data.jsonl:2: not valid JSON (Expecting value at column 1)",
        "data.jsonl:3: not valid JSON (Expecting property name enclosed in double quotes at "
        "column 16)",
        "data.jsonl:4: expected a JSON object, got list",
        "data.jsonl:5: expected a JSON object, got str",
        "data.jsonl:6: expected a JSON object, got int",
    ]


def test_invalid_json_column_at_end_of_line(in_tmp):
    """A line cut short is reported at the column where the ',' or '}' is missing."""
    write_jsonl(in_tmp / "data.jsonl", [OK, '{"a": 1'])
    with pytest.raises(DataError) as info:
        read_records("data.jsonl")
    assert info.value.problems == [
        "data.jsonl:2: not valid JSON (Expecting ',' delimiter at column 8)"]


def test_json_array_problems(in_tmp):
    (in_tmp / "data.json").write_text('[{"prompt": "q", "completion": "a"}, 3, ["x"]]',
                                      encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records("data.json")
    assert info.value.problems == ["data.json:2: expected a JSON object, got int",
                                   "data.json:3: expected a JSON object, got list"]
    (in_tmp / "broken.json").write_text('[\n  {"prompt": "q"},\n  {"prompt": }\n]\n',
                                        encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_records("broken.json")
    assert str(info.value) == "broken.json:3: not valid JSON (Expecting value)"


def test_csv_row_with_too_many_cells(in_tmp):
    (in_tmp / "data.csv").write_text("prompt,completion\nq,a\nq,a,extra\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records("data.csv")
    assert info.value.problems == ["data.csv:3: more cells than header columns"]


def test_csv_empty_cell_is_reported_missing(in_tmp):
    (in_tmp / "data.csv").write_text("prompt,completion\nq,\n", encoding="utf-8")
    assert problems_of(read_records("data.csv")[0].fields, parse_sft, "data.csv", 2) == [
        'data.csv:2: field "completion" is missing']


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_unsupported_extension(in_tmp, name):
    (in_tmp / name).write_text("prompt\n", encoding="utf-8")
    suffix = name[4:]
    with pytest.raises(UserError) as info:
        read_records(name)
    assert not isinstance(info.value, DataError)
    assert str(info.value) == (f"{name}: unsupported data format {suffix!r} (use .jsonl, .parquet, "
                               ".csv or a saved datasets folder)")


def test_missing_file(in_tmp):
    with pytest.raises(UserError) as info:
        read_records("nope.jsonl")
    assert str(info.value) == "nope.jsonl: data file or folder not found"


def test_many_problems_are_capped_in_the_message():
    err = DataError([f"d.jsonl:{i}: bad" for i in range(1, 26)])
    assert len(err.problems) == 25
    lines = str(err).split("\n")
    assert lines[0] == "invalid data (25 problem(s)):"
    assert lines[1:21] == [f"d.jsonl:{i}: bad" for i in range(1, 21)]
    assert lines[21:] == ["... and 5 more problem(s)"]


# ---------------------------------------------------------------------------------------------
# tokenize_file: problems found after tokenisation join the same report


def _lengths(tokenizer, long_text):
    from alignkit.data.schemas import SFTExample
    from alignkit.data.tokenize import tokenize_sft

    n_long = len(tokenize_sft(SFTExample("text", text=long_text), tokenizer, chat="auto"))
    n_ok = len(tokenize_sft(SFTExample("prompt_completion", prompt="q", completion="a"),
                            tokenizer, chat="auto"))
    assert n_long > n_ok
    return n_ok, n_long


LONG = "why does bread come out dense " * 4


def test_tokenize_file_length_problem_and_skip(in_tmp, tiny_tokenizer):
    from alignkit.data.sft import tokenize_file

    n_ok, n_long = _lengths(tiny_tokenizer, LONG)
    limit = n_ok  # the short example fits exactly, the long one does not
    write_jsonl(in_tmp / "data.jsonl", [OK, {"text": LONG}, OK])
    expected = [f"data.jsonl:2: example is {n_long} tokens, longer than --max-length {limit}"]
    with pytest.raises(DataError) as info:
        tokenize_file("data.jsonl", tiny_tokenizer, "auto", False, limit, skip_invalid=False)
    assert info.value.problems == expected
    kept, problems = tokenize_file("data.jsonl", tiny_tokenizer, "auto", False, limit,
                                   skip_invalid=True)
    assert problems == expected
    assert [(len(t), t.where) for t in kept] == [(n_ok, "data.jsonl:1"), (n_ok, "data.jsonl:3")]


def test_tokenize_file_skip_reports_schema_and_length_problems(in_tmp, tiny_tokenizer):
    from alignkit.data.sft import tokenize_file

    n_ok, n_long = _lengths(tiny_tokenizer, LONG)
    write_jsonl(in_tmp / "data.jsonl", [OK, {"prompt": "q"}, {"text": LONG}])
    kept, problems = tokenize_file("data.jsonl", tiny_tokenizer, "auto", False, n_ok,
                                   skip_invalid=True)
    assert problems == ['data.jsonl:2: field "completion" is missing',
                        f"data.jsonl:3: example is {n_long} tokens, longer than --max-length {n_ok}"]
    assert [t.where for t in kept] == ["data.jsonl:1"]


def test_tokenize_file_reports_all_problems_in_one_pass(in_tmp, tiny_tokenizer):
    """Record problems and tokenisation problems (too long) are reported together, in one pass."""
    from alignkit.data.sft import tokenize_file

    n_ok, n_long = _lengths(tiny_tokenizer, LONG)
    write_jsonl(in_tmp / "data.jsonl", [OK, {"prompt": "q"}, {"text": LONG}])
    with pytest.raises(DataError) as info:
        tokenize_file("data.jsonl", tiny_tokenizer, "auto", False, n_ok, skip_invalid=False)
    assert info.value.problems == [
        'data.jsonl:2: field "completion" is missing',
        f"data.jsonl:3: example is {n_long} tokens, longer than --max-length {n_ok}"]


def test_tokenize_file_empty_file(in_tmp, tiny_tokenizer):
    from alignkit.data.sft import tokenize_file

    (in_tmp / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        tokenize_file("empty.jsonl", tiny_tokenizer, "auto", False, 512, skip_invalid=False)
    assert str(info.value) == "empty.jsonl: no records"


# ---------------------------------------------------------------------------------------------
# every reader a stage uses: a line that is not JSON does not hide the other lines' problems


def _sft(spec, tok):
    from alignkit.data.sft import tokenize_file

    return tokenize_file(spec, tok, "auto", False, 512, skip_invalid=False)


def _preferences(spec, tok):
    from alignkit.data.preferences import load_preference_groups

    return load_preference_groups(spec, tok)


def _prompts(spec, tok):  # ppo, online-dpo, best-of-n, eval (load_prompts), label, critique
    from alignkit.data.prompts import load_prompts

    return load_prompts(spec, tok)


def _judge_items(spec, tok):  # label --judge
    from alignkit.judges.labelling import read_judge_items

    return read_judge_items(spec, 0, 0)


def _score(spec, tok):
    from alignkit.cli import run
    from alignkit.config import ScoreConfig

    return run(ScoreConfig(reward_model="no-such-folder", data=spec))  # data are checked first


def _tasks(spec, tok):  # annotate add-tasks
    from alignkit.feedback.tasks import read_task_records

    return read_task_records(spec)


def _suite(spec, tok):  # eval --adversarial FILE
    from alignkit.evaluation.adversarial import load_suite

    return load_suite(spec)


PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}
SUITE_OK = {"prompt": "q", "category": "harmful", "expect": "refuse"}


@pytest.mark.parametrize("read,good,bad", [
    (_sft, OK, {"prompt": "q"}),
    (_preferences, PAIR, {"prompt": "q", "chosen": "a"}),
    (_prompts, {"prompt": "q"}, {"prompt": 3}),
    (_judge_items, PAIR, {"prompt": "q", "chosen": "a"}),
    (_score, {"prompt": "q", "response": "a"}, {"prompt": "q"}),
    (_tasks, {"prompt": "q"}, {"prompt": "q", "gold": "yes"}),
    (_suite, SUITE_OK, {**SUITE_OK, "expect": "maybe"}),
], ids=["sft", "preferences", "prompts", "judge-items", "score", "annotate-tasks", "suite"])
def test_reader_reports_json_and_field_problems_in_file_order(in_tmp, tiny_tokenizer, read, good,
                                                              bad):
    write_jsonl(in_tmp / "d.jsonl", [bad, '{"prompt": "a",}', good, bad, "[1]", good])
    with pytest.raises(DataError) as info:
        read("d.jsonl", tiny_tokenizer)
    problems = info.value.problems
    assert [p.split(":")[1] for p in problems] == ["1", "2", "4", "5"]
    assert problems[1] == ("d.jsonl:2: not valid JSON (Expecting property name enclosed in double "
                           "quotes at column 16)")
    assert problems[3] == "d.jsonl:5: expected a JSON object, got list"
    # the field problem of line 1 is line 4's too
    assert problems[0].startswith("d.jsonl:1: ") and "JSON" not in problems[0]
    assert problems[2] == problems[0].replace("d.jsonl:1: ", "d.jsonl:4: ")


def test_only_bad_json_lines_are_reported_not_no_records(in_tmp, tiny_tokenizer):
    write_jsonl(in_tmp / "d.jsonl", ["{", "nope"])
    with pytest.raises(DataError) as info:
        _sft("d.jsonl", tiny_tokenizer)
    assert [p.split(":")[1] for p in info.value.problems] == ["1", "2"]


def test_skip_invalid_drops_bad_json_lines_with_the_others(in_tmp, tiny_tokenizer):
    from alignkit.data.sft import tokenize_file

    write_jsonl(in_tmp / "d.jsonl", [{"prompt": "q"}, "{", OK])
    kept, problems = tokenize_file("d.jsonl", tiny_tokenizer, "auto", False, 512,
                                   skip_invalid=True)
    assert [t.where for t in kept] == ["d.jsonl:3"]
    assert problems == ['d.jsonl:1: field "completion" is missing',
                        "d.jsonl:2: not valid JSON (Expecting property name enclosed in double "
                        "quotes at column 2)"]


def test_csv_extra_cells_and_field_problems_together(in_tmp, tiny_tokenizer):
    (in_tmp / "d.csv").write_text("prompt,completion\nq,a,extra\nq,\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _sft("d.csv", tiny_tokenizer)
    assert info.value.problems == ["d.csv:2: more cells than header columns",
                                   'd.csv:3: field "completion" is missing']


def test_data_error_sorts_problems_by_file_then_line():
    err = DataError(["b.jsonl:3: z", "a.jsonl:10: x", "a.jsonl:2: y", "b.jsonl:1: w",
                     "a.jsonl:2: v"])
    assert err.problems == ["b.jsonl:1: w", "b.jsonl:3: z", "a.jsonl:2: y", "a.jsonl:2: v",
                            "a.jsonl:10: x"]


# ---------------------------------------------------------------------------------------------
# the CLI: exit code 2, one clear message, no traceback


def run_cli(args, capsys):
    from alignkit.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_sft_bad_data_exits_2_with_file_line(in_tmp, tiny_model_dir, capsys):
    write_jsonl(in_tmp / "bad.jsonl", [OK, {"prompt": "q"}, OK,
                                       {"prompt": "q", "completion": 7}])
    code, out, err = run_cli(["sft", "--data", "bad.jsonl", "--model", str(tiny_model_dir),
                              "--output", str(in_tmp / "out"), "--device", "cpu",
                              "--no-progress"], capsys)
    assert code == 2
    assert "alignkit sft: error: invalid data (2 problem(s)):\n" in err
    assert 'bad.jsonl:2: field "completion" is missing\n' in err
    assert ('bad.jsonl:4: field "completion" must be a string or a list of chat messages, '
            "got int\n") in err
    assert "Traceback" not in err and "Traceback" not in out


def test_cli_sft_missing_data_file_exits_2(in_tmp, tiny_model_dir, capsys):
    code, out, err = run_cli(["sft", "--data", "nope.jsonl", "--model", str(tiny_model_dir),
                              "--output", str(in_tmp / "out"), "--device", "cpu",
                              "--no-progress"], capsys)
    assert code == 2
    assert "alignkit sft: error: nope.jsonl: data file or folder not found\n" in err
    assert "Traceback" not in err


def test_cli_sft_without_data_exits_2(in_tmp, tiny_model_dir, capsys):
    code, _, err = run_cli(["sft", "--model", str(tiny_model_dir), "--output",
                            str(in_tmp / "out"), "--device", "cpu", "--no-progress"], capsys)
    assert code == 2
    assert "alignkit sft: error: --data is required" in err
    assert "Traceback" not in err
