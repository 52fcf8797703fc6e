"""Every data file a user can hand a stage, however broken, ends in a clear error and exit status
2: the message names the file (and the line where there is one), stderr holds no traceback, and
nothing half-written is left behind (no final/, checkpoints or metrics; no output file).

The corpus (empty, blank, binary, mislabelled, wrong JSON shapes, wrong field types, broken
CSV, a huge line, a missing file, a folder, a BOM; YAML that is a list, mis-indented, nested or
unknown) goes to every stage that reads a file, and every ``--config``. All cases run in ONE
helper interpreter calling ``alignkit.cli.main`` per case (as ``test_cli_errors`` does): most
fail in validation before a model loads, and the rest load the tiny model in milliseconds."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest

from alignkit.cli import STAGES
from alignkit.errors import UserError
from tests.conftest import run_cli, run_cli_batch

pytestmark = pytest.mark.smoke

# root reads a file whatever its permission bits, so the unreadable-file case means nothing there
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# ---------------------------------------------------------------------------------------------
# the corpus

GOOD = {
    "sft": {"prompt": "Name a colour.", "completion": "Blue."},
    "prompts": {"prompt": "Name a colour.", "category": "general"},
    "prefs": {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},
    "score": {"prompt": "Name a colour.", "response": "Blue."},
    "adversarial": {"prompt": "Name a colour.", "category": "benign", "expect": "comply"},
    "tasks": {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},
}

ROBOT = [{"role": "robot", "content": "hi"}]
CUT = "an emoji cut in half \ud83d"  # json.dumps writes the lone surrogate as an escape

# one wrong thing per line: every line must be reported (all in one pass)
WRONG = {
    "sft": [
        {"prompt": 1, "completion": "a"},
        {"prompt": "q", "completion": ["a"]},
        {"prompt": {"x": 1}, "completion": "a"},
        {"prompt": None, "completion": "a"},
        {"prompt": True, "completion": "a"},
        {"text": 5},
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]},
        {"messages": ROBOT},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "q", "completion": [{"role": "user", "content": "x"}]},
        {"prompt": "q"},
        {"prompt": "", "completion": "a"},
        {},
        {"messages": [{"role": ["user"], "content": "hi"},
                      {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]},
        {"prompt": "q", "completion": CUT},
        {"messages": [{"role": "user", "content": CUT}, {"role": "assistant", "content": "a"}]},
    ],
    "prompts": [
        {"prompt": 1},
        {"prompt": ["hi"]},
        {"prompt": {"a": 1}},
        {"prompt": None},
        {"prompt": False},
        {"prompt": [{"content": "hi"}]},
        {"prompt": [{"role": "user"}]},
        {"prompt": ROBOT},
        {"prompt": []},
        {"prompt": "   "},
        {"question": "hi"},
        {"prompt": "hi", "category": {"a": 1}},
        {"prompt": "hi", "category": ["a"]},
        {"prompt": "hi", "responses": ["only one"]},
        {"prompt": "hi", "responses": "not a list"},
        {"prompt": "hi", "responses": ["a", 5]},
        {"prompt": "hi", "responses": [{"role": "assistant", "content": "a"}, "b"]},
        {"prompt": CUT},
    ],
    "prefs": [
        {"prompt": 1, "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": 5, "rejected": "b"},
        {"prompt": "q", "chosen": ["a"], "rejected": "b"},
        {"prompt": "q", "chosen": {"a": 1}, "rejected": "b"},
        {"prompt": "q", "chosen": None, "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": True},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "tie": "maybe"},
        {"prompt": "q", "responses": ["a", "b"], "ranking": "0,1"},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 2]},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 1]},
        {"prompt": "q", "responses": ["only"], "ranking": [0]},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [True, False]},
        {"prompt": "q", "responses": ["a", 7], "ranking": [0, 1]},
        {"prompt": "q", "chosen": "a", "rejected": "b", "annotator": {"id": 1}},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 10 ** 400},
        {"prompt": "q", "chosen": ROBOT, "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": float("nan")},
        {"prompt": "q", "chosen": "a", "rejected": CUT},
        {"prompt": "q", "responses": ["a", "b"]},
    ],
    "score": [
        {"prompt": "q", "response": 5},
        {"prompt": 5, "response": "a"},
        {"prompt": "q", "responses": ["a", 5]},
        {"prompt": "q", "responses": "ab"},
        {"prompt": "q", "chosen": {"a": 1}, "rejected": "b"},
        {"prompt": "q", "completion": None},
        {"prompt": "q"},
        {"prompt": "q", "responses": []},
        {"prompt": "q", "responses": [{"role": "assistant", "content": "x"}]},
        {"prompt": ROBOT, "response": "a"},
        {"prompt": "q", "response": [{"role": "assistant"}]},
        {"prompt": "q", "responses": ["a", CUT]},
    ],
    "adversarial": [
        {"prompt": 1, "category": "c", "expect": "refuse"},
        {"prompt": "p", "category": None, "expect": "refuse"},
        {"prompt": "p", "category": "c", "expect": "maybe"},
        {"prompt": "p", "category": "c", "expect": ["refuse"]},
        {"prompt": "p", "category": "c", "expect": {"a": 1}},
        {"prompt": [{"role": "user", "content": "hi"}], "category": "c", "expect": "comply"},
        {"prompt": "p", "category": {"a": 1}, "expect": "comply"},
        {"prompt": CUT, "category": "c", "expect": "comply"},
    ],
    "tasks": [
        {"prompt": 1},
        {"prompt": "q", "chosen": 1, "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "a"},
        {"prompt": "q", "responses": ["one"]},
        {"prompt": "q", "responses": ["a", "b"], "ranking": "0,1"},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 5]},
        {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]},
        {"prompt": "q", "responses": ["a", "b"], "gold": "yes"},
        {"prompt": "q", "responses": ["a", "b"], "gold": True},
        {"prompt": "q", "gold": True},
        {"prompt": "q", "responses": "ab"},
        {"prompt": "q", "responses": [1, 2]},
        {"prompt": ROBOT, "responses": ["a", "b"]},
        {"prompt": "q", "responses": [{"role": "assistant", "content": "a"}, "b"]},
        {"prompt": CUT, "responses": ["a", "b"]},
    ],
}

BIG = 3_000_000  # characters on the huge single line


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def garbage(path: Path) -> Path:
    # starts with bytes that are never valid UTF-8, then seeded noise
    path.write_bytes(b"\x80\xff\xfe" + random.Random(0).randbytes(4096))
    return path


def data_corpus(d: Path) -> list[tuple[str, Path, list[int]]]:
    """(name, file, lines the error must name) that are broken whatever the record schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir()
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n\n   \n\t\n")
    (d / "emptyarray.json").write_text("[]\n")
    (d / "array-lines.jsonl").write_text('[{"prompt": "hi"}]\n[1, 2]\n')
    (d / "scalar-lines.jsonl").write_text('"just a string"\n42\nnull\ntrue\n')
    (d / "scalars.json").write_text('[1, "x", null]\n')
    (d / "object.json").write_text('{\n  "prompt": "hi"\n}\n')
    (d / "truncated.json").write_text('[\n{"prompt": "hi"},\n')
    (d / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (d / "long-number.jsonl").write_text('{"prompt": "hi", "n": ' + "1" * 5000 + "}\n")
    (d / "huge.jsonl").write_text('{"prompt": "' + "x" * BIG + '", oops}\n')
    (d / "huge.csv").write_text("prompt,completion\n" + "x" * BIG + ",y\n")
    (d / "utf16.jsonl").write_bytes('{"prompt": "hi"}\n'.encode("utf-16"))
    (d / "text.parquet").write_text('{"prompt": "hi"}\n')
    (d / "headeronly.csv").write_text("prompt,completion\n")
    (d / "noheader.csv").write_text("What is two plus two?,Four\nName a colour.,Blue\n")
    (d / "ragged.csv").write_text("prompt,completion\nhello,world,extra\nonly\n")
    (d / "nul.csv").write_text("prompt,completion\nhel\0lo,world\n")
    (d / "adir").mkdir()
    pq.write_table(pa.table({"prompt": [1, 2]}), d / "intprompt.parquet")
    files = [
        ("empty", d / "empty.jsonl", []),
        ("blank", d / "blank.jsonl", []),
        ("empty-array", d / "emptyarray.json", []),
        ("array-lines", d / "array-lines.jsonl", [1, 2]),
        ("scalar-lines", d / "scalar-lines.jsonl", [1, 2, 3, 4]),
        ("json-scalars", d / "scalars.json", [1, 2, 3]),
        ("json-object", d / "object.json", [1]),
        ("json-truncated", d / "truncated.json", []),
        ("deep-nesting", d / "deep.jsonl", [1]),
        ("long-number", d / "long-number.jsonl", [1]),
        ("huge-line", d / "huge.jsonl", [1]),
        ("huge-csv-cell", d / "huge.csv", [2]),
        ("utf16", d / "utf16.jsonl", []),
        ("text-as-parquet", d / "text.parquet", []),
        ("csv-header-only", d / "headeronly.csv", []),
        ("csv-no-header", d / "noheader.csv", [2]),
        ("csv-ragged", d / "ragged.csv", [2]),
        ("csv-nul", d / "nul.csv", [2]),
        ("parquet-int-prompt", d / "intprompt.parquet", [1, 2]),
        ("missing", d / "missing.jsonl", []),
        ("folder", d / "adir", []),
    ]
    for ext in ("jsonl", "csv", "parquet", "yaml"):
        files.append((f"binary-{ext}", garbage(d / f"garbage.{ext}"), []))
    if not AS_ROOT:
        (d / "noperm.jsonl").write_text('{"prompt": "hi"}\n')
        (d / "noperm.jsonl").chmod(0)
        files.append(("unreadable", d / "noperm.jsonl", []))
    return files


def schema_corpus(d: Path, schema: str) -> list[tuple[str, Path, list[int]]]:
    """A BOM before a good first record (line 2 is bad: the BOM must not cost line 1), and every
    wrong type of the schema, one per line."""
    bom = d / f"bom-{schema}.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD[schema]) + "\n{\"prompt\": 7}\n").encode())
    wrong = jsonl(d / f"wrong-{schema}.jsonl", WRONG[schema])
    every = list(range(1, len(WRONG[schema]) + 1))
    return [("bom-then-bad-line", bom, [2]), ("wrong-types", wrong, every)]


def yaml_corpus(d: Path) -> list[tuple[str, Path, list[int]]]:
    """YAML files broken whatever they configure. An empty (or all-comment) --config or --panel
    file is valid -- no options, the default panel -- so "empty" is a case only where it is an
    error (data files, a constitution)."""
    d.mkdir()
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "scalar.yaml").write_text("just some words\n")
    (d / "tab.yaml").write_text("a: 1\nb:\n\tc: 2\n")
    (d / "multidoc.yaml").write_text("a: 1\n---\nb: 2\n")
    (d / "badjson.json").write_text('{"a": 1,,}\n')
    (d / "long-number.yaml").write_text("a: " + "1" * 5000 + "\n")
    (d / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "adir").mkdir()
    files = [("list", d / "list.yaml", []), ("scalar", d / "scalar.yaml", []),
             ("tab-indent", d / "tab.yaml", [3]), ("two-documents", d / "multidoc.yaml", [2]),
             ("bad-json", d / "badjson.json", [1]), ("binary", garbage(d / "garbage.yaml"), []),
             ("long-number", d / "long-number.yaml", []), ("deep", d / "deep.yaml", []),
             ("missing", d / "missing.yaml", []), ("folder", d / "adir", [])]
    if not AS_ROOT:
        (d / "noperm.yaml").write_text("a: 1\n")
        (d / "noperm.yaml").chmod(0)
        files.append(("unreadable", d / "noperm.yaml", []))
    return files


def yaml_files(d: Path, tag: str,
               texts: dict[str, tuple[str, list[int]]]) -> list[tuple[str, Path, list[int]]]:
    out = []
    for name, (text, lines) in texts.items():
        path = d / f"{tag}-{name}.yaml"
        path.write_bytes((b"\xef\xbb\xbf" if name.startswith("bom") else b"") + text.encode())
        out.append((name, path, lines))
    return out


PANEL = {
    "unknown-key": ("gold_scale: 2\nwho: [a, b]\n", [2]),
    "nested-value": ("gold_scale: {a: 1}\n", [1]),
    "text-scale": ("gold_scale: lots\n", [1]),
    "annotators-text": ("annotators: everyone\n", [1]),
    "annotators-empty": ("annotators: []\n", [1]),
    "bad-temperature": ("annotators:\n  - {id: a, temperature: hot}\n", [2]),
    "bad-careless": ("annotators:\n  - {id: a, careless_rate: 2}\n", [2]),
    "bad-assignment": ("assignment: sometimes\n", [1]),
    "huge-scale": ("gold_scale: 1" + "0" * 400 + "\n", [1]),
    "huge-temperature": ("annotators:\n  - {id: a, temperature: 1" + "0" * 400 + "}\n", [2]),
    "bom": ("gold_scale: 2\nwho: 1\n", [2]),
}

CONSTITUTION = {
    "empty": ("", []),
    "principles-mapping": ("principles: {a: b}\n", [1]),
    "principles-empty": ("principles: []\n", [1]),
    "missing-critique": ("principles:\n  - {name: a, revision: r}\n", [2]),
    "unknown-field": ("principles:\n  - {name: a, critique: c, revision: r, mood: x}\n", [2]),
    "nested-critique": ("principles:\n  - name: a\n    critique: {x: 1}\n    revision: r\n", [2]),
    "duplicate-name": ("principles:\n  - {name: a, critique: c, revision: r}\n"
                       "  - {name: a, critique: c, revision: r}\n", [3]),
    "bom": ("principles:\n  - {name: a, critique: c}\n", [2]),
}


def config_files(d: Path, stage: str) -> list[tuple[str, Path, list[int]]]:
    fields = dataclasses.fields(STAGES[stage][0])
    first = fields[0].name
    texts = {
        "unknown-key": (f"{first}: x\nno_such_option: 1\n", [2]),
        "nested-value": (f"{first}:\n  inner: 1\n", [1]),
        "list-value": (f"{first}: [1, 2]\n", [1]),
        "bom": ("no_such_option: 1\n", [1]),
    }
    floats = [f.name for f in fields if f.type in (float, "float")]
    if floats:  # an integer past the float range
        texts["huge-number"] = (f"{floats[0]}: 1{'0' * 400}\n", [1])
    return yaml_files(d, stage, texts)


# ---------------------------------------------------------------------------------------------
# the cases



def data_slots(tiny: str, d: Path) -> list[dict]:
    """Every place a stage reads a record file: (stage, flag, schema, argv with {bad}/{out})."""
    good_sft = jsonl(d / "good-sft.jsonl", [GOOD["sft"]] * 4)
    good_prompts = jsonl(d / "good-prompts.jsonl", [GOOD["prompts"]] * 4)
    good_prefs = jsonl(d / "good-prefs.jsonl", [GOOD["prefs"]] * 4)
    nothing = str(d / "no-such-reward-model")  # data is checked before the reward model loads
    train = ["--model", tiny, "--device", "cpu", "--no-progress", "--max-steps", "1"]
    slot = lambda stage, flag, schema, argv, out="dir": dict(  # noqa: E731
        stage=stage, flag=flag, schema=schema, argv=argv, out=out)
    return [
        slot("sft", "--data", "sft", ["sft", *train, "--data", "{bad}", "--output", "{out}"]),
        slot("sft", "--eval-data", "sft", ["sft", *train, "--data", str(good_sft),
                                           "--eval-data", "{bad}", "--output", "{out}"]),
        slot("reward", "--data", "prefs", ["reward", *train, "--data", "{bad}", "--output",
                                           "{out}"]),
        slot("reward", "--eval-data", "prefs", ["reward", *train, "--data", str(good_prefs),
                                                "--eval-data", "{bad}", "--output", "{out}"]),
        slot("dpo", "--data", "prefs", ["dpo", *train, "--data", "{bad}", "--output", "{out}"]),
        slot("dpo", "--eval-data", "prefs", ["dpo", *train, "--data", str(good_prefs),
                                             "--eval-data", "{bad}", "--output", "{out}"]),
        slot("dpo", "--sample-prompts", "prompts", ["dpo", *train, "--data", str(good_prefs),
                                                    "--sample-prompts", "{bad}", "--output",
                                                    "{out}"]),
        slot("online-dpo", "--data", "prompts", ["online-dpo", *train, "--reward-model", nothing,
                                                 "--data", "{bad}", "--output", "{out}"]),
        slot("online-dpo", "--sample-prompts", "prompts", [
            "online-dpo", *train, "--reward-model", nothing, "--data", str(good_prompts),
            "--sample-prompts", "{bad}", "--output", "{out}"]),
        slot("ppo", "--data", "prompts", ["ppo", *train, "--reward-model", nothing, "--data",
                                          "{bad}", "--output", "{out}"]),
        slot("ppo", "--eval-data", "prompts", ["ppo", *train, "--reward-model", nothing,
                                               "--data", str(good_prompts), "--eval-data",
                                               "{bad}", "--output", "{out}"]),
        slot("best-of-n", "--data", "prompts", ["best-of-n", "--model", tiny, "--device", "cpu",
                                                "--reward-model", nothing, "--data", "{bad}",
                                                "--output", "{out}"]),
        slot("label", "--data", "prompts", ["label", "--model", tiny, "--device", "cpu",
                                            "--data", "{bad}", "--output", "{out}/labels.jsonl"],
             "file"),
        slot("score", "--data", "score", ["score", "--reward-model", nothing, "--device", "cpu",
                                          "--data", "{bad}", "--output", "{out}/scores.jsonl"],
             "file"),
        slot("eval", "--prompts", "prompts", ["eval", "--policies", f"a={tiny}", "--no-gold",
                                              "--adversarial", "none", "--device", "cpu",
                                              "--prompts", "{bad}", "--output", "{out}"]),
        slot("eval", "--adversarial", "adversarial", ["eval", "--policies", f"a={tiny}",
                                                      "--no-gold", "--device", "cpu",
                                                      "--adversarial", "{bad}", "--output",
                                                      "{out}"]),
        slot("critique", "--data", "prompts", ["critique", "--model", tiny, "--device", "cpu",
                                               "--data", "{bad}", "--output",
                                               "{out}/critique.jsonl"], "file"),
        slot("annotate-add-tasks", "--data", "tasks", ["annotate", "add-tasks", "--db",
                                                       f"sqlite:///{d / 'annotate.db'}",
                                                       "--project", "p", "--data", "{bad}"],
             "db"),
    ]


def with_responses(d: Path) -> Path:
    return jsonl(d / "with-responses.jsonl",
                 [{**GOOD["prompts"], "responses": ["Blue.", "No."]}] * 2)


# what `label --judge --resume` finds in its --output: a record, a line that is not UTF-8, a line
# that is not JSON, another record; only an unfinished last line may be cut off as a torn write
RESUMED = b'{"id": "000000-a"}\n\xff\xfe not text\n{"id": \n{"id": "000001-b"}\n'


def other_cases(d: Path) -> list[dict]:
    """Files read by one stage each: annotation guidelines, and the labels a resumed RLAIF run
    reads back."""
    cases = []
    (d / "guidelines.md").write_bytes(b"# Judge well\n\nPrefer caf\xe9 answers.\n")
    db = f"sqlite:///{d / 'annotate.db'}"
    for name, path, lines in [("binary", d / "guidelines.md", [3]),
                              ("missing", d / "missing.md", []), ("folder", d, [])]:
        cases.append(dict(id=f"annotate-create-project --guidelines {name}",
                          stage="annotate-create-project", file=str(path), lines=lines,
                          argv=["annotate", "create-project", "--db", db, "--name", "guided",
                                "--guidelines", str(path)], out_kind="none"))
    resumed = d / "resumed.jsonl"
    resumed.write_bytes(RESUMED)
    cases.append(dict(id="label --judge --resume --output", stage="label", file=str(resumed),
                      lines=[2], out_kind="unchanged",
                      argv=["label", "--judge", "gold", "--resume", "--data",
                            str(with_responses(d)), "--output", str(resumed)]))
    return cases


def yaml_slots(tiny: str, d: Path) -> list[dict]:
    """Every place a stage reads a YAML file other than --config."""
    answered = with_responses(d)
    return [
        dict(stage="label", flag="--panel", kind="panel", out="file",
             argv=["label", "--model", tiny, "--device", "cpu", "--data", str(answered),
                   "--panel", "{bad}", "--output", "{out}/labels.jsonl"]),
        dict(stage="label", flag="--principles", kind="constitution", out="file",
             argv=["label", "--judge", "gold", "--data", str(answered), "--principles",
                   "{bad}", "--output", "{out}/labels.jsonl"]),
        dict(stage="critique", flag="--constitution", kind="constitution", out="file",
             argv=["critique", "--model", tiny, "--device", "cpu", "--data",
                   str(answered), "--constitution", "{bad}", "--output",
                   "{out}/critique.jsonl"]),
    ]


def build_cases(tiny: str, root: Path) -> list[dict]:
    generic = data_corpus(root / "data")
    yamls = yaml_corpus(root / "yaml")
    extra = root / "extra"
    extra.mkdir()
    cases = []

    def add(slot: dict, name: str, path: Path, lines: list[int], **more):
        out = root / "out" / f"{len(cases):03d}"
        if slot["out"] == "file":
            out.mkdir(parents=True)  # the output file's folder exists: it must stay empty
        argv = [a.replace("{bad}", str(path)).replace("{out}", str(out)) for a in slot["argv"]]
        cases.append(dict(id=f"{slot['stage']} {slot['flag']} {name}", stage=slot["stage"],
                          argv=argv, file=str(path), lines=lines, out=str(out),
                          out_kind=slot["out"], **more))

    for slot in data_slots(tiny, extra):
        for name, path, lines in generic + schema_corpus(extra, slot["schema"]):
            add(slot, name, path, lines)
    for slot in yaml_slots(tiny, extra):
        specific = yaml_files(extra, slot["kind"],
                              PANEL if slot["kind"] == "panel" else CONSTITUTION)
        for name, path, lines in yamls + specific:
            add(slot, name, path, lines)
    for stage in STAGES:
        head = stage.split("-", 1) if stage.startswith("annotate-") else [stage]
        slot = dict(stage=stage, flag="--config", argv=[*head, "--config", "{bad}"], out="none")
        for name, path, lines in yamls + config_files(extra, stage):
            add(slot, name, path, lines, config_only=True)
    for case in other_cases(extra):
        cases.append({**case, "out": str(root / "out" / f"{len(cases):03d}")})
    return cases


def check(case: dict, res: dict) -> str | None:
    """What is wrong with one case's outcome (None: nothing)."""
    err, file = res["err"], case["file"]
    problems = []
    if res["rc"] != 2:
        problems.append(f"exit status {res['rc']}")
    if "Traceback" in err:
        problems.append("a traceback")
    if f"alignkit {case['stage']}: error: " not in err:
        problems.append("no 'alignkit STAGE: error:' line")
    if file not in err:
        problems.append("the file is not named")
    missing = [n for n in case["lines"] if f"{file}:{n}:" not in err]
    if missing:
        problems.append(f"lines {missing} are not named")
    if case["id"].endswith(" bom-then-bad-line") and f"{file}:1:" in err:
        problems.append("the byte-order mark made line 1 an error")
    if len(err) > 20_000:
        problems.append(f"{len(err)} characters of stderr")
    out = Path(case["out"])
    if case["out_kind"] == "dir" and out.exists():  # a rejected run writes nothing at all
        problems.append(f"left {sorted(p.name for p in out.iterdir())} in --output")
    if case["out_kind"] == "file" and any(out.iterdir()):
        problems.append(f"left {sorted(p.name for p in out.iterdir())} beside --output")
    if case["out_kind"] == "unchanged" and Path(file).read_bytes() != RESUMED:
        problems.append("changed the file")
    if not problems:
        return None
    return f"[{case['id']}] {'; '.join(problems)}:\n    " + "\n    ".join(err[-2500:].splitlines())


def test_no_bad_data_file_gives_a_traceback(tiny_model_dir, tmp_path):
    from alignkit.feedback.store import Store

    cases = build_cases(str(tiny_model_dir), tmp_path)
    assert len(cases) > 500
    db = f"sqlite:///{tmp_path / 'extra' / 'annotate.db'}"
    setup = {"argv": ["annotate", "create-project", "--db", db, "--name", "p"]}
    results = run_cli_batch([setup, *cases], tmp_path, timeout=900)
    assert results[0]["rc"] == 0, results[0]["err"]
    wrong = [w for case, res in zip(cases, results[1:]) if (w := check(case, res))]
    assert not wrong, f"{len(wrong)} of {len(cases)} cases:\n" + "\n".join(wrong)
    # add-tasks never added part of a bad file; no project was made with bad guidelines
    store = Store(db)
    assert store.tasks_of(store.project_by_name("p")["id"]) == []
    with pytest.raises(UserError, match="no project named 'guided'"):
        store.project_by_name("guided")


def test_a_bad_file_as_a_user_sees_it(tmp_path):
    """The real entry point prints the problems and nothing else."""
    data = tmp_path / "prompts.csv"
    data.write_bytes(b"prompt\nfine\n\xff\xfe broken\n")
    proc = run_cli("label", "--data", str(data), "--output", str(tmp_path / "out.jsonl"),
                   timeout=120)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"alignkit label: error: invalid data (1 problem(s)):\n{data}:3: not "
                           "UTF-8 text (byte 0xff); save the file as UTF-8\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.csv"]


def test_report_notes_an_unreadable_frontier_csv(tmp_path):
    """The report is made whatever its optional inputs hold: a frontier CSV that is not text
    becomes a note on the page naming it, not a crash."""
    run = tmp_path / "run"
    run.mkdir()
    frontier = garbage(tmp_path / "frontier.csv")
    proc = run_cli("report", str(run), "--frontier", str(frontier), timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert f"{frontier}: unreadable frontier CSV" in page
