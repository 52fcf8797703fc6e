"""Run set-up shared by every stage: output folder rules, device and numerics, progress bar."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from alignkit.errors import UserError

log = logging.getLogger("alignkit")


# what stages cache inside their output folder (recomputed when missing)
OUTPUT_CACHES = ("reference_logps.pt", "reference_logps.pt.tmp")


def prepare_output(cfg) -> Path:
    """Refuse to clobber an earlier run unless --resume or --overwrite."""
    import shutil

    out = Path(cfg.output)
    existing = out.exists() and any((out / n).exists() for n in ("checkpoints", "final",
                                                                 "metrics.jsonl"))
    resume = getattr(cfg, "resume", False)
    if existing and not (resume or cfg.overwrite):
        raise UserError(f"{out}: holds an earlier run; pass --resume to continue it or "
                        "--overwrite to replace it")
    if out.exists() and cfg.overwrite and not resume:
        # caches go too: a replaced run must not start from what the earlier one computed
        for name in ("checkpoints", "final", "metrics.jsonl", "tensorboard", *OUTPUT_CACHES):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def uses_bf16(device: str, precision: str) -> bool:
    """Whether ``--precision`` on ``device`` means bf16 autocast."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


def autocast(device: str, precision: str):
    """bf16 autocast on CUDA by default; fp32 on CPU (this CPU class has no fast bf16)."""
    import torch

    if not uses_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, file=sys.stderr)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "peft", "datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def make_optimizer(params, cfg):
    """AdamW; the fused kernel (one pass over all parameters) where this torch has it."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_step(params, optimizer, scheduler, max_grad_norm: float) -> tuple[float, float]:
    """Clip (when max_grad_norm > 0), step, advance the schedule, clear gradients.
    Returns (gradient norm before clipping, learning rate used)."""
    import torch

    grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
                 if max_grad_norm > 0 else 0.0)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr
