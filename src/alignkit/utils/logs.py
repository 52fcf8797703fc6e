"""What a run prints: the ``alignkit`` logger (to stderr, so stdout stays for results), the
libraries' own chatter turned down, and the progress bar."""

from __future__ import annotations

import logging
import sys

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
