"""Content digests for caches: a cached result is reused only when the digest of everything it
was computed from equals the digest stored beside it, so a hit is the same computation and never
merely a result of the same shape.

Every digest here reads every byte of what it covers (SHA-256, about 1.5 GB/s on one core):
sampling a few values, or trusting sizes and modification times, would miss a changed weight or a
re-quantised file of the same size, and the work a cache saves (a reference pass over a data set,
a GGUF conversion) costs far more than reading its inputs once.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from typing import Any, Callable, Iterable

CHUNK = 1 << 20


def json_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def update_with_ints(h, values: Iterable[int] | None) -> None:
    """Feed a list of integers into ``h``, length first (so no two different lists of lists
    feed the same bytes); None feeds a distinct marker."""
    if values is None:
        h.update(b"N")
        return
    packed = array("q", values)
    h.update(b"L" + len(packed).to_bytes(8, "little"))
    h.update(packed.tobytes())


def module_digest(module, skip: Callable[[str], bool] = lambda name: False) -> str:
    """SHA-256 over every parameter and buffer of a torch module (name, dtype, shape, every
    byte of the values), in registration order; ``skip(name)`` leaves a tensor out. A GPU model
    is copied to the CPU one tensor at a time."""
    import torch

    h = hashlib.sha256()
    for kind, named in (("parameter", module.named_parameters()),
                        ("buffer", module.named_buffers())):
        for name, tensor in named:
            if skip(name):
                continue
            t = tensor.detach()
            h.update(f"{kind} {name} {t.dtype} {tuple(t.shape)}\n".encode())
            raw = t.reshape(-1).contiguous().cpu().view(torch.uint8)
            h.update(raw.numpy())
    return h.hexdigest()
