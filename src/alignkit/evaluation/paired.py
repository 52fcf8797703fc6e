"""Two policies compared prompt by prompt: when both answered the same prompts with the same
seed, the per-prompt differences cancel how hard each prompt is, so the standard error of the
mean difference is far smaller than that of either mean, and a difference is judged against
its own noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

# |mean difference| >= this many paired standard errors: "beyond noise"
NOISE_THRESHOLD = 3.0


def standard_error(values) -> float:
    """The standard error of the mean of ``values`` (a 1-D tensor, one score per prompt):
    sample std / sqrt(n); 0.0 for fewer than two values."""
    n = values.numel()
    return float(values.std() / math.sqrt(n)) if n > 1 else 0.0


def paired_difference(policy: Sequence[float], baseline: Sequence[float],
                      threshold: float = NOISE_THRESHOLD) -> dict:
    """Per-prompt scores of a policy and of a baseline on the same prompts, in the same order
    -> the paired comparison of their means.

    With d_i = policy_i - baseline_i over the n prompts:

    - ``mean``: the mean difference, (1/n) sum d_i (= mean(policy) - mean(baseline));
    - ``sd``: the sample standard deviation of the d_i, sqrt(sum (d_i - mean)^2 / (n - 1));
    - ``se``: the paired standard error of ``mean``, sd / sqrt(n);
    - ``beyond_noise``: |mean| >= ``threshold`` x se (and mean != 0: a policy against itself
      is never beyond noise); with se = 0 (every d_i the same) any non-zero mean is;
    - ``direction``: "higher" or "lower" (the policy's mean against the baseline's) when beyond
      noise, else None;
    - ``n``: the number of prompts.

    With fewer than two prompts ``sd`` and ``se`` are None and nothing is beyond noise."""
    if len(policy) != len(baseline):
        raise ValueError(f"{len(policy)} policy scores against {len(baseline)} baseline scores: "
                         "a paired comparison needs the same prompts")
    if not policy:
        raise ValueError("no prompts to compare")
    d = [float(a) - float(b) for a, b in zip(policy, baseline)]
    n = len(d)
    mean = math.fsum(d) / n
    if n < 2:
        return {"mean": mean, "sd": None, "se": None, "n": n, "beyond_noise": False,
                "direction": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    beyond = mean != 0.0 and abs(mean) >= threshold * se
    return {"mean": mean, "sd": sd, "se": se, "n": n, "beyond_noise": beyond,
            "direction": ("higher" if mean > 0 else "lower") if beyond else None}

