"""Supervised fine-tuning loss: token-level negative log-likelihood of the demonstration.

L = -(1/N) * sum_t log p(y_t | y_<t, x) over the N target tokens of a whole optimiser step
(Ouyang et al. 2022, SFT stage). Normalising by the step's token count (not per micro-batch)
makes gradient accumulation exact: batch 8 x accumulation 1 equals batch 1 x accumulation 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood.

    logits: (N, V) scores for N positions; targets: (N,) token ids. Returns (N,) float32 nll."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def sft_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed nll over target tokens and their count.

    logits: (N, V); targets: (N,) with ``IGNORE`` (-100) at positions that carry no loss.
    Returns (scalar sum, number of target tokens). Divide the sum by the step's total count."""
    keep = targets != IGNORE
    count = int(keep.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    if count == targets.numel():  # already selected: no second copy of the (N, V) logits
        return token_nll(logits, targets).sum(), count
    return token_nll(logits[keep], targets[keep]).sum(), count
