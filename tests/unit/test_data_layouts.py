"""The implicit-prompt preference layout (TRL's, Anthropic HH-RLHF's) reads into exactly the
records of the explicit layout, or fails with file:line: field; hub ids and ``datasets`` builder
specs go through ``datasets.load_dataset`` and into the same validation (never the network
here: builders read local files, and hub ids reach a stand-in for ``load_dataset``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from alignkit.data.preferences import load_preference_groups, parse_comparison
from alignkit.data.readers import hub_request, read_records
from alignkit.data.schemas import parse_preference, validate
from alignkit.errors import DataError, UserError

pytestmark = pytest.mark.unit


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}

# explicit records: (prompt messages, chosen turns, rejected turns)
EXPLICIT = [
    ([user("Name a colour.")], [bot("Blue.")], [bot("No.")]),
    ([SYSTEM, user("Say hi")], [bot("Hi! How can I help?")], [bot("Go away.")]),
    ([user("Two plus two?"), bot("Four."), user("Times three?")], [bot("Twelve.")],
     [bot("Eleven."), bot("Sorry, I mean nine.")]),
    # the responses share their first characters, not their first turn
    ([user("Tell me a joke")], [bot("Why did the chicken cross the road?")],
     [bot("Why not.")]),
]


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path.name


def explicit_rows(**extra) -> list[dict]:
    return [{"prompt": p, "chosen": c, "rejected": r, **extra} for p, c, r in EXPLICIT]


def implicit_rows(**extra) -> list[dict]:
    return [{"chosen": p + c, "rejected": p + r, **extra} for p, c, r in EXPLICIT]


def parsed(spec: str) -> list[tuple]:
    examples, problems = validate(read_records(spec), parse_comparison)
    assert problems == []
    return [tuple(v for k, v in dataclasses.asdict(e).items() if k != "where") for e in examples]


def test_implicit_conversations_parse_to_the_explicit_records(in_tmp):
    explicit = write(in_tmp / "explicit.jsonl", explicit_rows(margin=0.5, annotator="a"))
    implicit = write(in_tmp / "implicit.jsonl", implicit_rows(margin=0.5, annotator="a"))
    want = parsed(explicit)
    assert parsed(implicit) == want
    # prompt, chosen, rejected exactly as written in the explicit file
    assert [w[:3] for w in want] == [tuple(map(list, e)) for e in EXPLICIT]
    assert want[2][1:3] == ([bot("Twelve.")], [bot("Eleven."), bot("Sorry, I mean nine.")])


def test_implicit_layout_tokenises_into_the_same_groups(in_tmp, tiny_tokenizer):
    explicit = write(in_tmp / "explicit.jsonl", explicit_rows())
    implicit = write(in_tmp / "implicit.jsonl", implicit_rows())
    for backbone in ("causal", "policy"):
        a, _ = load_preference_groups(explicit, tiny_tokenizer, backbone)
        b, _ = load_preference_groups(implicit, tiny_tokenizer, backbone)
        assert len(a) == len(EXPLICIT)
        assert [(g.prompt, g.responses, g.input_ids, g.targets) for g in a] == \
               [(g.prompt, g.responses, g.input_ids, g.targets) for g in b]


def hh(*turns) -> str:
    return "".join(f"\n\n{'Human' if role == 'user' else 'Assistant'}: {text}"
                   for role, text in turns)


def test_hh_rlhf_text_form_is_read_as_the_conversation(in_tmp):
    rows = [{"chosen": hh(("user", "Name a colour."), ("assistant", "Blue.")),
             "rejected": hh(("user", "Name a colour."), ("assistant", "No."))},
            {"chosen": hh(("user", "Two plus two?"), ("assistant", "Four."),
                          ("user", "Times three?"), ("assistant", "Twelve.")),
             "rejected": hh(("user", "Two plus two?"), ("assistant", "Four."),
                            ("user", "Times three?"), ("assistant", "Eleven."))}]
    (a, b), problems = validate(read_records(write(in_tmp / "hh.jsonl", rows)), parse_preference)
    assert problems == []
    assert (a.prompt, a.chosen, a.rejected) == ([user("Name a colour.")], [bot("Blue.")],
                                                [bot("No.")])
    assert b.prompt == [user("Two plus two?"), bot("Four."), user("Times three?")]
    assert (b.chosen, b.rejected) == ([bot("Twelve.")], [bot("Eleven.")])


@pytest.mark.parametrize("fields,message", [
    ({"chosen": [user("Hi"), bot("a")], "rejected": [user("Yo"), bot("b")]},
     'field "rejected" shares no leading turn with "chosen" (with no "prompt" field, the prompt '
     "is the turns both begin with)"),
    ({"chosen": [user("Hi"), bot("a"), user("More"), bot("c")],
      "rejected": [user("Hi"), bot("b"), user("More"), bot("c")]},
     'field "chosen"[2] is a user turn after the prompt (with no "prompt" field, chosen and '
     "rejected must differ only in their final assistant turns)"),
    ({"chosen": [user("Hi"), bot("a")], "rejected": [user("Hi"), bot("a"), bot("b")]},
     'field "chosen" has no turn after the prompt it shares with "rejected" (with no "prompt" '
     "field, the prompt is the turns both begin with)"),
    ({"chosen": [user("Hi"), bot("a")], "rejected": [user("Hi"), bot("a")]},
     'field "rejected": chosen and rejected are identical (a comparison needs two different '
     "responses)"),
    ({"chosen": "Blue.", "rejected": "No."},
     'field "prompt" is missing (without it, "chosen" and "rejected" must both be whole '
     'conversations: chat message lists, or "\\n\\nHuman: ... \\n\\nAssistant: ..." text)'),
    ({"chosen": [user("Hi"), bot("a")], "rejected": "b"},
     'field "prompt" is missing (without it, "chosen" and "rejected" must both be whole '
     'conversations: chat message lists, or "\\n\\nHuman: ... \\n\\nAssistant: ..." text)'),
    ({"chosen": [user("Hi"), {"role": "robot", "content": "a"}], "rejected": [user("Hi")]},
     'field "chosen"[1].role must be one of system, user, assistant, tool, got \'robot\''),
    ({"chosen": hh(("user", "Hi"), ("assistant", "a")), "rejected": hh(("user", "Yo"),
                                                                      ("assistant", "a"))},
     'field "rejected" shares no leading turn with "chosen" (with no "prompt" field, the prompt '
     "is the turns both begin with)"),
])
def test_implicit_layout_problems_name_file_line_and_field(in_tmp, fields, message):
    good = implicit_rows()[0]
    name = write(in_tmp / "pairs.jsonl", [good, fields, good])
    with pytest.raises(DataError) as info:
        validate(read_records(name), parse_comparison)
    assert info.value.problems == [f"pairs.jsonl:2: {message}"]
    # --skip-invalid drops the record and keeps the others
    examples, problems = validate(read_records(name), parse_comparison, skip_invalid=True)
    assert [e.where for e in examples] == ["pairs.jsonl:1", "pairs.jsonl:3"]
    assert problems == [f"pairs.jsonl:2: {message}"]


def test_a_record_with_a_prompt_keeps_the_explicit_rules(in_tmp):
    name = write(in_tmp / "pairs.jsonl", [{"prompt": "q", "chosen": "a"},
                                          {"chosen": "a", "rejected": "b", "prompt": None}])
    _, problems = validate(read_records(name), parse_comparison, skip_invalid=True)
    assert problems == ['pairs.jsonl:1: field "rejected" is missing',
                        'pairs.jsonl:2: field "prompt" must be a string or a list of chat '
                        "messages, got NoneType"]


# ---------------------------------------------------------------------------------------------
# hub ids and builder specs


@pytest.mark.parametrize("spec,args,kwargs,shown", [
    ("org/name", ("org/name",), {"name": None, "split": "train"}, "org/name[train]"),
    ("org/name:test", ("org/name",), {"name": None, "split": "test"}, "org/name[test]"),
    ("org/na.me-2:default:train[:10%]", ("org/na.me-2",),
     {"name": "default", "split": "train[:10%]"}, "org/na.me-2:default[train[:10%]]"),
])
def test_hub_ids_become_load_dataset_calls(spec, args, kwargs, shown):
    assert hub_request(spec) == (args, kwargs, shown)


@pytest.mark.parametrize("spec", ["data/train.jsonl", "runs/prefs.parquet", "mix/a.yaml",
                                  "/abs/path/x", "a/b/c", "plain", "org/name:a:b:c", "org/:x"])
def test_paths_are_never_hub_ids(spec):
    assert hub_request(spec) is None


def test_missing_file_is_not_found_not_a_hub_lookup(in_tmp, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub called"))
    with pytest.raises(UserError, match=r"^data/train\.jsonl: data file or folder not found$"):
        read_records("data/train.jsonl")


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` answering for one hub id from memory; the calls it got."""
    import datasets

    calls = []
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b", "margin": None},
            {"prompt": "q2", "chosen": "same", "rejected": "same", "margin": 1.0}]

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split, kw))
        if path != "org/prefs":
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_rows_flow_through_validation_with_row_positions(in_tmp, fake_hub):
    records = read_records("org/prefs:validation")
    assert fake_hub == [("org/prefs", None, "validation", {})]
    assert [(r.where, r.fields) for r in records] == [
        ("org/prefs[validation]:1", {"prompt": "q1", "chosen": "a", "rejected": "b"}),
        ("org/prefs[validation]:2", {"prompt": "q2", "chosen": "same", "rejected": "same",
                                     "margin": 1.0})]
    with pytest.raises(DataError) as info:
        validate(records, parse_comparison)
    assert info.value.problems == [
        'org/prefs[validation]:2: field "rejected": chosen and rejected are identical (a '
        'comparison needs two different responses; a tie is "tie": true)']


def test_hub_failure_is_one_user_error_naming_the_spec(in_tmp, fake_hub):
    with pytest.raises(UserError) as info:
        read_records("org/missing")
    assert str(info.value) == (
        "org/missing: no local file or folder of that name, and datasets.load_dataset could not "
        "load it as a hub dataset (FileNotFoundError: Dataset 'org/missing' doesn't exist on the "
        "Hub)")


def test_a_local_folder_wins_over_a_hub_id(in_tmp, fake_hub):
    import datasets

    datasets.Dataset.from_list([{"prompt": "local"}]).save_to_disk(str(in_tmp / "org" / "prefs"))
    assert [r.fields for r in read_records("org/prefs")] == [{"prompt": "local"}]
    assert fake_hub == []


@pytest.fixture
def datasets_cache(in_tmp, monkeypatch):
    """The Arrow files a builder writes go to this test's folder, not the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", in_tmp / "hf-cache")
    return in_tmp / "hf-cache"


def test_json_and_parquet_builders_read_local_files_through_load_dataset(in_tmp, monkeypatch,
                                                                         datasets_cache):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    real = datasets.load_dataset
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    (in_tmp / "parts").mkdir()
    write(in_tmp / "parts" / "a-1.jsonl", implicit_rows()[:2])
    write(in_tmp / "parts" / "a-2.jsonl", implicit_rows()[2:])
    rows = implicit_rows()
    pq.write_table(pa.Table.from_pylist(rows), in_tmp / "pairs.parquet")
    write(in_tmp / "explicit.jsonl", explicit_rows())
    want = parsed("explicit.jsonl")
    assert parsed("json:parts/a-*.jsonl") == want
    assert parsed("parquet:pairs.parquet") == want
    assert calls == [(("json",), {"data_files": "parts/a-*.jsonl", "split": "train"}),
                     (("parquet",), {"data_files": "pairs.parquet", "split": "train"})]
    assert [r.where for r in read_records("parquet:pairs.parquet")] == [
        f"parquet:pairs.parquet[train]:{i}" for i in range(1, len(rows) + 1)]
    assert {p.name for p in datasets_cache.iterdir()} >= {"json", "parquet"}


def test_builder_rows_report_their_position(in_tmp, datasets_cache):
    write(in_tmp / "p.jsonl", [explicit_rows()[0], {"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError) as info:
        validate(read_records("json:p.jsonl"), parse_comparison)
    assert info.value.problems == ['json:p.jsonl[train]:2: field "rejected" is missing']


@pytest.mark.parametrize("spec,message", [
    ("json:nothing-*.jsonl", "json:nothing-*.jsonl: no file matches 'nothing-*.jsonl'"),
    ("parquet:", "parquet:: give the files after 'parquet:' (e.g. parquet:data/*.parquet)"),
])
def test_builder_spec_errors(in_tmp, spec, message):
    with pytest.raises(UserError) as info:
        read_records(spec)
    assert str(info.value) == message


def test_distinct_indices_keep_each_responses_first_occurrence_strings_and_messages_alike():
    from alignkit.data.schemas import distinct_indices

    chat = [bot("Hi"), user("More?")]
    same_chat_other_key_order = [{"content": "Hi", "role": "assistant"}, user("More?")]
    responses = ["a", "b", "a", chat, same_chat_other_key_order, "c", "b"]
    assert distinct_indices(responses) == [0, 1, 3, 5]
    assert distinct_indices(["x", "x"]) == [0]
    assert distinct_indices([]) == []
