"""Numerics of a forward pass: which autocast ``--precision`` means on a device, and the context
that applies it. Torch is imported on use, so importing this module stays cheap."""

from __future__ import annotations

import contextlib


def uses_bf16(device: str, precision: str) -> bool:
    """Whether ``--precision`` on ``device`` means bf16 autocast. ``auto`` is bf16 on CUDA
    only: on 2 cores of a Xeon with AMX, bf16 autocast decoded 1.3-1.8x and scored up to 2.3x
    faster than fp32, yet a LoRA PPO step of the demo took as long (its batch-16 rollouts ran at 58
    against 90 tokens/s) and the demo's reward ensemble learned less (0.745 against 0.773
    held-out accuracy); on a Xeon with AVX-512 and no AMX, bf16 decoded 1.3-2.2x and scored
    2.8x slower than fp32."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


def uses_fp16(precision: str) -> bool:
    """Whether ``--precision`` means fp16 autocast (whose gradients need loss scaling)."""
    return precision == "fp16"


def autocast_dtype(device: str, precision: str):
    """The autocast dtype: bf16 on CUDA by default, fp16 when asked, none (fp32) on CPU by
    default (``uses_bf16``)."""
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


def numerics_name(device: str, precision: str) -> str:
    """What ``--precision`` resolves to on ``device``: ``bf16``, ``fp16`` or ``fp32`` (``auto``
    stays ``auto`` in config.yaml; the run's set-up row records this)."""
    if uses_fp16(precision):
        return "fp16"
    return "bf16" if uses_bf16(device, precision) else "fp32"
