"""How a policy behaves on held-out prompts: proxy reward, gold score, KL to a reference, length,
entropy. Shared by PPO's reward-hacking monitor, DPO's evaluation and the demo's comparison."""

from __future__ import annotations

from typing import Callable

import torch

from alignkit.evaluation.paired import standard_error
from alignkit.generation.sampler import (SAMPLING_BATCH, Rollout, SamplingConfig,
                                         response_logprobs, row_seed, sample)
from alignkit.losses.ppo import kl_estimate
from alignkit.models.precision import autocast, autocast_dtype
from alignkit.utils.distributed import World, gather_shares, share


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
                   batch_size: int = 16, samples: int = 3, world: World = World(),
                   engine=None, progress: str | None = None, per_prompt: bool = False,
                   sampling_batch: int = SAMPLING_BATCH) -> dict:
    """Sample one answer per prompt (prompt i draws from its own stream, seeded by (``seed``,
    i): the same answers at every call and whatever the batch, the caller's RNG untouched),
    then report the mean proxy reward (``reward_fn``), gold score (``gold``), KL to the
    reference in nats per response (k1 on the policy's own samples), response length in tokens,
    mean token entropy, the share of answers that ended, and a few samples. ``gold_se``: the
    standard error of the gold mean over prompts. ``per_prompt``: also ``gold_per_prompt``, the
    gold score of each prompt's answer in prompt order (two policies measured with the same
    prompts and seed compare prompt by prompt: ``evaluation.paired``), and likewise
    ``proxy_per_prompt`` (with ``reward_fn``), ``length_per_prompt`` and ``ended_per_prompt``.

    Under torchrun (``world``) each process samples and scores its contiguous share of the
    prompts and the per-prompt results are gathered, so every process returns the same row,
    the one a single process computes (up to float rounding). ``engine``: a rollout engine that
    writes the answers (entropy and KL stay ``policy``'s own numbers). ``progress``: the
    description of a progress bar on stderr over the answers (None: none; under torchrun the
    first process shows its own share). ``sampling_batch`` answers are decoded at once, and the
    log-probs, entropy and KL are computed ``batch_size`` answers at a time (their logits span
    the vocabulary)."""
    if not ids:
        raise ValueError("no prompts to measure the policy on")
    mine = share(list(range(len(ids))), world)
    per_prompt = (_measure_prompts(policy, tokenizer, texts, ids, categories, mine,
                                   reference_logprobs, reward_fn, gold, sampling, seed, device,
                                   precision, batch_size, sampling_batch, engine,
                                   progress if world.is_main else None) if mine else [])
    every = gather_shares(per_prompt, world)
    tokens = sum(p["length"] for p in every)
    row = {"response_length": tokens / len(every),
           "entropy": sum(p["entropy"] for p in every) / max(tokens, 1.0),
           "ended_fraction": sum(p["ended"] for p in every) / len(every), "prompts": len(ids)}
    for key in ("kl", "proxy", "proxy_mean", "proxy_std"):
        if key in every[0]:
            row[key] = sum(p[key] for p in every) / len(every)
    if gold is not None:
        scores = torch.tensor([p["gold"] for p in every], dtype=torch.float64)
        row["gold"] = float(scores.mean())
        # standard error of that mean over prompts: how much of a change is noise
        row["gold_se"] = standard_error(scores)
        if per_prompt:
            row["gold_per_prompt"] = scores.tolist()
    if per_prompt:
        for key in ("proxy", "length", "ended"):
            if key in every[0]:
                row[f"{key}_per_prompt"] = [p[key] for p in every]
    row["samples"] = [{"prompt": t if isinstance(t, str) else t[-1]["content"],
                       "response": p["response"], "ended": p["ended"]}
                      for t, p in zip(texts[:samples], every[:samples])]
    return row


def _measure_prompts(policy, tokenizer, texts, ids, categories, rows: list[int],
                     reference_logprobs, reward_fn, gold, sampling: SamplingConfig, seed: int,
                     device: str, precision: str, batch_size: int, sampling_batch: int,
                     engine=None,
                     progress: str | None = None) -> list[dict]:
    """``measure_policy``'s numbers for the prompts ``rows``, one dict per prompt."""
    # the own sampler hands over the policy's log-probs and entropy from its decoding pass
    # when they equal a full forward's (fp32: to 1e-5). An engine's are its own numerics, and
    # under bf16/fp16 autocast the step-by-step decode rounds otherwise than the reference's
    # full forward (an identical policy would read a KL of rounding): the policy computes
    # them again, as the reference does.
    from_decoding = engine is None and autocast_dtype(device, precision) is None
    with autocast(device, precision):
        rollout = sample(policy, [ids[i] for i in rows], tokenizer.pad_token_id,
                         tokenizer.eos_token_id, sampling, with_logprobs=False,
                         batch_size=sampling_batch,
                         row_seeds=[row_seed(seed, i) for i in rows],
                         engine=engine, progress=progress, with_decode_stats=from_decoding)
    mask = rollout.response_mask.float()
    was = policy.training
    policy.eval()
    logprobs, entropy, ref_parts = [], [], []
    # batch by batch: the logits of every answer at once (answers x tokens x vocabulary) would
    # take gigabytes for a few hundred answers. Answers of like length share a batch (a batch
    # is as wide as its longest prompt and answer), then go back to prompt order
    order = torch.argsort(rollout.attention_mask.sum(1), stable=True)
    for start in range(0, len(rows), batch_size):
        part = rollout.select(order[start:start + batch_size])
        with autocast(device, precision):
            if rollout.entropy is None:
                fwd = response_logprobs(policy, part.query, part.query_mask, part.response,
                                        part.response_mask, sampling.temperature or 1.0,
                                        with_entropy=True)
                logprobs.append(fwd["logprobs"])
                entropy.append(fwd["entropy"])
            if reference_logprobs is not None:
                ref_parts.append(reference_logprobs(part))
    back = torch.argsort(order)
    fwd = ({"logprobs": rollout.logprobs, "entropy": rollout.entropy}
           if rollout.entropy is not None else
           {"logprobs": torch.cat(logprobs)[back], "entropy": torch.cat(entropy)[back]})
    ref = torch.cat(ref_parts)[back] if ref_parts else None
    policy.train(was)
    responses = decode_responses(tokenizer, rollout)
    ended = rollout.ended.tolist()
    out = [{"length": float(n), "entropy": float(e), "ended": bool(d), "response": r}
           for n, e, d, r in zip(mask.sum(1).tolist(), (fwd["entropy"].float() * mask).sum(1)
                                 .tolist(), ended, responses)]
    if ref is not None:
        kl = (kl_estimate(fwd["logprobs"], ref, "k1") * mask).sum(1)
        for p, v in zip(out, kl.tolist()):
            p["kl"] = v
    texts_mine = [texts[i] for i in rows]
    if reward_fn is not None:
        rewards = reward_fn(texts_mine, responses)
        # an ensemble's mean and member spread (std across members, averaged over prompts)
        for key, name in (("combined", "proxy"), ("mean", "proxy_mean"), ("std", "proxy_std")):
            if key in rewards:
                for p, v in zip(out, rewards[key].float().tolist()):
                    p[name] = v
    if gold is not None:
        scores = gold.score(texts_mine, responses, [categories[i] for i in rows], ended)
        for p, v in zip(out, scores):
            p["gold"] = float(v)
    return out
