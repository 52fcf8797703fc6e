"""A loss or gradient that is not finite never becomes a model: the run stops with one clear
message naming the step and the records of the batch, writes no ``final/``, and exits 2; with
``--skip-nonfinite`` the update is skipped, counted, and the run ends with finite weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def write_prefs(path: Path, huge_margin_line: int, n: int = 24) -> Path:
    """Easy pairs; the record on line ``huge_margin_line`` has a margin of 1e308: finite as a
    number, so it passes validation, but past float32's range (the loss is inf)."""
    from alignkit.data.readers import read_records

    recs = [r.fields for r in read_records("demo")][:n]
    with path.open("w") as fh:
        for i, r in enumerate(recs, 1):
            row = {"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["prompt"]}
            if i == huge_margin_line:
                row["margin"] = 1e308
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_an_infinite_loss_stops_the_run_naming_step_and_record(stage, tiny_model_dir, tmp_path):
    prefs = write_prefs(tmp_path / "prefs.jsonl", huge_margin_line=5)
    out = tmp_path / "run"
    # one micro-batch of every record: the first step's loss holds line 5's comparison
    proc = run_cli(stage, "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(out), "--max-steps", "3", "--batch-size", "24", "--eval-fraction", "0",
                   "--no-progress")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{stage}: at step 1, the loss of micro-batch 1 is not finite" in message
    assert f"{prefs}:5" in message and "--skip-nonfinite" in message
    assert not (out / "final").exists()
    assert not (out / "checkpoints").exists()


def test_skip_nonfinite_skips_counts_and_ends_finite(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    prefs = write_prefs(tmp_path / "prefs.jsonl", huge_margin_line=5)
    out = tmp_path / "run"
    # micro-batches of 8 records in shuffled epochs: exactly the steps whose batch holds line 5
    # are skipped, and the others train
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(out), "--max-steps", "6", "--batch-size", "8", "--eval-fraction", "0",
                   "--skip-nonfinite", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    skipped = [r["step"] for r in train if "nonfinite_skipped" in r]
    assert len(skipped) == 2  # 24 records in batches of 8: line 5 is in one batch per epoch
    assert [r["nonfinite_skipped"] for r in train if "nonfinite_skipped" in r] == [1, 2]
    summary = next(r for r in rows if r["split"] == "summary")
    assert summary["nonfinite_skipped"] == 2
    assert "update skipped (--skip-nonfinite" in proc.stderr
    # strict JSON: the skipped steps' infinite loss is written as null, never as bare Infinity
    assert all(r["loss"] is None for r in train if r["step"] in skipped)
    assert all(r["loss"] is not None for r in train if r["step"] not in skipped)
    weights = load_file(str(next((out / "final").rglob("*.safetensors"))))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
