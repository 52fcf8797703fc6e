"""PPO and its advantage estimators on a policy: the policy with its value head (and critic),
the reference's log-probs, the value model's start, the reward normalisation refit, one batch
of experience (sample, score, KL, advantages) and the clipped update over it (Ouyang et al.
2022; Ziegler et al. 2019; Huang et al. 2024, "The N Implementation Details of RLHF with PPO").
The math lives in ``alignkit.losses.ppo``.

``cfg`` is a ``PPOConfig``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.data.prompts import Prompts
from alignkit.errors import UserError
from alignkit.evaluation.policy import decode_responses
from alignkit.generation.sampler import (Rollout, concat_rollouts, fixed_draw,
                                         response_logprobs, row_seed)
from alignkit.losses import ppo as rl
from alignkit.models import checkpoint as ckpt
from alignkit.models.lm import hidden_states
from alignkit.models.lora import is_lora
from alignkit.models.precision import autocast
from alignkit.training.rollout import rollout_engine_stats, sample_rollout, sampling_config
from alignkit.utils.distributed import World, gather_objects, share


# ----------------------------------------------------------------------------- parts


class PolicyAndValue(nn.Module):
    """Everything that trains, in one module so that one checkpoint holds it: the policy (LoRA
    adapters or all weights), the value head, and with ``--critic separate`` the critic's own
    backbone (a copy of the starting policy's decoder)."""

    def __init__(self, policy: nn.Module, value_head: nn.Module | None,
                 critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic = critic


def critic_values(parts: PolicyAndValue, rollout: Rollout) -> torch.Tensor:
    """(B, T) values of a separate critic (its own backbone + head)."""
    ids, mask = rollout.input_ids, rollout.attention_mask
    hidden = hidden_states(parts.critic, ids, mask, (mask.cumsum(1) - 1).clamp(min=0))
    lq, t = rollout.query.shape[1], rollout.response.shape[1]
    return parts.value_head(hidden[:, lq - 1:lq - 1 + t]).squeeze(-1).float() \
        * rollout.response_mask


def policy_forward(parts: PolicyAndValue, rollout: Rollout, cfg,
                   with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs (and entropy, and values) of the rollout's tokens under the current policy: the
    one forward the loss and the rollout's "old" log-probs share."""
    shared = parts.value_head is not None and parts.critic is None
    out = response_logprobs(parts.policy, rollout.query, rollout.query_mask, rollout.response,
                            rollout.response_mask, cfg.temperature or 1.0, with_entropy,
                            parts.value_head if shared else None)
    if parts.critic is not None:
        out["values"] = critic_values(parts, rollout)
    return out


@torch.no_grad()
def reference_logprobs(parts: PolicyAndValue, reference: nn.Module | None, rollout: Rollout,
                       cfg) -> torch.Tensor:
    """The frozen reference's log-probs: the adapter-free policy with LoRA, else the copy."""
    if reference is None:
        with parts.policy.disable_adapter():
            return response_logprobs(parts.policy, rollout.query, rollout.query_mask,
                                     rollout.response, rollout.response_mask,
                                     cfg.temperature or 1.0)["logprobs"]
    return response_logprobs(reference, rollout.query, rollout.query_mask, rollout.response,
                             rollout.response_mask, cfg.temperature or 1.0)["logprobs"]


def value_model_from_reward(reward_fn, tokenizer, cfg,
                            device: str) -> tuple[nn.Module, nn.Linear]:
    """``--critic reward_model``: the value model starts as a reward model's first member (its
    causal backbone and its normalised head), which must read the policy's own tokens: the
    ``--value-model`` folder, else the reward model that gives the reward."""
    if cfg.value_model:
        from alignkit.models.reward import RewardModel

        if not Path(cfg.value_model).is_dir():
            raise UserError(f"--value-model {cfg.value_model!r}: not a reward-model folder")
        model = RewardModel.load(cfg.value_model, device)
    else:
        model = getattr(reward_fn, "model", None)
    if model is None:
        raise UserError("--critic reward_model needs --reward-model or --value-model (a "
                        "reward-model folder)")
    if model.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError("--critic reward_model: the reward model's tokenizer differs from the "
                        "policy's, so it cannot value the policy's tokens; train the reward "
                        "model on the policy's family (alignkit reward --model <SFT folder>)")
    return model.value_model(0)


def fit_reward_normalisation(policy, reward_fn, tokenizer, prompts: Prompts, cfg,
                             engine=None) -> dict:
    """``--reward-normalization reference``: the starting policy answers
    ``--normalization-prompts`` training prompts (a seeded draw, the training RNG untouched) and
    every reward-model member is refitted to mean 0, std 1 on those answers."""
    model = getattr(reward_fn, "model", None)
    if model is None or not hasattr(model, "refit_normalisation"):
        raise UserError("--reward-normalization reference needs --reward-model (a reward-model "
                        "folder)")
    n = min(cfg.normalization_prompts, len(prompts.ids))
    picks = torch.randperm(len(prompts.ids), generator=torch.Generator().manual_seed(
        cfg.seed + 4242))[:n].tolist()
    with fixed_draw(cfg.seed + 4243), torch.no_grad():
        was = policy.training
        policy.eval()
        answers = sample_rollout(policy, [prompts.ids[i] for i in picks], tokenizer,
                                 sampling_config(cfg),
                                 device=str(next(policy.parameters()).device),
                                 precision=cfg.precision, batch_size=max(cfg.batch_size, 8),
                                 engine=engine)
        policy.train(was)
    return model.refit_normalisation([prompts.texts[i] for i in picks],
                                     decode_responses(tokenizer, answers))


# ----------------------------------------------------------------------------- one PPO step


@dataclass
class Experience:
    rollout: Rollout
    old_logprobs: torch.Tensor | None  # (B, T); None until the fused pass fills it
    old_values: torch.Tensor | None  # (B, T)
    advantages: torch.Tensor | None  # (B, T)
    returns: torch.Tensor | None  # (B, T)
    score: torch.Tensor | None = None  # (B,) reward-model score minus the missing-EOS penalty
    ref_logprobs: torch.Tensor | None = None  # (B, T)
    beta: float = 0.0


def kl_in_loss(cfg) -> bool:
    """``--kl-penalty``: the KL to the reference as its own k3 loss term (GRPO's default) rather
    than a per-token penalty inside the reward (PPO's, RLOO's and REINFORCE++'s default)."""
    return cfg.kl_penalty == "loss" or (cfg.kl_penalty == "auto" and cfg.advantage == "grpo")


def whiten_advantages(cfg) -> bool:
    """``--whiten-advantages``, by default on only for GAE: RLOO's leave-one-out baseline is
    the estimator (Ahmadian et al. 2024), GRPO divides by the group's std and REINFORCE++
    whitens its returns itself."""
    return cfg.advantage == "gae" if cfg.whiten_advantages is None else cfg.whiten_advantages


def single_pass(cfg, world: World = World()) -> bool:
    """One epoch over one minibatch, no accumulation, one process: the "old" log-probs are those
    of the one training forward (its ratio is exactly 1), so that forward also fills the
    experience and the separate no-grad policy pass is skipped (as TRL's GRPO does with
    num_iterations=1). With several processes each holds only part of that forward, so the
    experience gets its own pass."""
    n = cfg.batch_size * cfg.samples_per_prompt
    return (cfg.ppo_epochs == 1 and cfg.minibatch_size >= n and max(cfg.grad_accum, 1) == 1
            and not world.distributed)


def make_experience(parts, reference, reward_fn, tokenizer, prompts: Prompts,
                    indices: list[int], kl_ctl, cfg, device: str, step: int = 0,
                    world: World = World(), engine=None):
    """Sample, score, take the reference's log-probs and (unless ``single_pass``) the policy's
    and turn rewards into advantages. Returns (Experience, stats).

    Each response draws from its own seeded stream, keyed by (seed, step, the prompt's place in
    the batch, sample number), so the tokens do not depend on the number of processes. Under
    torchrun each process samples, scores and runs the no-grad passes for its contiguous share
    of the batch's prompts (a prompt's samples stay together), and the shares are gathered: every
    process then holds the whole batch's experience, so advantages, whitening and the KL the
    controller sees are those of one process. ``engine``: the rollout engine that writes the
    answers (it takes the policy's weights first); the log-probs that train are the policy's."""
    k = cfg.samples_per_prompt
    first = world.rank * len(indices) // world.size
    mine = share(indices, world)
    prompt_ids = [prompts.ids[i] for i in mine for _ in range(k)]
    seeds = [row_seed(cfg.seed, step, first + p, j) for p in range(len(mine)) for j in range(k)]
    t0 = time.time()
    rollout = sample_rollout(parts.policy, prompt_ids, tokenizer, sampling_config(cfg),
                             device=device, precision=cfg.precision, row_seeds=seeds,
                             engine=engine)
    gen_time = time.time() - t0
    texts = [prompts.texts[i] for i in mine for _ in range(k)]
    responses = decode_responses(tokenizer, rollout)
    scored = reward_fn(texts, responses)
    score = scored["combined"].float().to(device)
    score = score - cfg.missing_eos_penalty * (~rollout.ended.to(device)).float()
    with torch.no_grad(), autocast(device, cfg.precision):
        parts.eval()
        ref_logprobs = reference_logprobs(parts, reference, rollout, cfg)
        fwd = (None if single_pass(cfg, world)
               else policy_forward(parts, rollout, cfg, with_entropy=True))
        parts.train()
    reward_mean = scored.get("mean", scored["combined"]).float().to(device)
    reward_std = scored["std"].float().to(device) if "std" in scored else None
    if world.distributed:
        rollout, score, ref_logprobs, fwd, reward_mean, reward_std = gather_experience(
            rollout, score, ref_logprobs, fwd, reward_mean, reward_std, tokenizer.pad_token_id,
            world, device)
    exp = Experience(rollout, None, None, None, None, score, ref_logprobs, kl_ctl.value)
    lengths = rollout.response_mask.float().sum(1)
    stats = {
        "score": float(score.mean()), "score_std": float(score.std()) if len(score) > 1 else 0.0,
        "reward_model_mean": float(reward_mean.mean()),
        "reward_model_std": float(reward_std.mean()) if reward_std is not None else 0.0,
        "kl_coef": exp.beta, "response_length": float(lengths.mean()),
        "ended_fraction": float(rollout.ended.float().mean()),
        "gen_tokens_per_s": float(lengths.sum()) / max(gen_time, 1e-9),
        **rollout_engine_stats(engine),
    }
    if fwd is not None:
        stats.update(fill_experience(exp, fwd, cfg))
    return exp, stats


def gather_experience(rollout: Rollout, score, ref_logprobs, fwd, reward_mean, reward_std,
                      pad_id: int, world: World, device: str):
    """Every process's share of a batch's experience, concatenated in rank order (the batch's
    order) on every process; (B, T) tensors are re-padded to the widest response."""
    def cpu(x):
        return None if x is None else x.detach().cpu()

    mine = {"rollout": Rollout(*(cpu(getattr(rollout, f)) for f in (
                "query", "query_mask", "response", "response_mask", "logprobs", "ended"))),
            "score": cpu(score), "ref": cpu(ref_logprobs), "mean": cpu(reward_mean),
            "std": cpu(reward_std),
            "fwd": None if fwd is None else {key: cpu(v) for key, v in fwd.items()}}
    parts = gather_objects(mine, world)
    whole = concat_rollouts([p["rollout"] for p in parts], pad_id)
    width = whole.response.shape[1]

    def stack(tensors):
        if tensors[0] is None:
            return None
        if tensors[0].dim() == 1:
            return torch.cat(tensors).to(device)
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]))
                          for t in tensors]).to(device)

    fwd_all = (None if parts[0]["fwd"] is None else
               {key: stack([p["fwd"][key] for p in parts]) for key in parts[0]["fwd"]})
    rollout_all = Rollout(*(None if getattr(whole, f) is None else getattr(whole, f).to(device)
                            for f in ("query", "query_mask", "response", "response_mask",
                                      "logprobs", "ended")))
    return (rollout_all, stack([p["score"] for p in parts]), stack([p["ref"] for p in parts]),
            fwd_all, stack([p["mean"] for p in parts]), stack([p["std"] for p in parts]))


def fill_experience(exp: Experience, fwd: dict[str, torch.Tensor],
                    cfg) -> dict[str, float]:
    """Old log-probs and values from a policy forward (``fwd``), then the KL-penalised rewards
    and advantages of ``--advantage``; fills ``exp`` and returns the KL and entropy stats."""
    mask = exp.rollout.response_mask.float()
    old_logprobs = fwd["logprobs"].detach().float()
    old_values = fwd["values"].detach() if "values" in fwd else None
    estimates = {kind: rl.kl_estimate(old_logprobs, exp.ref_logprobs, kind) * mask
                 for kind in {"k1", "k3", cfg.kl_estimator}}
    kl_k1, kl_k3, kl = estimates["k1"], estimates["k3"], estimates[cfg.kl_estimator]
    # with --kl-penalty loss the reward is the score alone; ppo_update adds beta * k3 instead
    beta = 0.0 if kl_in_loss(cfg) else exp.beta
    k = cfg.samples_per_prompt
    if cfg.advantage in ("gae", "reinforce++"):
        rewards = rl.token_rewards(exp.score, kl, mask, beta)
        if cfg.whiten_rewards:
            rewards = rl.masked_whiten(rewards, mask, shift_mean=False)
        if cfg.advantage == "gae":
            advantages, returns = rl.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if whiten_advantages(cfg):
                advantages = rl.masked_whiten(advantages, mask)
        else:
            advantages, returns = rl.reinforce_pp_advantages(rewards, mask, cfg.gamma), None
    else:
        # sequence level: any KL penalty is summed over the response, then group baselines
        seq_reward = exp.score - beta * kl.sum(1)
        if cfg.advantage == "rloo":
            adv = rl.rloo_advantages(seq_reward, k)
        else:
            adv = rl.grpo_advantages(seq_reward, k)
        advantages, returns = adv[:, None] * mask, None
        if whiten_advantages(cfg):
            advantages = rl.masked_whiten(advantages, mask)
    exp.old_logprobs, exp.old_values = old_logprobs, old_values
    exp.advantages, exp.returns = advantages, returns
    out = {"kl": float(kl_k1.sum(1).mean()), "kl_k3": float(kl_k3.sum(1).mean()),
           "non_score_reward": float(-(beta * kl.sum(1)).mean())}
    if exp.rollout.engine_logprobs is not None:
        out.update(engine_logprob_gap(old_logprobs, exp.rollout.engine_logprobs, mask))
    if "entropy" in fwd:
        out["entropy"] = float(rl.masked_mean(fwd["entropy"].detach().float(), mask))
    return out


def engine_logprob_gap(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                       mask: torch.Tensor) -> dict[str, float]:
    """How far the rollout engine's log-probs of the sampled tokens are from the training
    forward's: (B, T) each, ``mask`` (B, T) 1 on response tokens. Returns the mean and largest
    absolute gap per token and the mean absolute gap of a response's summed log-prob (what the
    sequence-level ratio sees)."""
    gap = (trainer_logprobs.float() - engine_logprobs.to(trainer_logprobs.device).float()) * mask
    tokens = mask.sum().clamp(min=1)
    return {"engine_logprob_gap": float(gap.abs().sum() / tokens),
            "engine_logprob_gap_max": float(gap.abs().max()),
            "engine_seq_logprob_gap": float(gap.sum(1).abs().mean())}


def ppo_update(parts, trainer, exp: Experience, cfg, step: int) -> dict[str, float]:
    """``--ppo-epochs`` passes over shuffled minibatches; one optimiser step per minibatch. With
    ``single_pass`` the experience has no old log-probs yet: the one forward provides them.
    ``--target-kl``: after each minibatch's step, the approximate KL of that minibatch to the
    rollout policy is checked and the remaining minibatches and epochs are skipped past
    1.5x the target.

    Under torchrun every process holds the whole experience and runs every ``world size``-th
    micro-batch of each minibatch; each micro-batch's loss is weighted by its share of the whole
    minibatch, so the gradients DDP averages (times the number of processes) are one process's.
    """
    world = trainer.world

    def forward(model, part, with_entropy):  # what DDP runs: the policy (and value) forward
        return policy_forward(model, part, cfg, with_entropy)

    fused_stats: dict[str, float] = {}
    n = exp.rollout.response.shape[0]
    mb = max(1, min(cfg.minibatch_size, n))
    micro = max(1, mb // max(cfg.grad_accum, 1))
    agg = cfg.loss_aggregation
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    count, epochs_done, stopped, tokens = 0, 0, False, 0
    t0 = time.time()
    device = trainer.device
    for epoch in range(cfg.ppo_epochs):
        # a pure function of (seed, step, epoch): a resumed run shuffles the same way
        # single_pass: one minibatch of all rows, in rollout order
        order = torch.arange(n) if exp.old_logprobs is None else torch.randperm(
            n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch))
        for start in range(0, n, mb):
            idx = order[start:start + mb]
            mb_mask = exp.rollout.response_mask[idx]
            mb_weight = rl.aggregation_weight(mb_mask, agg).clamp(min=1)
            mb_tokens = mb_mask.sum().clamp(min=1)
            minibatch_kl = 0.0
            starts = list(range(0, len(idx), micro))
            # this process's micro-batches: every world-size-th. All processes run the same
            # number of passes (FSDP gathers each layer in lockstep; DDP averages only when
            # every process runs the backward): one short of a micro-batch runs a zero-weighted
            # pass over the first
            mine = starts[world.rank::world.size]
            passes = -(-len(starts) // world.size)
            for position in range(passes):
                real = position < len(mine)
                m0 = mine[position] if real else starts[0]
                sub = idx[m0:m0 + micro].to(device)
                part = exp.rollout.select(sub)
                mask = part.response_mask.float()
                fused = exp.old_logprobs is None
                with trainer.accumulate(last=position == passes - 1):
                    with trainer.autocast():
                        out = trainer.forward(forward, part, cfg.entropy_coef > 0 or fused)
                    if fused:  # single_pass: this forward is also the experience's (sub = all)
                        fused_stats = fill_experience(exp, out, cfg)
                    # each micro-batch's aggregate, weighted by its share of what the minibatch
                    # averages over (tokens, or responses with --loss-aggregation sequence_mean)
                    share_of_minibatch = (rl.aggregation_weight(mask, agg) / mb_weight
                                          if real else 0.0)
                    loss, stats = micro_batch_loss(out, exp, sub, mask, cfg)
                    trainer.backward(loss * share_of_minibatch)
                if not real:
                    continue
                minibatch_kl += stats["approx_kl"] * float(mask.sum() / mb_tokens)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                tokens += int(part.attention_mask.sum())
            update = trainer.optimizer_step()
            grad_norms.append(update["grad_norm"])
            lr = update["lr"]
            if world.distributed:  # every process must take the same early stop
                minibatch_kl = trainer.sum([minibatch_kl])[0]
            if cfg.target_kl > 0 and minibatch_kl > 1.5 * cfg.target_kl:
                stopped = True
                break
        epochs_done += 1
        if stopped:
            break
    keys = sorted(sums)
    totals = trainer.sum([float(count), float(tokens), *(sums[k] for k in keys)])
    count, tokens = int(totals[0]), int(totals[1])
    out = {k: v / max(count, 1) for k, v in zip(keys, totals[2:])}
    out.update(lr=lr, grad_norm=sum(grad_norms) / len(grad_norms), optimizer_steps=len(grad_norms),
               ppo_epochs_done=epochs_done, early_stopped=stopped,
               train_tokens_per_s=tokens / max(time.time() - t0, 1e-9), **fused_stats)
    return out


def micro_batch_loss(out: dict[str, torch.Tensor], exp: Experience, sub: torch.Tensor,
                     mask: torch.Tensor, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's loss (rows ``sub`` of the experience, the policy forward ``out``): the
    clipped policy loss, plus the clipped value loss (GAE), the k3 KL term (``--kl-penalty
    loss``) and minus the entropy bonus; and its statistics."""
    agg = cfg.loss_aggregation
    weights = None
    if cfg.rollout_is_cap > 0 and exp.rollout.engine_logprobs is not None:
        weights = rl.truncated_is_weights(exp.old_logprobs[sub], exp.rollout.engine_logprobs[sub],
                                          mask, cfg.rollout_is_cap)
    pg, pstats = rl.policy_loss(out["logprobs"], exp.old_logprobs[sub], exp.advantages[sub],
                                mask, cfg.clip, agg, weights)
    loss = pg
    stats = {"policy_loss": float(pg.detach()), **pstats}
    if weights is not None:
        stats.update(is_weight=float(rl.masked_mean(weights, mask)),
                     is_truncated=float(rl.masked_mean((weights >= cfg.rollout_is_cap).float(),
                                                       mask)))
    if cfg.advantage == "gae":
        vl, vstats = rl.value_loss(out["values"], exp.old_values[sub], exp.returns[sub], mask,
                                   cfg.value_clip, agg)
        loss = loss + cfg.vf_coef * vl
        stats.update(value_loss=float(vl.detach()), **vstats)
    if kl_in_loss(cfg):
        kl_term = rl.kl_penalty_loss(out["logprobs"], exp.ref_logprobs[sub], mask, "k3", agg)
        loss = loss + exp.beta * kl_term
        stats["kl_loss"] = float(kl_term.detach())
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * rl.aggregate(out["entropy"], mask, agg)
    return loss, stats


def save_policy(parts: PolicyAndValue, tokenizer, output: Path, name: str,
                keep_training: bool, card: str | None = None) -> Path:
    """A plain HF folder of the policy (LoRA merged) plus ``value_head.safetensors``. While
    training goes on, a copy is merged so the live adapters stay untouched."""
    from safetensors.torch import save_file

    policy = copy.deepcopy(parts.policy) if keep_training and is_lora(parts.policy) \
        else parts.policy
    folder, _ = ckpt.save_final(output, policy, tokenizer, name, card=card)
    if parts.value_head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in
                   parts.value_head.state_dict().items()}, str(folder / "value_head.safetensors"))
    return folder


def save_trained_policy(trainer, parts: PolicyAndValue, tokenizer, name: str,
                        keep_training: bool) -> Path:
    """``save_policy`` of the trained parts into ``<output>/<name>`` by the first process; every
    process calls it (under FSDP the whole weights are gathered into a copy first)."""
    whole = trainer.full_model()
    if not trainer.run.is_main:
        return trainer.output / name
    # (an FSDP copy is the caller's own: its adapters may be merged in place)
    folder = save_policy(whole, tokenizer, trainer.output, name,
                         keep_training=keep_training and whole is parts,
                         card=trainer.model_card(is_lora(whole.policy)))
    trainer.log_to.info("saved %s", folder)
    return folder


class RewardNormalisation:
    """The reward model's offset and scale as checkpoint state: with ``--reward-normalization
    reference`` they are refitted on the starting policy's answers, and a resumed run must keep
    that fit rather than the saved model's."""

    def __init__(self, reward_fn, refitted: bool):
        self.reward_fn, self.refitted = reward_fn, refitted

    def state_dict(self) -> dict | None:
        if not self.refitted:
            return None
        spec = self.reward_fn.model.spec
        return {"offset": spec.offset, "scale": spec.scale}

    def load_state_dict(self, state: dict) -> None:
        spec = self.reward_fn.model.spec
        spec.offset, spec.scale = state["offset"], state["scale"]


def build_value_model(policy, reference, reward_fn, tokenizer, cfg, device: str
                      ) -> tuple[nn.Module | None, nn.Module | None, str]:
    """The value model of GAE (none for the other estimators): a zero-initialised head on the
    policy's backbone (``--critic shared``), a separate copy of the starting policy with a zero
    head (``separate``), or the reward model's backbone and head (``reward_model``). Returns
    (value head, critic or None, how it was built)."""
    if cfg.advantage != "gae":
        return None, None, ""
    critic = None
    if cfg.critic == "reward_model":
        critic, value_head = value_model_from_reward(reward_fn, tokenizer, cfg, device)
        mode = "; value model initialised from the reward model"
    else:
        value_head = nn.Linear(policy.config.hidden_size, 1).to(device)
        nn.init.zeros_(value_head.weight)  # start at V = 0 (the N implementation details)
        nn.init.zeros_(value_head.bias)
        mode = "; value head on the policy's backbone"
    if cfg.critic == "separate":
        critic = copy.deepcopy(reference if reference is not None else policy.get_base_model())
        mode = "; separate critic"
    if critic is not None:
        critic.requires_grad_(True)
    return value_head, critic, mode


def optimizer_steps_per_batch(cfg) -> int:
    """Optimiser steps of one PPO step: ``--ppo-epochs`` passes over the batch's minibatches."""
    rollouts = cfg.batch_size * cfg.samples_per_prompt
    return cfg.ppo_epochs * -(-rollouts // max(1, min(cfg.minibatch_size, rollouts)))


def ppo_step(parts, reference, reward_fn, tokenizer, prompts: Prompts, indices: list[int],
             kl_ctl, trainer, cfg, step: int, engine=None) -> dict:
    """One PPO step on the prompts ``indices``: a batch of experience, the clipped update over
    it, and the KL controller fed the batch's mean KL per response (Ziegler et al. 2019)."""
    with trainer.unsharded():  # sampling and no-grad passes on the whole weights
        exp, stats = make_experience(parts, reference, reward_fn, tokenizer, prompts, indices,
                                     kl_ctl, cfg, trainer.device, step, trainer.world, engine)
    stats.update(ppo_update(parts, trainer, exp, cfg, step))
    if exp.returns is not None:
        with torch.no_grad():
            stats["explained_variance"] = rl.explained_variance(
                exp.old_values, exp.returns, exp.rollout.response_mask)
    stats["rollouts"] = exp.rollout.response.shape[0]
    kl_ctl.update(stats["kl"], stats["rollouts"])
    return stats
