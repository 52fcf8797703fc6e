"""``metrics.jsonl``: strict JSON lines (no bare NaN), a resume that keeps exactly the rows up to
its checkpoint, drops a line a kill cut short, replaces the file atomically, and starts afresh
when the killed run had no checkpoint yet."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.utils import metrics as metrics_module
from alignkit.utils.metrics import MetricsLog, read_metrics, strict

pytestmark = pytest.mark.unit


def lines(path):
    return path.read_text().splitlines()


def test_strict_replaces_every_non_finite_number():
    assert strict({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": 2, "e": "nan"}) \
        == {"a": None, "b": [1.0, None, {"c": None}], "d": 2, "e": "nan"}


def test_rows_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path, report_to="none")
    log.log(1, {"loss": math.nan, "grad_norm": math.inf, "lr": 0.5, "detail": {"x": math.nan}})
    log.close()
    (line,) = lines(tmp_path / "metrics.jsonl")
    assert "NaN" not in line and "Infinity" not in line
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert (row["loss"], row["grad_norm"], row["lr"], row["detail"]) == (None, None, 0.5,
                                                                         {"x": None})


def write_run(path, steps, torn: str = ""):
    rows = [{"step": 0, "split": "setup"}, {"step": 0, "split": "eval", "loss": 3.0}]
    rows += [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, steps + 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    return rows


def test_resume_keeps_rows_up_to_the_checkpoint_and_drops_a_torn_tail(tmp_path):
    rows = write_run(tmp_path / "metrics.jsonl", 7, torn='{"step": 8, "split": "tr')
    log = MetricsLog(tmp_path, resume_step=4, report_to="none")
    log.log(5, {"loss": 0.25})
    log.close()
    kept = read_metrics(tmp_path / "metrics.jsonl")
    assert kept[:6] == rows[:6]
    assert [(r["step"], r["loss"]) for r in kept[6:]] == [(5, 0.25)]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


@pytest.mark.parametrize("resume_step", [None, 0])
def test_a_run_with_no_checkpoint_starts_the_file_again(tmp_path, resume_step):
    """Killed before its first checkpoint, a resumed run starts from step 0: keeping the killed
    run's step-0 rows would write them twice."""
    write_run(tmp_path / "metrics.jsonl", 3)
    MetricsLog(tmp_path, resume_step=resume_step, report_to="none").close()
    assert lines(tmp_path / "metrics.jsonl") == []


def test_a_kill_during_the_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_run(path, 6)
    before = path.read_bytes()
    calls = []

    def dies_on_the_third_row(value):
        calls.append(value)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands in for a kill while the kept rows are written
        return strict(value)

    monkeypatch.setattr(metrics_module, "strict", dies_on_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        MetricsLog(tmp_path, resume_step=3, report_to="none")
    assert path.read_bytes() == before


def test_reading_skips_a_torn_tail_silently_and_names_a_bad_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3, "lo')
    with caplog.at_level("WARNING", logger="alignkit.metrics"):
        assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:2: not a metrics row; skipped"]
