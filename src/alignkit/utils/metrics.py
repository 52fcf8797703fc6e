"""Run observability: ``metrics.jsonl`` (one JSON object per logged step) and the experiment
trackers of ``--report-to`` (TensorBoard by default; ``alignkit.utils.trackers``)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from alignkit.utils.trackers import open_trackers, parse_report_to

log = logging.getLogger("alignkit.metrics")


class MetricsLog:
    """Append-only metrics writer. On resume, lines from steps after the checkpoint (written by
    the killed run before it died) are dropped so the file reads as one uninterrupted run.

    ``report_to``: the trackers that also get every finite number logged (``--report-to``);
    ``config``: the resolved config, which each of them records once when its run starts."""

    def __init__(self, output: str | Path, resume_step: int | None = None,
                 report_to: str = "tensorboard", config: dict[str, Any] | None = None):
        # the trackers start first: one that cannot start stops the run before a line is written
        self._trackers = open_trackers(parse_report_to(report_to), output, config, resume_step)
        self.path = Path(output) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._fh = self.path.open("a", encoding="utf-8")

    def log(self, step: int, values: dict[str, Any], split: str = "train") -> dict[str, Any]:
        row = {"step": step, "split": split, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in values.items()})
        self._fh.write(json.dumps(row) + "\n")
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
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
