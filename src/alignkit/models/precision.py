"""Numerics of a forward pass: whether ``--precision`` means bf16 autocast, and the context that
applies it. Torch is imported on use, so importing this module stays cheap."""

from __future__ import annotations

import contextlib


def uses_bf16(device: str, precision: str) -> bool:
    """Whether ``--precision`` on ``device`` means bf16 autocast."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


def autocast(device: str, precision: str):
    """bf16 autocast on CUDA by default; fp32 on CPU (this CPU class has no fast bf16)."""
    import torch

    if not uses_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
