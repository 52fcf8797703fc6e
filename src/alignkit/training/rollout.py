"""Rollouts: a policy answering tokenised prompts, for every trainer that samples (PPO and its
advantage estimators, online DPO, the reward normalisation refit). The one place the rollout
engine is used: alignkit's own batched sampler (``generation.sampler``) under the run's
precision, or a colocated vLLM engine (``--rollout-engine vllm``) that takes the policy's weights
before it samples."""

from __future__ import annotations

from alignkit.generation.sampler import Rollout, SamplingConfig, sample
from alignkit.generation.vllm_engine import engine_for
from alignkit.models.lora import is_lora
from alignkit.models.precision import autocast


def sampling_config(cfg) -> SamplingConfig:
    """The sampling flags of a stage (``--max-new-tokens``, ``--temperature``, ``--top-p``,
    ``--top-k`` where the stage has them)."""
    return SamplingConfig(cfg.max_new_tokens, cfg.temperature, getattr(cfg, "top_p", 1.0),
                          getattr(cfg, "top_k", 0))


def rollout_engine(cfg, policy):
    """The engine ``--rollout-engine`` asks for, serving the trained ``policy`` (started from
    ``--model``) and following its updates; None for alignkit's own sampler."""
    return engine_for(cfg, cfg.model, follow_updates=True,
                      lora_rank=cfg.lora_r if is_lora(policy) else 0)


def rollout_engine_stats(engine) -> dict:
    """What a step logs about its engine: the weight pushes so far and their total seconds."""
    if engine is None:
        return {}
    return {"rollout_pushes": engine.stats["pushes"], "rollout_push_s": engine.stats["push_s"]}


def sample_rollout(model, prompt_ids: list[list[int]], tokenizer, sampling: SamplingConfig, *,
            device: str, precision: str, with_logprobs: bool = False,
            batch_size: int = 0, row_seeds: list[int] | None = None,
            engine=None) -> Rollout:
    """One sampled response per prompt (repeat a prompt for several samples); the global torch
    RNG decides the draw, or each response's own seed (``row_seeds``). ``engine``: the rollout
    engine (None: the own sampler on ``model``)."""
    with autocast(device, precision):
        return sample(model, prompt_ids, tokenizer.pad_token_id, tokenizer.eos_token_id,
                      sampling, with_logprobs=with_logprobs, batch_size=batch_size,
                      row_seeds=row_seeds, engine=engine)
