"""Numerics of a forward pass: which autocast ``--precision`` means on a device, and the context
that applies it. Torch is imported on use, so importing this module stays cheap."""

from __future__ import annotations

import contextlib


def uses_bf16(device: str, precision: str) -> bool:
    """Whether ``--precision`` on ``device`` means bf16 autocast."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


def uses_fp16(precision: str) -> bool:
    """Whether ``--precision`` means fp16 autocast (whose gradients need loss scaling)."""
    return precision == "fp16"


def autocast_dtype(device: str, precision: str):
    """The autocast dtype: bf16 on CUDA by default, fp16 when asked, none (fp32) on CPU by
    default (this CPU class has no fast bf16)."""
    import torch

    if uses_fp16(precision):
        return torch.float16
    return torch.bfloat16 if uses_bf16(device, precision) else None


def autocast(device: str, precision: str):
    """The autocast context of ``--precision`` on ``device`` (nothing for fp32). The weights stay
    fp32 either way: autocast computes in the low precision, the optimiser updates fp32."""
    import torch

    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
