"""``alignkit dpo``: learn from preference pairs (or rankings) directly, without a reward model or
sampling during training (Rafailov et al. 2023), with the DPO family's losses (IPO, cDPO, hinge,
robust DPO, RPO) from ``alignkit.losses.dpo``.

Chosen and rejected responses of a prompt go through the model in one forward: a batch holds
whole prompt groups, packed without padding, each prompt run once for all of its responses (the
prefix-tree layout of ``data.preferences.collate_groups_packed``), and the LM head runs only at
the positions that predict response tokens. The reference's log-probs are computed once before
training and cached in ``<output>/reference_logps.pt``, reused only when its key (the data's
token ids, the reference's weights, the numerics) matches (with ``--lora`` the reference is the
adapter-free policy; with full fine-tuning it is the starting weights, so no second copy is
needed to train). Held-out evaluation: the DPO loss, implicit-reward accuracy and margins on
held-out pairs, and the KL to the reference (and gold score) of answers sampled on held-out
prompts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alignkit.config import DPOConfig, save_config
from alignkit.data.preferences import (PreferenceBatch, PreferenceGroup, load_preference_groups,
                                       make_preference_batch, split_groups)
from alignkit.data.sft import micro_batch_indices
from alignkit.errors import UserError
from alignkit.evaluation.policy import load_prompts, measure_policy
from alignkit.generation.sampler import SamplingConfig, response_logprobs
from alignkit.losses import dpo as losses
from alignkit.models import checkpoint as ckpt
from alignkit.models.lm import hidden_states, logits_at
from alignkit.models.lora import add_lora, count_parameters, disable_dropout, is_lora
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.recipes.common import (autocast, make_optimizer, optimizer_step, prepare_output,
                                     progress_bar, uses_bf16)
from alignkit.utils.fingerprint import json_digest, module_digest, update_with_ints
from alignkit.utils.metrics import MetricsLog
from alignkit.utils.schedule import make_scheduler

log = logging.getLogger("alignkit.dpo")


# ----------------------------------------------------------------------------- data


def _empty(text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return not any(str(m.get("content", "")).strip() for m in text)


def filter_pairs(groups: list[PreferenceGroup], keep) -> tuple[list[PreferenceGroup], int]:
    """Keep the comparisons ``keep(group, pair)`` accepts (and groups left with one); count the
    rest."""
    kept, dropped = [], 0
    for g in groups:
        pairs = [p for p in g.pairs if keep(g, p)]
        dropped += len(g.pairs) - len(pairs)
        if pairs:
            g.pairs = pairs
            kept.append(g)
    return kept, dropped


def drop_empty_pairs(groups: list[PreferenceGroup]) -> tuple[list[PreferenceGroup], int]:
    """Remove comparisons with an empty response."""
    return filter_pairs(groups, lambda g, p: not (_empty(g.responses[p.better])
                                                  or _empty(g.responses[p.worse])))


def drop_ties(groups: list[PreferenceGroup]) -> tuple[list[PreferenceGroup], int]:
    """Remove tie comparisons (label 1/2). Only the sigmoid loss has a tie form (the soft
    label); the others need a preferred side."""
    return filter_pairs(groups, lambda g, p: p.label == 1.0)


def make_batch(groups: list[PreferenceGroup], model, cfg: DPOConfig, pad_id: int
               ) -> PreferenceBatch:
    return make_preference_batch(groups, pad_id, causal=True, packing=cfg.packing,
                                 capacity=cfg.pack_length or cfg.max_length,
                                 share_prefix=cfg.share_prefix,
                                 hidden_size=model.config.hidden_size)


# ----------------------------------------------------------------------------- forward


def sequence_logps(model, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each response's target tokens, (N,) float32, and their counts (N,).
    The LM head runs only at the M positions that predict response tokens."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    picked = hidden.reshape(-1, hidden.shape[-1])[batch.target_index]  # (M, H)
    token_logps = -F.cross_entropy(logits_at(model, picked).float(), batch.target_ids,
                                   reduction="none")  # (M,)
    n = batch.num_responses
    sums = torch.zeros(n, device=token_logps.device).index_add(0, batch.target_response,
                                                               token_logps)
    counts = torch.bincount(batch.target_response, minlength=n).to(sums.device)
    return sums, counts


def pair_losses(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                counts: torch.Tensor, batch: PreferenceBatch, cfg: DPOConfig) -> dict:
    """The configured loss per comparison of ``batch`` (+ the RPO term) and its diagnostics."""
    c, r = batch.better, batch.worse
    pol, ref = policy_logps, ref_logps
    if cfg.loss == "ipo":  # IPO works on per-token means (see losses.dpo)
        pol = policy_logps / counts.clamp(min=1)
        ref = None if ref_logps is None else ref_logps / counts.clamp(min=1)
    per_pair, _, _ = losses.dpo_loss(
        pol[c], pol[r], None if ref is None else ref[c], None if ref is None else ref[r],
        cfg.beta, cfg.loss, cfg.label_smoothing, batch.margin,
        batch.label if cfg.loss == "sigmoid" else None)
    # the implicit reward is beta * the summed log-ratio, whichever loss (IPO trains on means)
    ratio = policy_logps.detach() - (0.0 if ref_logps is None else ref_logps)
    chosen_rewards, rejected_rewards = cfg.beta * ratio[c], cfg.beta * ratio[r]
    out = {"dpo": per_pair, "chosen_rewards": chosen_rewards,
           "rejected_rewards": rejected_rewards, "chosen_logps": policy_logps[c].detach(),
           "rejected_logps": policy_logps[r].detach()}
    total = per_pair
    if cfg.rpo_alpha > 0:
        out["rpo"] = losses.rpo_term(-policy_logps[c], counts[c])
        total = total + cfg.rpo_alpha * out["rpo"]
    out["total"] = total
    return out


@torch.no_grad()
def reference_logps(model, groups: list[PreferenceGroup], cfg: DPOConfig, pad_id: int,
                    device: str, reference=None) -> list[torch.Tensor]:
    """Per group, (K,) summed reference log-probs of its responses: the ``reference`` model when
    given, else the adapter-free ``model`` (LoRA), else ``model`` itself (before any update)."""
    was = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for i in range(0, len(groups), cfg.batch_size):
            chunk = groups[i:i + cfg.batch_size]
            batch = make_batch(chunk, model, cfg, pad_id).to(device)
            with autocast(device, cfg.precision):
                if reference is not None:
                    sums, _ = sequence_logps(reference, batch)
                elif is_lora(model):
                    with model.disable_adapter():
                        sums, _ = sequence_logps(model, batch)
                else:
                    sums, _ = sequence_logps(model, batch)
            sums = sums.float().cpu()
            at = 0
            for g in chunk:
                out.append(sums[at:at + len(g.input_ids)].clone())
                at += len(g.input_ids)
    finally:
        model.train(was)
    return out


REFERENCE_CACHE = "reference_logps.pt"
# bump when what reference_logps computes from the same inputs changes
REFERENCE_CACHE_FORMAT = 2


def reference_cache_key(model, train, heldout, cfg: DPOConfig, pad_id: int,
                        device: str) -> dict:
    """Everything the reference log-probs are a function of, in three parts so that a mismatch
    can say what changed:

    - ``data``: a digest of every group's token ids and targets, train then held-out, in order
      (so the split seed, ``--chat``, ``--max-length``, skipped records and the data itself);
    - ``reference``: a digest of the reference as it computes: every byte of every parameter
      and buffer (adapters left out under LoRA, where the reference is the adapter-free model)
      and the model config (its path left out: the same weights elsewhere are the same model);
    - ``numerics``: what decides the arithmetic around them: device type, bf16 autocast, the
      batch layout (batch size, packing, shared prefixes, row capacity, pad id) and the torch
      and transformers versions.

    The loss is not part of it: every loss reads the same summed log-probs (IPO divides by the
    token counts, which follow from the targets, at loss time). Dropout is not either: the
    reference pass runs in eval mode."""
    import transformers

    data = hashlib.sha256()
    for split, groups in (("train", train), ("heldout", heldout)):
        data.update(f"{split} {len(groups)}\n".encode())
        for g in groups:
            data.update(len(g.input_ids).to_bytes(8, "little"))
            for i, ids in enumerate(g.input_ids):
                update_with_ints(data, ids)
                update_with_ints(data, g.targets[i] if g.targets else None)
                update_with_ints(data, g.token_type_ids[i] if g.token_type_ids else None)
    lora = is_lora(model)
    base = model.get_base_model() if lora else model
    config = {k: v for k, v in json.loads(base.config.to_json_string(use_diff=False)).items()
              if k not in ("_name_or_path", "transformers_version")}
    config["attn_implementation"] = getattr(base.config, "_attn_implementation", None)
    weights = module_digest(model, skip=(lambda name: "lora_" in name) if lora else
                            (lambda name: False))
    numerics = {"format": REFERENCE_CACHE_FORMAT, "device": torch.device(device).type,
                "bf16_autocast": uses_bf16(device, cfg.precision), "batch_size": cfg.batch_size,
                "packing": cfg.packing, "share_prefix": cfg.share_prefix,
                "capacity": cfg.pack_length or cfg.max_length, "pad_id": pad_id,
                "torch": str(torch.__version__), "transformers": str(transformers.__version__)}
    return {"data": data.hexdigest(),
            "reference": json_digest({"adapter_free": lora, "config": config,
                                      "weights": weights}),
            "numerics": numerics}


def _cache_mismatch(saved, key: dict) -> str:
    """Why a loaded cache file does not hold the log-probs ``key`` describes ('' when it does)."""
    stored = saved.get("key") if isinstance(saved, dict) else None
    if not isinstance(stored, dict):
        return "it holds no cache key: written by an older alignkit"
    changed = []
    if stored.get("data") != key["data"]:
        changed.append("the data (token ids, targets or the train/held-out split)")
    if stored.get("reference") != key["reference"]:
        changed.append("the reference model (weights or config)")
    old = stored.get("numerics") if isinstance(stored.get("numerics"), dict) else {}
    changed += [f"{name} {old.get(name)!r} -> {value!r}" for name, value in key["numerics"].items()
                if old.get(name) != value]
    return "changed: " + ", ".join(changed) if changed else ""


def cached_reference(model, train, heldout, cfg: DPOConfig, pad_id: int, device: str,
                     output: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Reference log-probs of every train and held-out response, from the cache file when its
    key (``reference_cache_key``: the data, the reference's weights and the numerics) equals
    this run's -- a resumed run -- else computed now (before any update) and cached with it."""
    path = output / REFERENCE_CACHE
    key = reference_cache_key(model, train, heldout, cfg, pad_id, device)
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            why = _cache_mismatch(saved, key)
        except Exception as e:  # unreadable: recompute, whatever broke it
            why = f"unreadable: {type(e).__name__}: {e}"
        if not why:
            log.info("reference log-probs: reusing %s (same data, reference weights and "
                     "numerics)", path)
            return saved["train"], saved["heldout"]
        log.warning("%s is not this run's computation (%s); recomputing", path, why)
    t0 = time.time()
    tr = reference_logps(model, train, cfg, pad_id, device)
    ho = reference_logps(model, heldout, cfg, pad_id, device)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "train": tr, "heldout": ho}, tmp)
    tmp.replace(path)
    log.info("reference log-probs of %d responses computed and cached in %.1fs",
             sum(len(t) for t in tr + ho), time.time() - t0)
    return tr, ho


def dpo_step(model, micro: list[tuple[PreferenceBatch, torch.Tensor | None]], cfg: DPOConfig,
             device: str, params, optimizer, scheduler) -> dict:
    """One optimiser step over micro-batches of (batch, reference log-probs of its responses or
    None): the loss is the weighted mean over all the step's comparisons. Returns the step's
    metrics (loss, DPO loss, implicit rewards, margin, accuracy, log-probs, grad norm, lr)."""
    weight_total = sum(float(b.weight.sum()) for b, _ in micro)
    sums: dict[str, float] = {}
    for batch, ref in micro:
        batch = batch.to(device)
        with autocast(device, cfg.precision):
            logps, counts = sequence_logps(model, batch)
        out = pair_losses(logps, None if ref is None else ref.to(device), counts, batch, cfg)
        w = batch.weight
        ((out["total"] * w).sum() / max(weight_total, 1e-9)).backward()
        margin = out["chosen_rewards"] - out["rejected_rewards"]
        parts = {"loss": out["total"], "dpo_loss": out["dpo"],
                 "rewards_chosen": out["chosen_rewards"],
                 "rewards_rejected": out["rejected_rewards"], "reward_margin": margin,
                 "reward_accuracy": (margin > 0).float(), "logps_chosen": out["chosen_logps"],
                 "logps_rejected": out["rejected_logps"]}
        if "rpo" in out:
            parts["rpo_loss"] = out["rpo"]
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float((value.detach().float() * w).sum())
    grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
    row = {k: v / max(weight_total, 1e-9) for k, v in sums.items()}
    row.update(lr=lr, grad_norm=grad_norm, pairs=sum(b.num_pairs for b, _ in micro),
               tokens=sum(b.num_tokens for b, _ in micro),
               computed_tokens=sum(b.computed_tokens for b, _ in micro))
    return row


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_pairs(model, groups, refs, cfg: DPOConfig, pad_id: int, device: str) -> dict:
    """Held-out loss, implicit-reward accuracy and margins, chosen/rejected log-probs."""
    was = model.training
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(groups), cfg.batch_size):
        chunk = groups[i:i + cfg.batch_size]
        batch = make_batch(chunk, model, cfg, pad_id).to(device)
        with autocast(device, cfg.precision):
            logps, counts = sequence_logps(model, batch)
        ref = None if cfg.reference_free else torch.cat(refs[i:i + cfg.batch_size]).to(device)
        out = pair_losses(logps, ref, counts, batch, cfg)
        for key in ("total", "chosen_rewards", "rejected_rewards", "chosen_logps",
                    "rejected_logps"):
            rows.setdefault(key, []).append(out[key].float().cpu())
    model.train(was)
    if not rows:
        return {}
    cat = {k: torch.cat(v) for k, v in rows.items()}
    margin = cat["chosen_rewards"] - cat["rejected_rewards"]
    return {"loss": float(cat["total"].mean()), "reward_accuracy": float((margin > 0).float().mean()),
            "reward_margin": float(margin.mean()),
            "rewards_chosen": float(cat["chosen_rewards"].mean()),
            "rewards_rejected": float(cat["rejected_rewards"].mean()),
            "logps_chosen": float(cat["chosen_logps"].mean()),
            "logps_rejected": float(cat["rejected_logps"].mean()), "pairs": int(margin.numel())}


class PolicySampler:
    """Held-out answers of the policy: KL to the reference (nats per response, k1 on its own
    samples), gold score, length. The reference is the adapter-free policy (LoRA) or a frozen copy
    of the starting weights."""

    def __init__(self, model, tokenizer, cfg: DPOConfig, device: str, reward_fn=None,
                 reference=None):
        self.prompts = load_prompts(cfg.sample_prompts, tokenizer, cfg.chat, cfg.max_length,
                                    cfg.skip_invalid)
        self.reward_fn = reward_fn  # a proxy reward to report beside gold (online DPO)
        n = cfg.sample_count or len(self.prompts.ids)
        self.n = min(n, len(self.prompts.ids))
        self.reference = reference  # else the adapter-free policy, or a copy of it now
        if reference is None and not is_lora(model):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.gold = None
        if cfg.gold:
            from alignkit.judges.gold import GoldScorer

            self.gold = GoldScorer(token_counter=tokenizer)
        self.tokenizer, self.cfg, self.device = tokenizer, cfg, device

    def measure(self, model) -> dict:
        def ref_logprobs(rollout):
            args = (rollout.query, rollout.query_mask, rollout.response, rollout.response_mask)
            if self.reference is None:
                with model.disable_adapter():
                    return response_logprobs(model, *args)["logprobs"]
            return response_logprobs(self.reference, *args)["logprobs"]

        p, n = self.prompts, self.n
        row = measure_policy(model, self.tokenizer, p.texts[:n], p.ids[:n], p.categories[:n],
                             ref_logprobs, self.reward_fn, self.gold,
                             SamplingConfig(self.cfg.max_new_tokens, 1.0), seed=self.cfg.seed + 1,
                             device=self.device, precision=self.cfg.precision)
        row.pop("samples", None)
        return {f"sample_{k}": v for k, v in row.items()}


# ----------------------------------------------------------------------------- main


def main(cfg: DPOConfig) -> dict:
    # 1. Output folder, seed, device; the resolved config beside the outputs.
    if not cfg.data:
        raise UserError("--data is required (preference pairs or rankings)")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be > 0, got {cfg.beta}")
    if cfg.loss == "robust" and not 0 <= cfg.label_smoothing < 0.5:
        raise UserError("--loss robust needs --label-smoothing (the label-noise rate) in [0, 0.5)")
    if cfg.loss == "sigmoid" and not 0 <= cfg.label_smoothing <= 0.5:
        raise UserError("--label-smoothing must be in [0, 0.5]")
    if cfg.label_smoothing and cfg.loss in ("ipo", "hinge"):
        raise UserError(f"--label-smoothing does not apply to --loss {cfg.loss}")
    output = prepare_output(cfg)
    save_config(cfg, output)
    ckpt.seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    # 2. Policy and tokenizer; LoRA adapters when asked (then the reference is adapter-free).
    model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if not cfg.keep_dropout:
        # the reference log-probs come from an eval-mode forward: with dropout on, training
        # forwards would compute another function and the step-0 loss would not be ln 2
        disable_dropout(model)
    model.train()
    trainable, total_params = count_parameters(model)
    pad_id = tokenizer.pad_token_id

    # 3. Data: validate (file:line:field errors), tokenise per prompt group, split by prompt.
    groups, skipped = load_preference_groups(cfg.data, tokenizer, "policy", cfg.chat,
                                             cfg.max_length, cfg.skip_invalid)
    if skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(skipped), "\n  ".join(skipped[:20]))
    if cfg.eval_data:
        train = groups
        heldout, _ = load_preference_groups(cfg.eval_data, tokenizer, "policy", cfg.chat,
                                            cfg.max_length, cfg.skip_invalid)
    else:
        train, heldout = split_groups(groups, cfg.eval_fraction, cfg.seed)
    empty_pairs = 0
    if not cfg.keep_empty:
        train, dropped = drop_empty_pairs(train)
        heldout, dropped_eval = drop_empty_pairs(heldout)
        empty_pairs = dropped + dropped_eval
        if empty_pairs:
            log.warning("skipped %d comparison(s) with an empty response (--keep-empty keeps "
                        "them)", empty_pairs)
    ties = 0
    if cfg.loss != "sigmoid":
        train, ties = drop_ties(train)
        heldout, ties_eval = drop_ties(heldout)
        ties += ties_eval
        if ties:
            log.warning("skipped %d tie(s): --loss %s needs a preferred response (sigmoid "
                        "learns ties as soft labels)", ties, cfg.loss)
    if not train:
        raise UserError(f"{cfg.data}: no training comparisons left")
    # the --sample-prompts file is data too: checked before the reference log-probs are computed
    sampler = PolicySampler(model, tokenizer, cfg, device) if cfg.sample_prompts else None

    # 4. Reference log-probs, once, before any update (cached for a resumed run).
    ref_train, ref_heldout = ([], []) if cfg.reference_free else cached_reference(
        model, train, heldout, cfg, pad_id, device, output)

    # 5. Optimiser and schedule; the step count follows --max-steps or --epochs.
    per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
        1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.schedule)

    # 6. Resume: weights, optimiser, schedule, RNG; the data position is a function of the step.
    start_step, pairs_seen = 0, 0
    found = ckpt.list_checkpoints(output) if cfg.resume else []
    if found:
        state = ckpt.load_checkpoint(found[-1], model, optimizer, scheduler)
        start_step, pairs_seen = state["step"], state.get("pairs_seen", 0)
        log.info("resuming from %s (step %d of %d)", found[-1], start_step, total_steps)
    metrics = MetricsLog(output, resume_step=start_step if cfg.resume else None)
    history: dict[int, dict] = {}

    def run_eval(step: int) -> None:
        row = evaluate_pairs(model, heldout, ref_heldout, cfg, pad_id, device) if heldout else {}
        if sampler is not None:
            row.update(sampler.measure(model))
        if row:
            history[step] = row
            metrics.log(step, row, split="eval")

    if start_step == 0:
        metrics.log(0, {"train_prompts": len(train), "heldout_prompts": len(heldout),
                        "train_pairs": sum(len(g.pairs) for g in train),
                        "heldout_pairs": sum(len(g.pairs) for g in heldout),
                        "skipped_records": len(skipped), "skipped_empty_pairs": empty_pairs,
                        "skipped_ties": ties,
                        "trainable_params": trainable, "total_params": total_params,
                        "mode": ("lora: reference = adapters disabled" if is_lora(model) else
                                 "full: reference log-probs cached from the starting weights"),
                        "loss": cfg.loss, "beta": cfg.beta, "total_steps": total_steps,
                        "device": device}, split="setup")
        run_eval(0)

    # 7. Train: whole prompt groups per micro-batch; the step's loss is the mean over its pairs.
    bar = progress_bar(total_steps, start_step, cfg.progress, "dpo")
    started, pairs_at_start = time.time(), pairs_seen
    for step in range(start_step, total_steps):
        t0 = time.time()
        picks = [micro_batch_indices(step * cfg.grad_accum + j, len(train), cfg.batch_size,
                                     cfg.seed) for j in range(cfg.grad_accum)]
        micro = [(make_batch([train[i] for i in ids], model, cfg, pad_id),
                  None if cfg.reference_free else torch.cat([ref_train[i] for i in ids]))
                 for ids in picks]
        row = dpo_step(model, micro, cfg, device, params, optimizer, scheduler)
        done = step + 1
        pairs_seen += row["pairs"]
        elapsed = time.time() - t0
        if done % cfg.log_every == 0 or done == total_steps:
            metrics.log(done, {**row, "pairs_per_s": row["pairs"] / max(elapsed, 1e-9),
                               "step_time_s": elapsed})
        rate = (pairs_seen - pairs_at_start) / max(time.time() - started, 1e-9)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['reward_accuracy']:.2f}",
                        pairs_s=f"{rate:.1f}")
        bar.update(1)
        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < total_steps:
            run_eval(done)
        if cfg.save_every > 0 and done % cfg.save_every == 0 and done < total_steps:
            ckpt.save_checkpoint(output, done, model, optimizer, scheduler,
                                 {"pairs_seen": pairs_seen}, keep=cfg.keep_checkpoints)
    bar.close()

    # 8. Final evaluation and the plain HF model folder (LoRA merged in).
    if total_steps not in history:
        run_eval(total_steps)
    metrics.log(total_steps, {"pairs_seen": pairs_seen, "train_time_s": time.time() - started,
                              "pairs_per_s": (pairs_seen - pairs_at_start)
                              / max(time.time() - started, 1e-9)}, split="summary")
    metrics.close()
    model.eval()
    final, plain = ckpt.save_final(output, model, tokenizer)
    log.info("saved %s", final)
    return {"final": final, "model": plain, "tokenizer": tokenizer, "eval": history,
            "metrics": output / "metrics.jsonl"}
