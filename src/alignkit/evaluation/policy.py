"""How a policy behaves on held-out prompts: proxy reward, gold score, KL to a reference, length,
entropy. Shared by PPO's reward-hacking monitor, DPO's evaluation and the demo's comparison."""

from __future__ import annotations

from typing import Callable

import torch

from alignkit.generation.sampler import (Rollout, SamplingConfig, fixed_draw, response_logprobs,
                                         sample)
from alignkit.losses.ppo import kl_estimate, masked_mean
from alignkit.models.precision import autocast


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    return [tokenizer.decode([t for t, m in zip(row, mask) if m], skip_special_tokens=True).strip()
            for row, mask in zip(rollout.response.tolist(), rollout.response_mask.tolist())]


def logprobs_under(model, temperature: float = 1.0) -> Callable[[Rollout], torch.Tensor]:
    """``rollout -> (B, T)`` log-probs of its sampled responses under ``model`` (a frozen
    reference: KL of a policy's own samples to it, as ``measure_policy`` reports)."""

    def reference_logprobs(rollout: Rollout) -> torch.Tensor:
        return response_logprobs(model, rollout.query, rollout.query_mask, rollout.response,
                                 rollout.response_mask, temperature)["logprobs"]

    return reference_logprobs


@torch.no_grad()
def measure_policy(policy, tokenizer, texts: list, ids: list[list[int]], categories: list,
                   reference_logprobs: Callable[[Rollout], torch.Tensor] | None,
                   reward_fn=None, gold=None, sampling: SamplingConfig = SamplingConfig(),
                   seed: int = 0, device: str = "cpu", precision: str = "auto",
                   batch_size: int = 16, samples: int = 3) -> dict:
    """Sample one answer per prompt (a fixed draw: ``seed``, the caller's RNG untouched), then
    report the mean proxy reward (``reward_fn``), gold score (``gold``), KL to the reference in
    nats per response (k1 on the policy's own samples), response length in tokens, mean token
    entropy, the share of answers that ended, and a few samples. ``gold_se``: the standard error
    of the gold mean over prompts."""
    with fixed_draw(seed), autocast(device, precision):
        rollout = sample(policy, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, sampling,
                         with_logprobs=False, batch_size=batch_size)
    mask = rollout.response_mask.float()
    was = policy.training
    policy.eval()
    with autocast(device, precision):
        fwd = response_logprobs(policy, rollout.query, rollout.query_mask, rollout.response,
                                rollout.response_mask, sampling.temperature or 1.0,
                                with_entropy=True)
        ref = reference_logprobs(rollout) if reference_logprobs is not None else None
    policy.train(was)
    responses = decode_responses(tokenizer, rollout)
    row = {"response_length": float(mask.sum(1).mean()),
           "entropy": float(masked_mean(fwd["entropy"].float(), mask)),
           "ended_fraction": float(rollout.ended.float().mean()), "prompts": len(ids)}
    if ref is not None:
        row["kl"] = float((kl_estimate(fwd["logprobs"], ref, "k1") * mask).sum(1).mean())
    if reward_fn is not None:
        rewards = reward_fn(texts, responses)
        row["proxy"] = float(rewards["combined"].float().mean())
        # an ensemble's mean and member spread (std across members, averaged over prompts)
        if "mean" in rewards:
            row["proxy_mean"] = float(rewards["mean"].float().mean())
        if "std" in rewards:
            row["proxy_std"] = float(rewards["std"].float().mean())
    if gold is not None:
        scores = torch.tensor(gold.score(texts, responses, categories, rollout.ended.tolist()))
        row["gold"] = float(scores.mean())
        # standard error of that mean over prompts: how much of a change is noise
        row["gold_se"] = float(scores.std() / len(scores) ** 0.5) if len(scores) > 1 else 0.0
    row["samples"] = [{"prompt": t if isinstance(t, str) else t[-1]["content"], "response": r,
                       "ended": bool(e)}
                      for t, r, e in zip(texts[:samples], responses[:samples],
                                         rollout.ended.tolist()[:samples])]
    return row
