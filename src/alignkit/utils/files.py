"""Files a stage writes whole: written to a temporary file beside the target and renamed into
place, so an interrupted run leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename; creates the
    parent folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(out)
    return out


def write_jsonl_atomic(records: Iterable[dict], path: str | os.PathLike,
                       default: Callable[[Any], Any] | None = None) -> Path:
    """One JSON line per record, written atomically (``write_text_atomic``); ``default``
    serialises values JSON has no type for."""
    return write_text_atomic(path, "".join(json.dumps(rec, default=default) + "\n"
                                           for rec in records))
