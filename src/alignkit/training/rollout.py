"""Rollouts: a policy answering tokenised prompts, for every trainer that samples (PPO and its
advantage estimators, online DPO, the reward normalisation refit). The one place the rollout
engine is chosen; today it is alignkit's own batched sampler (``generation.sampler``) under the
run's precision."""

from __future__ import annotations

from alignkit.generation.sampler import Rollout, SamplingConfig, sample
from alignkit.models.precision import autocast


def sampling_config(cfg) -> SamplingConfig:
    """The sampling flags of a stage (``--max-new-tokens``, ``--temperature``, ``--top-p``,
    ``--top-k`` where the stage has them)."""
    return SamplingConfig(cfg.max_new_tokens, cfg.temperature, getattr(cfg, "top_p", 1.0),
                          getattr(cfg, "top_k", 0))


def sample_rollout(model, prompt_ids: list[list[int]], tokenizer, sampling: SamplingConfig, *,
            device: str, precision: str, with_logprobs: bool = False,
            batch_size: int = 0, row_seeds: list[int] | None = None) -> Rollout:
    """One sampled response per prompt (repeat a prompt for several samples); the global torch
    RNG decides the draw, or each response's own seed (``row_seeds``)."""
    with autocast(device, precision):
        return sample(model, prompt_ids, tokenizer.pad_token_id, tokenizer.eos_token_id,
                      sampling, with_logprobs=with_logprobs, batch_size=batch_size,
                      row_seeds=row_seeds)
