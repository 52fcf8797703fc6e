"""Reward-model losses, ensemble and aspect combinations, and reward-model metrics.

Pure functions of tensors. Notation: ``d = r_chosen - r_rejected - margin`` for a comparison, and
``sigma`` is the logistic function.

- Bradley-Terry (Bradley & Terry 1952) as a reward-model loss, Eq. 1 of Ouyang et al. 2022
  (InstructGPT): ``-log sigma(r_c - r_r)``; with a margin as in Eq. 2 of Touvron et al. 2023
  (Llama 2); with label smoothing as in conservative DPO (Mitchell 2023, "cDPO"): the observed
  label is taken to be flipped with probability eps.
- Ties are soft labels: ``y = 0.5`` gives ``-0.5 log sigma(d) - 0.5 log sigma(-d)``.
- Rankings: the Plackett-Luce likelihood (Plackett 1975, Luce 1959) as used for K-wise
  comparisons by Zhu, Jordan & Jiao 2023 ("Principled RLHF from pairwise or K-wise
  comparisons"), or all K(K-1)/2 pairs of a ranking kept together with each prompt weighing the
  same (InstructGPT, sec. 3.5).
- Ensembles: mean, worst case (WCO = min) and uncertainty-weighted (UWO = mean - lambda * var)
  of Coste et al. 2023 ("Reward Model Ensembles Help Mitigate Overoptimization", eqs. for WCO
  and UWO), plus ``mean - lambda * std`` (the same penalty in reward units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENSEMBLE_METHODS = ("mean", "min", "mean_minus_std", "mean_minus_var")


# ----------------------------------------------------------------------------- pairwise


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float | None = None, label_smoothing: float = 0.0,
                       labels: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-comparison Bradley-Terry negative log-likelihood.

    chosen_rewards, rejected_rewards: (B,) scalar rewards. margin: (B,) or a number, subtracted
    from the reward difference (Llama 2, Eq. 2): ``d = r_c - r_r - margin``. labels: (B,) or a
    number, the probability that "chosen" is the better response: 1 (default) for an ordinary
    comparison, 0.5 for a tie (a tie should carry margin 0). label_smoothing ``eps`` in [0, 0.5]
    moves the label towards 1/2 (cDPO): ``y' = (1 - eps) * y + eps * (1 - y)``. Returns (B,)
    float32 losses

        loss = -y' log sigma(d) - (1 - y') log sigma(-d)

    unreduced: reduce with ``weighted_mean`` (per-annotator weights) and ``per_prompt_weights``
    (each prompt weighs the same). eps = 0 is plain Bradley-Terry; eps = 0.5 (like a tie) is
    minimised at d = 0 with value ln 2.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    d = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        d = d - (margin.float() if isinstance(margin, torch.Tensor) else float(margin))
    if labels is None:
        y = torch.ones_like(d)
    else:
        y = (labels.float() if isinstance(labels, torch.Tensor) else torch.full_like(d, labels))
    y = (1.0 - label_smoothing) * y + label_smoothing * (1.0 - y)
    # -log sigma(d) = softplus(-d), numerically stable for large |d|
    return y * F.softplus(-d) + (1.0 - y) * F.softplus(d)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * loss) / sum(w) over (B,) losses; plain mean without weights. An empty batch or an
    all-zero weight vector gives 0 (still part of the graph, so ``backward`` works)."""
    if weights is None:
        return losses.mean() if losses.numel() else losses.sum() * 0.0
    w = weights.to(losses.dtype)
    total = w.sum()
    if float(total) == 0.0:
        return (losses * w).sum() * 0.0
    return (losses * w).sum() / total


def per_prompt_weights(group: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pair weights that make each prompt weigh the same (InstructGPT, sec. 3.5: the K(K-1)/2
    comparisons of one ranking are one batch element and their loss is averaged).

    group: (P,) long, the prompt (group) index of each comparison. weights: (P,) per-comparison
    weights (annotator reliability) or None for 1. Returns (P,) ``w_p / n_g(p)`` where ``n_g`` is
    the number of comparisons of p's group: ``weighted_mean(losses, per_prompt_weights(g))`` is the
    mean over prompts of each prompt's mean loss. For exact gradient accumulation sum
    ``losses * coef`` and ``coef`` over micro-batches and divide once per step."""
    counts = torch.bincount(group)
    w = torch.ones(group.shape, dtype=torch.float32, device=group.device) if weights is None \
        else weights.float()
    return w / counts[group].float()


# ----------------------------------------------------------------------------- rankings


def ranking_to_pairs(ranking) -> list[tuple[int, int]]:
    """All K(K-1)/2 (better, worse) index pairs of a ranking given best first (InstructGPT).

    ranking: a list (or 1-D tensor) of K response indices, best first. [2, 0, 1] ->
    [(2, 0), (2, 1), (0, 1)]: each earlier response beats each later one."""
    order = [int(i) for i in ranking]
    return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]


def plackett_luce_loss(rewards: torch.Tensor, ranking: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of full rankings under the Plackett-Luce model.

    rewards: (B, K) reward of each of K responses. ranking: (B, K) long, response indices best
    first. mask: (B, K) bool over ranking *positions*, True for the first k_b positions of a
    ranking of k_b <= K responses (the rest is padding; their indices may be anything in range
    or -1). Returns (B,) float32

        -log P(ranking) = -sum_{j < k} [ r_{pi_j} - log sum_{l = j}^{k-1} exp r_{pi_l} ]

    (Plackett 1975; Luce 1959; Zhu et al. 2023, sec. 4). For K = 2 this is the Bradley-Terry
    loss. The sum has k - 1 non-zero terms, so a longer ranking carries more nats; divide by
    k - 1 for a per-comparison scale."""
    if rewards.shape != ranking.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and ranking {tuple(ranking.shape)} "
                         "must have the same (B, K) shape")
    ordered = rewards.float().gather(1, ranking.clamp(min=0).long())
    if mask is None:
        mask = torch.ones_like(ordered, dtype=torch.bool)
    # a padded position contributes exp(-1e30) = 0 to every normaliser (finite, so no NaN grads)
    ordered = ordered.masked_fill(~mask, -1e30)
    normaliser = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)  # logsumexp over l >= j
    terms = torch.where(mask, ordered - normaliser, torch.zeros_like(ordered))
    return -terms.sum(1)


# ----------------------------------------------------------------------------- metrics


def pairwise_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                     n_bins: int = 10) -> dict[str, float]:
    """Held-out metrics of a reward model on (B,) comparisons where "chosen" won (leave ties out).

    accuracy: share with r_c > r_r, a tie r_c == r_r counting 1/2. log_loss: mean Bradley-Terry
    loss. ece: ``expected_calibration_error(sigmoid(r_c - r_r), 1)``. n: number of comparisons."""
    d = chosen_rewards.detach().float() - rejected_rewards.detach().float()
    if d.numel() == 0:
        return {"accuracy": float("nan"), "log_loss": float("nan"), "ece": float("nan"), "n": 0}
    accuracy = ((d > 0).float() + 0.5 * (d == 0).float()).mean()
    return {"accuracy": float(accuracy),
            "log_loss": float(F.softplus(-d).mean()),
            "ece": expected_calibration_error(torch.sigmoid(d), torch.ones_like(d), n_bins),
            "n": int(d.numel())}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = 10) -> float:
    """Top-label expected calibration error (Guo et al. 2017, Eq. 3) of binary predictions.

    probs: (N,) predicted P(label = 1); labels: (N,) 0/1. The prediction is the likelier label,
    its confidence ``max(p, 1 - p)``; a prediction of exactly 1/2 counts as half right. Predictions
    fall into ``n_bins`` equal-width confidence bins ((0, 1/M], (1/M, 2/M], ...) and

        ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|.

    For reward models pass ``sigmoid(r_c - r_r)`` with labels 1: the same number as if every
    pair were also shown the other way round."""
    p = probs.detach().double().flatten()
    y = labels.detach().double().flatten()
    if p.numel() == 0:
        return float("nan")
    conf = torch.maximum(p, 1.0 - p)
    correct = torch.where(p > 0.5, (y == 1).double(), (y == 0).double())
    correct = torch.where(p == 0.5, torch.full_like(p, 0.5), correct)
    bins = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).long()
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    return float((acc_sum - conf_sum).abs().sum() / p.numel())  # n_b/N * |acc_b - conf_b|


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2
    (the Mann-Whitney U statistic / (n_pos * n_neg), from average ranks).

    scores: (N,); labels: (N,) 1 = positive (for an ensemble: std as score, "the ensemble got
    this pair wrong" as positive). NaN when one class is absent."""
    s = scores.detach().double().flatten()
    y = labels.detach().flatten().bool()
    n_pos = int(y.sum())
    n_neg = int(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1.0) / 2.0  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- ensembles


def combine_ensemble(member_rewards: torch.Tensor, method: str = "mean",
                     lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the rewards of an ensemble of M reward models (Coste et al. 2023).

    member_rewards: (M, B). method: ``mean``; ``min`` (worst-case optimisation, WCO);
    ``mean_minus_var`` (uncertainty-weighted optimisation, UWO: mean - lam * variance, the
    paper's form); ``mean_minus_std`` (mean - lam * std: the penalty in reward units, so lam
    does not depend on the reward scale). Returns (combined (B,), mean (B,), std (B,)).

    std and variance are the *population* ones (divide by M): the members are the whole
    ensemble, not a sample from which to estimate a wider population; this is the intra-ensemble
    variance of Coste et al.; and it stays defined (0) for a one-member "ensemble", where the
    sample std would be NaN."""
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"unknown ensemble combination {method!r}; choose one of "
                         f"{', '.join(ENSEMBLE_METHODS)}")
    if member_rewards.dim() != 2 or member_rewards.shape[0] == 0:
        raise ValueError(f"member_rewards must be (M, B) with M >= 1, got "
                         f"{tuple(member_rewards.shape)}")
    r = member_rewards.float()
    mean = r.mean(0)
    var = r.var(0, unbiased=False)
    std = var.sqrt()
    if method == "mean":
        combined = mean
    elif method == "min":
        combined = r.min(0).values
    elif method == "mean_minus_std":
        combined = mean - lam * std
    else:
        combined = mean - lam * var
    return combined, mean, std


# ----------------------------------------------------------------------------- aspects


def _aspect(aspect_rewards: dict, name: str, role: str) -> torch.Tensor:
    if name not in aspect_rewards:
        raise ValueError(f"{role} names aspect {name!r}, but the reward model has "
                         f"{', '.join(sorted(aspect_rewards)) or 'no aspects'}")
    return aspect_rewards[name].float()


def gate_shortfall(aspect_rewards: dict[str, torch.Tensor],
                   floor: dict[str, float]) -> torch.Tensor:
    """(B,) the smallest ``r_g - floor_g`` over the gated aspects g (negative = a floor broken)."""
    gaps = [_aspect(aspect_rewards, g, "the floor") - float(f) for g, f in floor.items()]
    return torch.stack(gaps).min(0).values


def combine_aspects(aspect_rewards: dict[str, torch.Tensor], weights: dict[str, float],
                    floor: dict[str, float] | None = None,
                    gate_penalty: float = 1.0) -> torch.Tensor:
    """Combine named per-aspect rewards (each (B,), higher is better) into one (B,) reward.

    Weighted mode (no ``floor``): ``S = sum_a weights[a] * r_a`` over the aspects named in
    ``weights``. Constraint mode: ``floor`` maps gated aspects (say harmlessness) to a minimum;
    with ``v = min_g (r_g - floor_g)`` the shortfall of the worst gated aspect,

        combined = S                              if v >= 0 (every floor met)
        combined = min(S, v - gate_penalty)       if v <  0

    so below a floor nothing but the gated aspect can raise the reward (more helpfulness does not
    buy back harm), every violation scores below ``-gate_penalty``, and the rule is monotone:
    non-decreasing in every aspect's reward (weights must be >= 0, gate_penalty >= 0)."""
    if not weights:
        raise ValueError("aspect weights are empty: name at least one aspect and its weight")
    for name, w in weights.items():
        if w < 0:
            raise ValueError(f"aspect weight of {name!r} is {w}; weights must be >= 0 (rewards "
                             "are higher-is-better; a floor, not a negative weight, guards an "
                             "aspect)")
    if gate_penalty < 0:
        raise ValueError(f"gate_penalty must be >= 0, got {gate_penalty}")
    total = sum(float(w) * _aspect(aspect_rewards, a, "the weights") for a, w in weights.items())
    if not floor:
        return total
    v = gate_shortfall(aspect_rewards, floor)
    return torch.where(v >= 0, total, torch.minimum(total, v - gate_penalty))
