"""Direct preference optimisation losses: pure functions of summed response log-probabilities.

Notation, per comparison (chosen ``c``, rejected ``r``): ``log pi(y|x)`` is the policy's log-prob
of the whole response, summed over its tokens, ``log pi_ref(y|x)`` the reference's, and

    h = [log pi(c) - log pi_ref(c)] - [log pi(r) - log pi_ref(r)]

the difference of the two log-ratios. The implicit rewards are ``beta * (log pi(y) - log
pi_ref(y))`` (Rafailov et al. 2023, sec. 5). Losses, by ``loss_type``:

- ``sigmoid`` (DPO, Eq. 7 of Rafailov et al. 2023): ``-log sigma(beta h)``; with label smoothing
  eps it is conservative DPO (cDPO, Mitchell 2023): ``-(1-eps) log sigma(beta h) - eps log
  sigma(-beta h)``, the expected DPO loss when a label is flipped with probability eps. A tie
  (label 1/2) is the same expression with eps = 1/2.
- ``ipo`` (Azar et al. 2023, Eq. 17): ``(h - 1/(2 beta))^2`` where the log-probs are averaged over
  the response's tokens (as the IPO authors and TRL do; pass per-token means).
- ``hinge`` (SLiC-HF, Zhao et al. 2023, Eq. 2 with the calibration term only): ``max(0, 1 - beta h)``.
- ``robust`` (rDPO, Chowdhury et al. 2024, Eq. 8): ``[-(1-eps) log sigma(beta h) + eps log
  sigma(-beta h)] / (1 - 2 eps)``, an unbiased estimate of the clean DPO loss under label noise
  eps < 1/2.

A ``margin`` (per comparison) is an offset the chosen response must win by: ``beta h - margin``
inside the sigmoid losses (ODPO, Amini et al. 2024, Eq. 7) and ``1/(2 beta) + margin`` as the
IPO target. ``reference_free`` drops the reference (its log-probs taken as 0). RPO (Pang et al.
2024) adds ``alpha * NLL(chosen)``: see ``rpo_term``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None,
             beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             margin: torch.Tensor | float | None = None, labels: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-comparison DPO-family losses and implicit rewards.

    policy_*_logps, ref_*_logps: (B,) response log-probs (summed over tokens; per-token means for
    ``ipo``); ref_* None means reference-free. beta > 0. label_smoothing eps: cDPO for
    ``sigmoid`` (eps in [0, 0.5]), the assumed flip rate for ``robust`` (eps in [0, 0.5)).
    labels: (B,) probability that "chosen" is better (1, or 0.5 for a tie; ``sigmoid`` only).
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), float32; the rewards are
    detached."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    chosen_ratio = policy_chosen_logps.float()
    rejected_ratio = policy_rejected_logps.float()
    if ref_chosen_logps is not None:
        chosen_ratio = chosen_ratio - ref_chosen_logps.float()
        rejected_ratio = rejected_ratio - ref_rejected_logps.float()
    h = chosen_ratio - rejected_ratio
    offset = torch.zeros_like(h) if margin is None else (
        margin.float() if isinstance(margin, torch.Tensor) else torch.full_like(h, margin))
    logits = beta * h - offset
    if loss_type == "sigmoid":
        if not 0.0 <= label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
        y = torch.ones_like(h) if labels is None else labels.float()
        y = (1.0 - label_smoothing) * y + label_smoothing * (1.0 - y)
        losses = -y * F.logsigmoid(logits) - (1.0 - y) * F.logsigmoid(-logits)
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs a flip rate in [0, 0.5), got {label_smoothing}")
        eps = label_smoothing
        losses = (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) \
            / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - logits)
    else:  # ipo
        losses = (h - (1.0 / (2.0 * beta) + offset)) ** 2
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def rpo_term(chosen_token_nll_sum: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-comparison NLL of the chosen response, averaged over its tokens (RPO, Pang et al. 2024,
    Eq. 3: ``L = L_DPO + alpha * NLL(chosen) / |chosen|``).

    chosen_token_nll_sum: (B,) summed token NLL (= -log pi(c)); chosen_tokens: (B,) counts."""
    return chosen_token_nll_sum.float() / chosen_tokens.float().clamp(min=1.0)
