"""Gao et al.'s functional forms of reward over-optimisation ("Scaling Laws for Reward Model
Overoptimization", 2022, eqs. 1-2): the gold reward gained as the policy moves away from its
start, as a function of ``d = sqrt(KL(pi || pi_init))`` (nats):

- best-of-n:  R_bon(d) = d * (alpha - beta * d)
- RL:         R_rl(d)  = d * (alpha - beta * log d)

Both are linear in (alpha, beta), so a fit is one least-squares solve through the origin
(R(0) = 0: the gain is measured from the starting policy's gold). The peak of each form — where
more optimisation starts to cost gold — follows in closed form: ``d* = alpha / (2 beta)`` for
best-of-n and ``d* = exp(alpha / beta - 1)`` for RL (``beta > 0``; no peak otherwise)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FORMS = ("bon", "rl")


@dataclass(frozen=True)
class GaoFit:
    """A fitted form: its coefficients, R^2 on the fitted points, and its peak (``None`` when
    the fitted curve never turns down, ``beta <= 0``)."""

    form: str
    alpha: float
    beta: float
    r2: float
    points: int
    peak_d: float | None
    peak_gain: float | None

    def predict(self, d: torch.Tensor) -> torch.Tensor:
        return gao_curve(d, self.alpha, self.beta, self.form)


def gao_curve(d: torch.Tensor, alpha: float, beta: float, form: str) -> torch.Tensor:
    """(N,) sqrt-KL distances -> (N,) the form's gold gain (``0`` at ``d = 0``)."""
    d = d.double()
    if form == "bon":
        return d * (alpha - beta * d)
    if form == "rl":
        log_d = torch.where(d > 0, d.clamp(min=1e-300).log(), torch.zeros_like(d))
        return d * (alpha - beta * log_d)
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _features(d: torch.Tensor, form: str) -> torch.Tensor:
    """(N,) -> (N, 2) columns that multiply (alpha, beta)."""
    if form == "bon":
        return torch.stack([d, -d * d], dim=1)
    log_d = torch.where(d > 0, d.clamp(min=1e-300).log(), torch.zeros_like(d))
    return torch.stack([d, -d * log_d], dim=1)


def fit_gao(d: torch.Tensor, gain: torch.Tensor, form: str) -> GaoFit:
    """Least-squares (alpha, beta) of ``form`` through (d_i, gain_i).

    d: (N,) sqrt-KL from the starting policy (>= 0); gain: (N,) gold minus the starting
    policy's gold. Needs at least two points with d > 0 that are not collinear in the form's
    features. R^2 is 1 - SS_res / SS_tot about the mean gain (can be negative for a poor fit)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d, gain = d.double().flatten(), gain.double().flatten()
    if d.shape != gain.shape:
        raise ValueError(f"{d.numel()} distances but {gain.numel()} gains")
    if bool((d < 0).any()) or not bool(torch.isfinite(d).all() & torch.isfinite(gain).all()):
        raise ValueError("distances must be finite and >= 0, gains finite")
    x = _features(d, form)
    if int((d > 0).sum()) < 2 or int(torch.linalg.matrix_rank(x)) < 2:
        raise ValueError("a fit needs at least two distinct distances above 0")
    coef = torch.linalg.lstsq(x, gain[:, None]).solution[:, 0]
    alpha, beta = float(coef[0]), float(coef[1])
    residual = gain - x @ coef
    total = ((gain - gain.mean()) ** 2).sum()
    r2 = 1.0 - float((residual ** 2).sum() / total) if float(total) > 0 else \
        (1.0 if float((residual ** 2).sum()) == 0 else 0.0)
    peak_d = peak_gain = None
    if beta > 0:
        peak_d = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
        if peak_d > 0:
            peak_gain = float(gao_curve(torch.tensor([peak_d]), alpha, beta, form)[0])
        else:
            peak_d = None
    return GaoFit(form, alpha, beta, r2, int(d.numel()), peak_d, peak_gain)
