"""Win rate of a policy against a baseline by any pairwise judge, with a bootstrap interval.

Method (what ``alignkit eval`` reports):

1. Both policies answer the same held-out prompts (one answer each, the same sampling seed).
2. A judge (``alignkit.judges.base.Judge``) compares them per prompt, the policy's answer as
   response A. Each prompt scores 1 for a win, 1/2 for a tie, 0 for a loss; the win rate is the
   mean over prompts. Identical answers from a deterministic judge are ties, so a policy
   compared with itself scores exactly 0.5.
3. The interval is a percentile bootstrap over prompts: draw ``n`` prompts with replacement
   (``n`` = the number of prompts), take the mean outcome, repeat ``resamples`` times with a
   seeded generator (``numpy.random.default_rng(seed)``), and report the ``(1 - c) / 2`` and
   ``(1 + c) / 2`` quantiles of those means (inverted-CDF quantiles: always one of the
   resampled values). Outcomes take only the values 0, 1/2 and 1, so the bootstrap
   distribution is also available exactly (:func:`exact_bootstrap_distribution`, a trinomial
   convolution); the tests check the Monte Carlo interval against it and against a hand count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from alignkit.judges.base import Judge, Verdict, judge_many
from alignkit.utils.distributed import World, gather_shares, share

OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}


def outcomes_of(verdicts: Sequence[Verdict]) -> list[float]:
    """Verdicts with the policy as response A -> 1 (win), 0.5 (tie), 0 (loss)."""
    return [OUTCOME[v.winner] for v in verdicts]


def bootstrap_interval(outcomes: Sequence[float], resamples: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``outcomes`` (resampling prompts)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    x = np.asarray(outcomes, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(lo), float(hi)


def exact_bootstrap_distribution(outcomes: Sequence[float]) -> dict[float, float]:
    """The exact distribution of a bootstrap resample's mean for outcomes in {0, 1/2, 1}:
    a resample's sum in half-points is a sum of ``n`` independent draws of 0, 1 or 2 half-points
    with the observed frequencies, i.e. the coefficients of ``(p0 + p1 x + p2 x^2) ** n``.
    Returns ``{mean: probability}``."""
    halves = [round(2 * o) for o in outcomes]
    if any(h not in (0, 1, 2) or abs(2 * o - h) > 1e-9 for o, h in zip(outcomes, halves)):
        raise ValueError("exact bootstrap needs outcomes in {0, 0.5, 1}")
    n = len(halves)
    step = np.array([halves.count(k) / n for k in (0, 1, 2)])
    dist = np.ones(1)
    for _ in range(n):
        dist = np.convolve(dist, step)
    return {k / (2 * n): float(p) for k, p in enumerate(dist) if p > 0}


def exact_interval(outcomes: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Inverted-CDF quantiles of :func:`exact_bootstrap_distribution` (what the Monte Carlo
    interval converges to as resamples grow)."""
    alpha = (1.0 - confidence) / 2.0
    cdf, lo, hi = 0.0, None, None
    for mean, p in sorted(exact_bootstrap_distribution(outcomes).items()):
        cdf += p
        if lo is None and cdf >= alpha - 1e-12:
            lo = mean
        if hi is None and cdf >= 1.0 - alpha - 1e-12:
            hi = mean
    return float(lo), float(hi)


@dataclass
class WinRate:
    win_rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    confidence: float
    resamples: int

    def as_dict(self) -> dict:
        return {"win_rate": self.win_rate, "win_rate_low": self.low, "win_rate_high": self.high,
                "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "confidence": self.confidence, "resamples": self.resamples}


def win_rate(judge: Judge, prompts: Sequence[Any], policy_responses: Sequence[Any],
             baseline_responses: Sequence[Any], resamples: int = 2000,
             confidence: float = 0.95, seed: int = 0, world: World = World()) -> WinRate:
    """The policy's win rate against the baseline (policy = response A), ties 1/2, with a
    percentile-bootstrap interval over prompts (see the module docstring). Under torchrun
    (``world``) each process judges its contiguous share of the prompts; the verdicts are
    gathered in prompt order, so every process reports the same win rate."""
    mine = [share(list(x), world) for x in (prompts, policy_responses, baseline_responses)]
    verdicts = gather_shares(judge_many(judge, *mine) if mine[0] else [], world)
    outcomes = outcomes_of(verdicts)
    if not outcomes:
        return WinRate(math.nan, math.nan, math.nan, 0, 0, 0, confidence, resamples)
    lo, hi = bootstrap_interval(outcomes, resamples, confidence, seed)
    return WinRate(sum(outcomes) / len(outcomes), lo, hi,
                   sum(v.winner == "a" for v in verdicts), sum(v.winner == "tie" for v in verdicts),
                   sum(v.winner == "b" for v in verdicts), confidence, resamples)
