"""``--resume`` continues only the run it was given: a changed data file, learning rate, seed or
model is refused (exit 2, config.yaml untouched) unless ``--force``, which names each difference;
longer runs and other logging/saving settings resume. A run refused for its data writes nothing:
no folder, no config.yaml, and ``--overwrite`` keeps the earlier run until the data is accepted.
A run killed before its first checkpoint resumes without duplicated rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def sft(model: Path, out: Path, *extra: str, data: str = "demo"):
    return run_cli("sft", "--model", str(model), "--data", data, "--output", str(out),
                   "--max-steps", "4", "--save-every", "2", "--eval-fraction", "0",
                   "--no-progress", *extra)


def test_resume_refuses_changed_settings_unless_forced(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert sft(tiny_model_dir, out).returncode == 0
    recorded = (out / "config.yaml").read_bytes()
    for flags, named in ((["--lr", "0.001"], "lr: 2e-05 -> 0.001"),
                         (["--seed", "7"], "seed: 42 -> 7"),
                         (["--batch-size", "4"], "batch_size: 8 -> 4")):
        proc = sft(tiny_model_dir, out, "--resume", *flags)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert named in proc.stderr and "--force" in proc.stderr
        assert (out / "config.yaml").read_bytes() == recorded
    other_data = tmp_path / "other.jsonl"
    other_data.write_text(json.dumps({"prompt": "Hi", "completion": "Hello!"}) + "\n")
    proc = sft(tiny_model_dir, out, "--resume", data=str(other_data))
    assert proc.returncode == 2 and "data: 'demo' -> " in proc.stderr
    assert (out / "config.yaml").read_bytes() == recorded

    # a longer run, other logging and saving: the same run, continued
    proc = sft(tiny_model_dir, out, "--resume", "--max-steps", "6", "--log-every", "2",
               "--keep-checkpoints", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln)["split"] == "train"]
    assert steps == [1, 2, 4, 6]  # from the checkpoint of step 2, logging every 2nd step
    # --force: continued, each difference named
    shutil.rmtree(out / "final")
    proc = sft(tiny_model_dir, out, "--resume", "--force", "--seed", "7", "--max-steps", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--resume --force: continuing with seed: 42 -> 7" in proc.stderr


def test_rejected_data_writes_nothing_and_overwrite_keeps_the_earlier_run(tiny_model_dir,
                                                                          tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "completion": 3}) + "\n")
    fresh = tmp_path / "fresh"
    proc = sft(tiny_model_dir, fresh, data=str(bad))
    assert proc.returncode == 2 and f"{bad}:1" in proc.stderr
    assert not fresh.exists()

    earlier = tmp_path / "earlier"
    assert sft(tiny_model_dir, earlier).returncode == 0
    before = {p.relative_to(earlier): p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    for stage in ("sft", "reward", "dpo"):
        proc = run_cli(stage, "--model", str(tiny_model_dir), "--data", str(bad), "--output",
                       str(earlier), "--overwrite", "--no-progress")
        assert proc.returncode == 2 and f"{bad}:1" in proc.stderr, (stage, proc.stderr[-2000:])
        after = {p.relative_to(earlier): p.read_bytes() for p in earlier.rglob("*")
                 if p.is_file()}
        assert after == before, stage


def test_a_run_killed_before_its_first_checkpoint_resumes_without_duplicates(tiny_model_dir,
                                                                            tmp_path):
    out = tmp_path / "run"
    assert sft(tiny_model_dir, out, "--save-every", "0").returncode == 0
    # as if killed before any checkpoint: only config.yaml and the rows it had logged remain
    shutil.rmtree(out / "final")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(rows[:4]) + "\n" + rows[4][:10])  # torn
    assert sft(tiny_model_dir, out, "--save-every", "0", "--resume").returncode == 0
    again = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in again]
    assert len(keys) == len(set(keys)), keys
    assert [k for k in keys if k[1] == "train"] == [(s, "train") for s in range(1, 5)]


def test_a_resume_that_would_do_nothing_is_refused(tmp_path):
    proc = run_cli("label", "--data", "demo-prompts", "--resume", "--output",
                   str(tmp_path / "prefs.jsonl"))
    assert proc.returncode == 2 and "--resume continues a labelling run of --judge" in proc.stderr
    assert not (tmp_path / "prefs.jsonl").exists()


def test_label_overwrite_keeps_the_earlier_file_until_the_data_is_accepted(tmp_path):
    earlier = tmp_path / "labels.jsonl"
    earlier.write_text('{"earlier": "labels"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": 3}) + "\n")
    proc = run_cli("label", "--judge", "gold", "--data", str(bad), "--overwrite", "--output",
                   str(earlier))
    assert proc.returncode == 2 and f"{bad}:1" in proc.stderr, proc.stderr[-2000:]
    assert earlier.read_text() == '{"earlier": "labels"}\n'
