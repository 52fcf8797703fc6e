"""``alignkit ppo``: stage 3 of RLHF. The policy samples responses to prompts, a reward model
scores them, a KL penalty to the frozen reference (the starting policy) keeps it honest, and
PPO's clipped objective takes a few careful steps on each batch (Ouyang et al. 2022; Ziegler et
al. 2019; Huang et al. 2024, "The N Implementation Details of RLHF with PPO").

One loop serves four advantage estimators (``--advantage``): GAE with a value head (PPO), RLOO
and GRPO (k samples per prompt, group baselines, no critic) and REINFORCE++ (global baseline).
The math lives in ``alignkit.losses.ppo``; this file only orchestrates.

Memory: with ``--lora`` the reference is the same weights with the adapters switched off (one
copy of the model) and the value head sits on the policy's backbone; full fine-tuning keeps a
frozen reference copy. ``metrics.jsonl`` names the mode of the run.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.config import PPOConfig, save_config
from alignkit.data.sft import stream_batch_indices
from alignkit.errors import UserError
from alignkit.evaluation.policy import (Prompts, RewardFunction, decode_responses,
                                        load_prompts, measure_policy)
from alignkit.generation.sampler import Rollout, SamplingConfig, response_logprobs, sample
from alignkit.losses import ppo as rl
from alignkit.models import checkpoint as ckpt
from alignkit.models.lm import hidden_states
from alignkit.models.lora import add_lora, count_parameters, disable_dropout, is_lora
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.recipes.common import (autocast, make_optimizer, optimizer_step, prepare_output,
                                     progress_bar)
from alignkit.utils.metrics import MetricsLog
from alignkit.utils.schedule import make_scheduler

log = logging.getLogger("alignkit.ppo")


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


def policy_forward(parts: PolicyAndValue, rollout: Rollout, cfg: PPOConfig,
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
                       cfg: PPOConfig) -> torch.Tensor:
    """The frozen reference's log-probs: the adapter-free policy with LoRA, else the copy."""
    if reference is None:
        with parts.policy.disable_adapter():
            return response_logprobs(parts.policy, rollout.query, rollout.query_mask,
                                     rollout.response, rollout.response_mask,
                                     cfg.temperature or 1.0)["logprobs"]
    return response_logprobs(reference, rollout.query, rollout.query_mask, rollout.response,
                             rollout.response_mask, cfg.temperature or 1.0)["logprobs"]


def value_model_from_reward(reward_fn, tokenizer, cfg: PPOConfig,
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


def fit_reward_normalisation(policy, reward_fn, tokenizer, prompts: Prompts, cfg: PPOConfig,
                             device: str) -> dict:
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
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(cfg.seed + 4243)
        was = policy.training
        policy.eval()
        with autocast(device, cfg.precision):
            rollout = sample(policy, [prompts.ids[i] for i in picks], tokenizer.pad_token_id,
                             tokenizer.eos_token_id, SamplingConfig(cfg.max_new_tokens,
                                                                    cfg.temperature, cfg.top_p,
                                                                    cfg.top_k),
                             with_logprobs=False, batch_size=max(cfg.batch_size, 8))
        policy.train(was)
    return model.refit_normalisation([prompts.texts[i] for i in picks],
                                     decode_responses(tokenizer, rollout))


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


def kl_in_loss(cfg: PPOConfig) -> bool:
    """``--kl-penalty``: the KL to the reference as its own k3 loss term (GRPO's default) rather
    than a per-token penalty inside the reward (PPO's, RLOO's and REINFORCE++'s default)."""
    return cfg.kl_penalty == "loss" or (cfg.kl_penalty == "auto" and cfg.advantage == "grpo")


def whiten_advantages(cfg: PPOConfig) -> bool:
    """``--whiten-advantages``, by default on only for GAE: RLOO's leave-one-out baseline is
    the estimator (Ahmadian et al. 2024), GRPO divides by the group's std and REINFORCE++
    whitens its returns itself."""
    return cfg.advantage == "gae" if cfg.whiten_advantages is None else cfg.whiten_advantages


def single_pass(cfg: PPOConfig) -> bool:
    """One epoch over one minibatch, no accumulation: the "old" log-probs are those of the one
    training forward (its ratio is exactly 1), so that forward also fills the experience and the
    separate no-grad policy pass is skipped (as TRL's GRPO does with num_iterations=1)."""
    n = cfg.batch_size * cfg.samples_per_prompt
    return cfg.ppo_epochs == 1 and cfg.minibatch_size >= n and max(cfg.grad_accum, 1) == 1


def make_experience(parts, reference, reward_fn, tokenizer, prompts: Prompts,
                    indices: list[int], kl_ctl, cfg: PPOConfig, device: str):
    """Sample, score, take the reference's log-probs and (unless ``single_pass``) the policy's
    and turn rewards into advantages. Returns (Experience, stats)."""
    k = cfg.samples_per_prompt
    prompt_ids = [prompts.ids[i] for i in indices for _ in range(k)]
    t0 = time.time()
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    with autocast(device, cfg.precision):
        rollout = sample(parts.policy, prompt_ids, tokenizer.pad_token_id,
                         tokenizer.eos_token_id, sampling, with_logprobs=False)
    gen_time = time.time() - t0
    texts = [prompts.texts[i] for i in indices for _ in range(k)]
    responses = decode_responses(tokenizer, rollout)
    scored = reward_fn(texts, responses)
    score = scored["combined"].float().to(device)
    ended = rollout.ended.to(device)
    score = score - cfg.missing_eos_penalty * (~ended).float()
    with torch.no_grad(), autocast(device, cfg.precision):
        parts.eval()
        ref_logprobs = reference_logprobs(parts, reference, rollout, cfg)
        fwd = None if single_pass(cfg) else policy_forward(parts, rollout, cfg, with_entropy=True)
        parts.train()
    exp = Experience(rollout, None, None, None, None, score, ref_logprobs, kl_ctl.value)
    lengths = rollout.response_mask.float().sum(1)
    stats = {
        "score": float(score.mean()), "score_std": float(score.std()) if len(score) > 1 else 0.0,
        "reward_model_mean": float(scored.get("mean", scored["combined"]).float().mean()),
        "reward_model_std": float(scored["std"].float().mean()) if "std" in scored else 0.0,
        "kl_coef": exp.beta, "response_length": float(lengths.mean()),
        "ended_fraction": float(ended.float().mean()),
        "gen_tokens_per_s": float(lengths.sum()) / max(gen_time, 1e-9),
    }
    if fwd is not None:
        stats.update(fill_experience(exp, fwd, cfg))
    return exp, stats


def fill_experience(exp: Experience, fwd: dict[str, torch.Tensor],
                    cfg: PPOConfig) -> dict[str, float]:
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
    if "entropy" in fwd:
        out["entropy"] = float(rl.masked_mean(fwd["entropy"].detach().float(), mask))
    return out


def ppo_update(parts, params, optimizer, scheduler, exp: Experience, cfg: PPOConfig,
               step: int, device: str) -> dict[str, float]:
    """``--ppo-epochs`` passes over shuffled minibatches; one optimiser step per minibatch. With
    ``single_pass`` the experience has no old log-probs yet: the one forward provides them.
    ``--target-kl``: after each minibatch's step, the approximate KL of that minibatch to the
    rollout policy is checked and the remaining minibatches and epochs are skipped past
    1.5x the target."""
    fused_stats: dict[str, float] = {}
    n = exp.rollout.response.shape[0]
    mb = max(1, min(cfg.minibatch_size, n))
    micro = max(1, mb // max(cfg.grad_accum, 1))
    agg = cfg.loss_aggregation
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    count, epochs_done, stopped, tokens = 0, 0, False, 0
    t0 = time.time()
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
            for m0 in range(0, len(idx), micro):
                sub = idx[m0:m0 + micro].to(device)
                part = exp.rollout.select(sub)
                mask = part.response_mask.float()
                fused = exp.old_logprobs is None
                with autocast(device, cfg.precision):
                    out = policy_forward(parts, part, cfg,
                                         with_entropy=cfg.entropy_coef > 0 or fused)
                if fused:  # single_pass: this forward is also the experience's (sub = all)
                    fused_stats = fill_experience(exp, out, cfg)
                # each micro-batch's aggregate, weighted by its share of what the minibatch
                # averages over (tokens, or responses with --loss-aggregation sequence_mean)
                share = rl.aggregation_weight(mask, agg) / mb_weight
                pg, pstats = rl.policy_loss(out["logprobs"], exp.old_logprobs[sub],
                                            exp.advantages[sub], mask, cfg.clip, agg)
                loss = pg
                stats = {"policy_loss": float(pg.detach()), **pstats}
                if cfg.advantage == "gae":
                    vl, vstats = rl.value_loss(out["values"], exp.old_values[sub],
                                               exp.returns[sub], mask, cfg.value_clip, agg)
                    loss = loss + cfg.vf_coef * vl
                    stats.update(value_loss=float(vl.detach()), **vstats)
                if kl_in_loss(cfg):
                    kl_term = rl.kl_penalty_loss(out["logprobs"], exp.ref_logprobs[sub], mask,
                                                 "k3", agg)
                    loss = loss + exp.beta * kl_term
                    stats["kl_loss"] = float(kl_term.detach())
                if cfg.entropy_coef > 0:
                    ent = rl.aggregate(out["entropy"], mask, agg)
                    loss = loss - cfg.entropy_coef * ent
                (loss * share).backward()
                minibatch_kl += pstats["approx_kl"] * float(mask.sum() / mb_tokens)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                tokens += int(part.attention_mask.sum())
            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
            grad_norms.append(grad_norm)
            if cfg.target_kl > 0 and minibatch_kl > 1.5 * cfg.target_kl:
                stopped = True
                break
        epochs_done += 1
        if stopped:
            break
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out.update(lr=lr, grad_norm=sum(grad_norms) / len(grad_norms), optimizer_steps=len(grad_norms),
               ppo_epochs_done=epochs_done, early_stopped=stopped,
               train_tokens_per_s=tokens / max(time.time() - t0, 1e-9), **fused_stats)
    return out


# ----------------------------------------------------------------------------- monitor


class HackingMonitor:
    """Held-out behaviour every ``--eval-every`` steps: proxy reward, gold score (when a gold
    scorer is on), KL to the reference, response length and entropy. Warns when the proxy rises
    while gold falls (over-optimisation, Gao et al. 2023), when KL passes its budget, or when
    length or entropy drift past their limits; keeps the best checkpoint by gold (or proxy)."""

    def __init__(self, prompts: Prompts | None, cfg: PPOConfig, tokenizer=None):
        self.prompts = prompts
        self.cfg = cfg
        self.history: list[dict] = []
        self.best: float | None = None
        self.gold = None
        if prompts is not None and cfg.gold:
            from alignkit.judges.gold import GoldScorer

            # lengths in the policy's own tokens, as the simulated annotators saw them
            self.gold = GoldScorer(token_counter=tokenizer)

    @property
    def key(self) -> str:
        return "gold" if self.gold is not None else "proxy"

    def measure(self, parts, reference, reward_fn, tokenizer, device: str) -> dict:
        cfg, p = self.cfg, self.prompts
        n = len(p.ids) if cfg.eval_prompts <= 0 else min(cfg.eval_prompts, len(p.ids))
        # the same draw every time (comparable across steps), without touching training's RNG
        return measure_policy(
            parts.policy, tokenizer, p.texts[:n], p.ids[:n], p.categories[:n],
            lambda rollout: reference_logprobs(parts, reference, rollout, cfg), reward_fn,
            self.gold, SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k),
            cfg.seed + 12345, device, cfg.precision, max(cfg.batch_size, 8))

    def check(self, row: dict) -> list[str]:
        warnings = []
        if self.history:
            first = self.history[0]
            # against the reading with the best gold so far (a slow decline shows there), and a
            # drop counts when it is larger than twice its standard error (sampling noise of two
            # readings on a few dozen prompts easily moves the mean by 0.1)
            if "gold" in row:
                peak = max(self.history, key=lambda r: r.get("gold", float("-inf")))
                noise = 2.0 * (row.get("gold_se", 0.0) ** 2 + peak.get("gold_se", 0.0) ** 2) ** 0.5
                if row["proxy"] > peak["proxy"] and row["gold"] < peak["gold"] - noise:
                    warnings.append(f"proxy reward rose ({peak['proxy']:.3f} -> "
                                    f"{row['proxy']:.3f}) while gold fell ({peak['gold']:.3f} -> "
                                    f"{row['gold']:.3f}, beyond the noise {noise:.3f}) since step "
                                    f"{peak.get('step', '?')}")
            base = max(first["response_length"], 1.0)
            ratio = row["response_length"] / base
            if ratio > self.cfg.length_drift or ratio < 1 / self.cfg.length_drift:
                warnings.append(f"mean response length drifted {ratio:.2f}x from its start "
                                f"({base:.1f} -> {row['response_length']:.1f} tokens)")
        if self.cfg.kl_budget > 0 and row["kl"] > self.cfg.kl_budget:
            warnings.append(f"KL to the reference {row['kl']:.2f} exceeds the budget "
                            f"{self.cfg.kl_budget:.2f}")
        if row["entropy"] < self.cfg.min_entropy:
            warnings.append(f"mean token entropy {row['entropy']:.3f} fell below "
                            f"{self.cfg.min_entropy}")
        self.history.append({k: v for k, v in row.items() if k != "samples"})
        return warnings

    def improved(self, row: dict) -> bool:
        value = row[self.key]
        if self.best is None or value > self.best:
            self.best = value
            return True
        return False

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state.get("history", []), state.get("best")


def save_policy(parts: PolicyAndValue, tokenizer, output: Path, name: str,
                keep_training: bool) -> Path:
    """A plain HF folder of the policy (LoRA merged) plus ``value_head.safetensors``. While
    training goes on, a copy is merged so the live adapters stay untouched."""
    from safetensors.torch import save_file

    policy = copy.deepcopy(parts.policy) if keep_training and is_lora(parts.policy) \
        else parts.policy
    folder, _ = ckpt.save_final(output, policy, tokenizer, name)
    if parts.value_head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in
                   parts.value_head.state_dict().items()}, str(folder / "value_head.safetensors"))
    return folder


# ----------------------------------------------------------------------------- main


def main(cfg: PPOConfig, reward_fn=None) -> dict:
    """Run stage 3. ``reward_fn`` (Python API only): any callable ``(prompts, responses) ->
    {"combined": (B,) tensor[, "mean", "std"]}`` used instead of ``--reward-model`` (a rule-based
    or programmatic reward)."""
    # 1. Output folder, seed, device; the resolved config beside the outputs.
    if cfg.advantage in ("rloo", "grpo") and cfg.samples_per_prompt < 2:
        raise UserError(f"--advantage {cfg.advantage} compares samples of one prompt: set "
                        "--samples-per-prompt 2 or more")
    if cfg.ppo_epochs < 1 or cfg.batch_size < 1 or cfg.minibatch_size < 1:
        raise UserError("--ppo-epochs, --batch-size and --minibatch-size must be >= 1")
    output = prepare_output(cfg)
    save_config(cfg, output)
    ckpt.seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    # 2. Policy, reference, value head (and critic).
    policy, tokenizer = load_model_and_tokenizer(cfg.model, device)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{cfg.model}: the tokenizer has no EOS token; a policy must be able to "
                        "end its answer")
    reference = None
    if cfg.lora:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        mode = "lora: reference = adapters disabled (one model copy)"
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        mode = "full: frozen reference copy"
    # 3. Prompts (train, held-out), the reward function, the KL controller.
    train = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length,
                         cfg.skip_invalid)
    heldout = (load_prompts(cfg.eval_data, tokenizer, cfg.chat, cfg.max_prompt_length,
                             cfg.skip_invalid) if cfg.eval_data else None)
    reward_fn = reward_fn or RewardFunction(cfg.reward_model, device, cfg.combine,
                                              cfg.uncertainty_penalty)

    # 4. The value model (GAE only): a head on the policy's backbone, a separate copy of the
    #    starting policy with a zero head, or the reward model's backbone and head.
    value_head, critic = None, None
    if cfg.advantage == "gae":
        if cfg.critic == "reward_model":
            critic, value_head = value_model_from_reward(reward_fn, tokenizer, cfg, device)
            mode += "; value model initialised from the reward model"
        else:
            value_head = nn.Linear(policy.config.hidden_size, 1).to(device)
            nn.init.zeros_(value_head.weight)  # start at V = 0 (the N implementation details)
            nn.init.zeros_(value_head.bias)
        if cfg.critic == "separate":
            critic = copy.deepcopy(reference if reference is not None else policy.get_base_model())
            mode += "; separate critic"
        elif cfg.critic == "shared":
            mode += "; value head on the policy's backbone"
        if critic is not None:
            critic.requires_grad_(True)
    parts = PolicyAndValue(policy, value_head, critic)
    if not cfg.keep_dropout:
        disable_dropout(parts)
    parts.train()
    trainable, total_params = count_parameters(parts)
    kl_ctl = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
              if cfg.adaptive_kl else rl.FixedKLController(cfg.kl_coef))
    monitor = HackingMonitor(heldout, cfg, tokenizer) if heldout is not None else None

    # 5. Optimiser and schedule over every optimiser step of the run.
    rollouts_per_step = cfg.batch_size * cfg.samples_per_prompt
    per_step = cfg.ppo_epochs * -(-rollouts_per_step // max(1, min(cfg.minibatch_size,
                                                                   rollouts_per_step)))
    total_steps = max(1, cfg.max_steps)
    params = [p for p in parts.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, total_steps * per_step, cfg.warmup_steps, cfg.schedule)

    # 6. Resume: weights, optimiser, schedule, RNG, KL controller, monitor, data position.
    #    The reward normalisation refitted on the starting policy is part of the state.
    start_step = 0
    found = ckpt.list_checkpoints(output) if cfg.resume else []
    if found:
        state = ckpt.load_checkpoint(found[-1], parts, optimizer, scheduler)
        start_step = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        if monitor is not None:
            monitor.load_state_dict(state.get("monitor", {}))
        if state.get("reward_normalization"):
            reward_fn.model.spec.offset = state["reward_normalization"]["offset"]
            reward_fn.model.spec.scale = state["reward_normalization"]["scale"]
        log.info("resuming from %s (step %d of %d)", found[-1], start_step, total_steps)
    metrics = MetricsLog(output, resume_step=start_step if cfg.resume else None)
    if cfg.reward_normalization == "reference" and start_step == 0:
        refit = fit_reward_normalisation(policy, reward_fn, tokenizer, train, cfg, device)
        metrics.log(0, {"reward_offset_before": refit["before"]["offset"],
                        "reward_scale_before": refit["before"]["scale"],
                        "reward_offset": refit["after"]["offset"],
                        "reward_scale": refit["after"]["scale"]}, split="normalization")
    if start_step == 0:
        metrics.log(0, {"train_prompts": len(train.ids),
                        "heldout_prompts": len(heldout.ids) if heldout else 0,
                        "trainable_params": trainable, "total_params": total_params,
                        "mode": mode, "advantage": cfg.advantage, "device": device,
                        "total_steps": total_steps}, split="setup")

    # 7. The monitor before training (the baseline every later reading compares with).
    def run_monitor(step: int) -> bool:
        row = monitor.measure(parts, reference, reward_fn, tokenizer, device)
        warnings = monitor.check({**row, "step": step})
        row["warnings"] = warnings
        metrics.log(step, row, split="eval")
        for w in warnings:
            log.warning("step %d: reward-hacking monitor: %s", step, w)
        if monitor.improved(row):
            save_policy(parts, tokenizer, output, "best", keep_training=True)
            metrics.log(step, {"best_by": monitor.key, "best_value": monitor.best},
                        split="best")
        return bool(warnings) and cfg.stop_on_hacking

    if monitor is not None and start_step == 0:
        run_monitor(0)

    # 8. Train: sample -> score -> advantages -> PPO epochs; checkpoint; monitor.
    bar = progress_bar(total_steps, start_step, cfg.progress, "ppo")
    stopped_by_monitor = False
    for step in range(start_step, total_steps):
        t0 = time.time()
        indices = stream_batch_indices(step, len(train.ids), cfg.batch_size, cfg.seed)
        exp, stats = make_experience(parts, reference, reward_fn, tokenizer, train, indices,
                                     kl_ctl, cfg, device)
        stats.update(ppo_update(parts, params, optimizer, scheduler, exp, cfg, step, device))
        if exp.returns is not None:
            with torch.no_grad():
                stats["explained_variance"] = rl.explained_variance(
                    exp.old_values, exp.returns, exp.rollout.response_mask)
        # the controller sees the batch's mean KL per response (Ziegler et al. 2019)
        kl_ctl.update(stats["kl"], rollouts_per_step)
        done = step + 1
        stats["step_time_s"] = time.time() - t0
        if done % cfg.log_every == 0 or done == total_steps:
            metrics.log(done, stats)
        bar.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.2f}")
        bar.update(1)
        if monitor is not None and ((cfg.eval_every > 0 and done % cfg.eval_every == 0)
                                    or done == total_steps):
            stopped_by_monitor = run_monitor(done)
        if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == total_steps \
                or stopped_by_monitor:
            normalization = ({"offset": reward_fn.model.spec.offset,
                              "scale": reward_fn.model.spec.scale}
                             if cfg.reward_normalization == "reference" else None)
            ckpt.save_checkpoint(output, done, parts, optimizer, scheduler,
                                 {"kl_controller": kl_ctl.state_dict(),
                                  "monitor": monitor.state_dict() if monitor else {},
                                  "reward_normalization": normalization},
                                 keep=cfg.keep_checkpoints)
        if stopped_by_monitor:
            log.warning("stopping at step %d: --stop-on-hacking", done)
            break
    bar.close()

    # 9. Final policy (LoRA merged) + value head; best/ was kept by the monitor.
    metrics.close()
    final = save_policy(parts, tokenizer, output, "final", keep_training=False)
    log.info("saved %s", final)
    return {"final": final, "best": output / "best" if (output / "best").exists() else None,
            "metrics": output / "metrics.jsonl", "monitor": monitor.history if monitor else [],
            "stopped_by_monitor": stopped_by_monitor}
