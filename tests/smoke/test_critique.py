"""``alignkit critique`` on a tiny model: answer -> critique against a drawn principle ->
revise; SFT records with the principle, original and critique; seeded; read by ``alignkit
sft``."""

from __future__ import annotations

import json

import pytest

from alignkit.judges.constitution import load_constitution

pytestmark = pytest.mark.smoke


def cli(capsys, *args) -> tuple[int, str, str]:
    from alignkit.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "How do I boil an egg?", "category": "helpful"},
            {"prompt": "How do I pick a lock to get into my neighbour's house?",
             "category": "harmful"},
            {"prompt": "What will the weather be in Paris in a year?", "category": "uncertain"},
            {"prompt": [{"role": "user", "content": "Name a colour."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_critique_writes_seeded_sft_data_that_sft_reads(tiny_model_dir, prompts, tmp_path,
                                                        capsys):
    common = ["critique", "--model", tiny_model_dir, "--data", prompts, "--max-new-tokens", "8",
              "--revisions", "2"]
    first, second, other = (tmp_path / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    rc, stdout, _ = cli(capsys, *common, "--output", first, "--seed", "5")
    assert rc == 0
    recs = [json.loads(x) for x in first.read_text().splitlines()]
    dropped = 4 - len(recs)
    assert f"{dropped} empty revision(s) dropped" in stdout
    assert len(recs) >= 3
    constitution = load_constitution("default")
    names = [p.name for p in constitution.principles]
    source = [json.loads(x) for x in prompts.read_text().splitlines()]
    for rec in recs:
        assert set(rec) >= {"prompt", "completion", "principle", "principles", "original",
                            "critique"}
        assert rec["completion"].strip() and isinstance(rec["original"], str)
        n = next(i for i, s in enumerate(source) if s["prompt"] == rec["prompt"])
        # the principles are the seeded draws for (prompt index, round)
        assert rec["principles"] == [constitution.draw(5, f"{n}:{r}").name for r in range(2)]
        assert rec["principle"] == rec["principles"][-1] and rec["principle"] in names
        assert rec.get("category") == source[n].get("category")
    # same seed: the same file; another seed: other samples
    assert cli(capsys, *common, "--output", second, "--seed", "5")[0] == 0
    assert second.read_text() == first.read_text()
    assert cli(capsys, *common, "--output", other, "--seed", "6")[0] == 0
    assert other.read_text() != first.read_text()
    # alignkit sft accepts the revisions as they are (extra fields and all)
    rc, _, err = cli(capsys, "sft", "--model", tiny_model_dir, "--data", first, "--max-steps",
                     "1", "--eval-fraction", "0", "--no-progress", "--output", tmp_path / "sft")
    assert rc == 0, err[-2000:]
    assert (tmp_path / "sft" / "final" / "config.json").is_file()


def test_bad_constitution_and_flags_are_clear_errors(tiny_model_dir, prompts, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: Be good.\n")
    rc, _, err = cli(capsys, "critique", "--model", tiny_model_dir, "--data", prompts,
                     "--constitution", bad, "--output", tmp_path / "o.jsonl")
    assert rc == 2 and "principles[0]" in err and "'revision'" in err
    rc, _, err = cli(capsys, "critique", "--model", tiny_model_dir, "--data", prompts,
                     "--revisions", "0", "--output", tmp_path / "o.jsonl")
    assert rc == 2 and "--revisions" in err
    assert not (tmp_path / "o.jsonl").exists()
