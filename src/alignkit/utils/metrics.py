"""Run observability: ``metrics.jsonl`` (one JSON object per logged step) and the experiment
trackers of ``--report-to`` (TensorBoard by default; ``alignkit.utils.trackers``)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from alignkit.utils.trackers import open_trackers, parse_report_to

log = logging.getLogger("alignkit.metrics")


def strict(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts and lists too) replaced by ``None``:
    strict JSON, which every reader parses (Python's ``json`` would write bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def parse_rows(text: str, path: str | Path = "metrics.jsonl") -> list[dict[str, Any]]:
    """The rows of a metrics log. A last line cut short (a run killed mid-write) is dropped;
    any other line that is not a JSON object is dropped with a warning naming it."""
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number < len(lines) and not (number == len(lines) - 1 and not lines[-1]):
            log.warning("%s:%d: not a metrics row; skipped", path, number)
    return rows


class MetricsLog:
    """Append-only metrics writer of strict JSON lines. On resume from the checkpoint of step
    ``resume_step``, lines from later steps (written by the killed run before it died) and a
    line the kill cut short are dropped, so the file reads as one uninterrupted run; the file is
    replaced atomically (a kill during the rewrite leaves the old one whole). Resuming from step
    0 (killed before its first checkpoint) starts the file again.

    ``report_to``: the trackers that also get every finite number logged (``--report-to``);
    ``config``: the resolved config, which each of them records once when its run starts."""

    def __init__(self, output: str | Path, resume_step: int | None = None,
                 report_to: str = "tensorboard", config: dict[str, Any] | None = None):
        # the trackers start first: one that cannot start stops the run before a line is written
        self._trackers = open_trackers(parse_report_to(report_to), output, config, resume_step)
        self.path = Path(output) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, Any]] = []
        if resume_step and self.path.exists():
            text = self.path.read_text(encoding="utf-8", errors="replace")
            kept = [r for r in parse_rows(text, self.path)
                    if isinstance(r.get("step"), (int, float)) and r["step"] <= resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(strict(r), allow_nan=False) + "\n" for r in kept)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def log(self, step: int, values: dict[str, Any], split: str = "train") -> dict[str, Any]:
        row = {"step": step, "split": split, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in values.items()})
        self._fh.write(json.dumps(strict(row), allow_nan=False) + "\n")
        self._fh.flush()
        numbers = {f"{split}/{k}": float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            for tracker in list(self._trackers):
                try:
                    tracker.log(step, numbers)
                except Exception as e:  # a tracker never stops a run: metrics.jsonl has it all
                    log.warning("%s failed (%s); the run goes on without it", tracker.name, e)
                    self._trackers.remove(tracker)
        return row

    def close(self) -> None:
        self._fh.close()
        for tracker in self._trackers:
            try:
                tracker.close()
            except Exception as e:
                log.warning("%s failed to close its run (%s)", tracker.name, e)
        self._trackers = []


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return parse_rows(Path(path).read_text(encoding="utf-8", errors="replace"), path)
