"""What a run prints: the ``alignkit`` logger (to stderr, so stdout stays for results), the
libraries' own chatter turned down, the progress bar, and the pipelines' stage clock."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

log = logging.getLogger("alignkit")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "peft", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def progress_bar(total: int, initial: int, enabled: bool, desc: str, unit: str = "step"):
    """A tqdm bar on stderr (``enabled`` False: a silent one that takes the same calls)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit,
                dynamic_ncols=True, file=sys.stderr)


class StageClock:
    """The wall-clock seconds of each stage of a pipeline run, in the order they ran (the demo's
    and the study's ``stage_seconds``): where a run's time went, to compare runs stage by
    stage."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.seconds: dict[str, float] = {}
        self.started = self.mark = now()

    def elapsed(self) -> float:
        """Seconds since the clock started (the whole run so far), to a tenth of a second."""
        return round(self.now() - self.started, 1)

    def lap(self, stage: str) -> None:
        """``stage`` ended now: it took the time since the last lap (or the clock's start),
        kept to a tenth of a second."""
        now = self.now()
        self.seconds[stage] = round(now - self.mark, 1)
        self.mark = now

    def line(self, total: float) -> str:
        """The summary line: ``total`` seconds (the run's ``elapsed``) and every lap, in
        minutes."""
        laps = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in self.seconds.items())
        return f"time: {total / 60:.1f} min ({laps}; minutes)"
