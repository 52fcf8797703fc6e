"""RL math for stage 3 (PPO and its relatives): pure functions of tensors.

Shapes: B sequences (rollouts), T response tokens (right-padded), ``mask`` (B, T) 1 for real
response tokens (up to and including EOS), 0 after. Everything is float32 and masked: a padded
position never changes a mean, a variance, an advantage or a loss.

References: Schulman et al. 2017 (PPO, clipped objective eq. 7), Schulman et al. 2016 (GAE),
Ziegler et al. 2019 (KL penalty and adaptive KL controller), Huang et al. 2024 ("The N
Implementation Details of RLHF with PPO"), Schulman 2020 ("Approximating KL divergence": k1, k2,
k3), Ahmadian et al. 2024 (RLOO), Shao et al. 2024 (GRPO), Hu 2025 (REINFORCE++).
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean")


# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over ``dim``, or everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def aggregate(x: torch.Tensor, mask: torch.Tensor, how: str = "token_mean") -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    - ``token_mean``: the mean over every real token of the batch (each token weighs the same;
      DAPO, Yu et al. 2025, eq. 8; TRL's ``dapo``);
    - ``sequence_mean``: the mean over sequences of each sequence's own token mean (each response
      weighs the same, whatever its length: GRPO, Shao et al. 2024, eq. 3). Sequences without a
      real token are left out.
    """
    if how == "token_mean":
        return masked_mean(x, mask)
    if how == "sequence_mean":
        m = mask.to(x.dtype)
        lengths = m.sum(1)
        has = (lengths > 0).to(x.dtype)
        per_sequence = (x * m).sum(1) / lengths.clamp(min=1.0)
        return (per_sequence * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown loss aggregation {how!r}; choose one of "
                     f"{', '.join(LOSS_AGGREGATIONS)}")


def aggregation_weight(mask: torch.Tensor, how: str = "token_mean") -> torch.Tensor:
    """What ``aggregate`` averages over in ``mask`` (B, T): its real tokens (``token_mean``) or
    its sequences with at least one real token (``sequence_mean``). A micro-batch's aggregated
    loss times its weight over the minibatch's weight sums to the minibatch's aggregate."""
    if how == "token_mean":
        return mask.to(torch.float32).sum()
    return (mask.to(torch.float32).sum(1) > 0).to(torch.float32).sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (unbiased) variance over the masked entries;
    ``shift_mean=False`` adds the mean back (reward whitening keeps the reward's sign; the N
    implementation details, sec. "reward normalisation"). Masked-out entries come back as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ----------------------------------------------------------------------------- KL


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the
    policy (Schulman 2020), with ``log r = ref_logp - logp``:

    - ``k1 = -log r`` (unbiased; negative on single tokens),
    - ``k2 = (log r)^2 / 2`` (biased, low variance),
    - ``k3 = (r - 1) - log r`` (unbiased, always >= 0).
    """
    log_ratio = ref_logp.float() - logp.float()
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """(B,) sequence scores and (B, T) per-token KL -> (B, T) rewards: ``-beta * kl_t`` at every
    response token and the score added at the last one (Ziegler et al. 2019, eq. 2; InstructGPT
    eq. 2 spread over tokens)."""
    mask = mask.to(torch.float32)
    rewards = -beta * kl.float() * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    has_tokens = mask.sum(1) > 0
    rewards[torch.arange(rewards.shape[0]), last] += torch.where(has_tokens, score.float(),
                                                                  torch.zeros_like(score.float()))
    return rewards


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, sec. 2.2: ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``beta <- beta * (1 + e * n_steps / horizon)`` after each batch of ``n_steps`` samples."""

    def __init__(self, value: float, target: float, horizon: int):
        super().__init__(value)
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ----------------------------------------------------------------------------- advantages


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V_{T}`` = 0 past the last real token),
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns ``A_t + V_t``. rewards, values, mask: (B, T).
    Returns (advantages, returns), both (B, T), zero on padding."""
    mask = mask.to(torch.float32)
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        # a padded position passes nothing back: the episode ended before it
        advantages[:, t] = adv * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        next_adv = advantages[:, t]
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor,
                       gamma: float = 1.0) -> torch.Tensor:
    """(B, T) ``G_t = sum_{s >= t} gamma^(s-t) r_s`` over real tokens (REINFORCE returns)."""
    mask = mask.to(torch.float32)
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros_like(out[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t].float() + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not form groups of {group_size} samples "
                         "of one prompt (need >= 2 per prompt, consecutive)")
    return scores.float().view(-1, group_size)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, eq. 5): with k samples per prompt
    (consecutive), ``A_i = r_i - mean_{j != i} r_j``. (B,) -> (B,)."""
    g = _groups(scores, group_size)
    baseline = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).flatten()


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4,
                    scale: bool = True) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, GRPO outcome supervision):
    ``A_i = (r_i - mean(group)) / (std(group) + eps)`` (``scale=False``: no division, as Dr. GRPO).
    std is the unbiased sample std of the group. (B,) -> (B,)."""
    g = _groups(scores, group_size)
    centred = g - g.mean(1, keepdim=True)
    if scale:
        centred = centred / (g.std(1, keepdim=True) + eps)
    return centred.flatten()


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor,
                            gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token-level rewards (score at the end, KL penalty per token) to
    discounted returns, then whitened over the whole batch (the global baseline). (B, T)."""
    return masked_whiten(discounted_returns(rewards, mask, gamma), mask)


# ----------------------------------------------------------------------------- losses


def truncated_is_weights(old_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights for tokens a rollout engine sampled with numerics
    other than the trainer's (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training", the TIS correction): ``w_t = min(pi_old(a_t) / pi_engine(a_t), C)``,
    so the policy gradient is taken under the trainer's distribution, the variance bounded by C.

    old_logp, engine_logp, mask: (B, T) -> (B, T) weights, 0 off the mask, no gradient."""
    with torch.no_grad():
        ratio = torch.exp(old_logp.float() - engine_logp.float())
        return torch.clamp(ratio, max=cap) * mask.to(ratio.dtype)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2,
                aggregation: str = "token_mean",
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), reduced by ``aggregate``:

        L = mean_t w_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)),  rho = exp(logp - old)

    logp, old_logp, advantages, mask: (B, T); ``is_weights`` (B, T): per-token importance
    weights w_t (``truncated_is_weights``; none: 1). Returns (loss, stats): ``clipfrac`` (share of
    tokens where the clipped term is the larger), ``ratio`` mean, and ``approx_kl``: KL(old ||
    new) per token by Schulman's k3 on tokens sampled from the old policy, ``(rho - 1) - log rho``
    (unbiased and >= 0; its expectation under the old policy is exactly the KL)."""
    log_ratio = logp.float() - old_logp.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
                 "approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask)),
                 "ratio": float(masked_mean(ratio, mask))}
    return loss, stats


def kl_penalty_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                    kind: str = "k3", aggregation: str = "token_mean") -> torch.Tensor:
    """The KL to the reference as a loss term instead of a reward penalty (GRPO, Shao et al.
    2024, eq. 4: ``D_KL = ref/pi - log(ref/pi) - 1`` per token, i.e. k3), differentiable in
    ``logp``. logp, ref_logp, mask: (B, T) -> scalar, reduced by ``aggregate``."""
    return aggregate(kl_estimate(logp, ref_logp.detach(), kind), mask, aggregation)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float = 0.2,
               aggregation: str = "token_mean") -> tuple[torch.Tensor, dict]:
    """Clipped value loss (the N implementation details, #9; OpenAI baselines):
    ``0.5 * mean max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``, the mean taken by
    ``aggregate``. All inputs (B, T). Returns (loss, stats) with ``vf_clipfrac``."""
    values = values.float()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(unclipped_err, clipped_err), mask, aggregation)
    with torch.no_grad():
        stats = {"vf_clipfrac": float(masked_mean((clipped_err > unclipped_err).float(), mask))}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy in nats of the softmax distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over real tokens (1: perfect critic; <= 0: useless)."""
    var_returns = float(masked_var(returns, mask))
    if var_returns == 0.0 or math.isnan(var_returns):
        return float("nan")
    return 1.0 - float(masked_var(returns - values, mask)) / var_returns
