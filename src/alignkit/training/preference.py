"""Preference optimisation on a policy (DPO and its family, offline and online): the summed
log-probs of each response in one packed forward, the configured loss per comparison, the
reference log-probs (computed once and cached on a key of everything they are a function of),
one step's forward/backward, held-out evaluation and held-out sampling.

``cfg`` is a ``DPOConfig`` (or ``OnlineDPOConfig``): the loss, beta, batch layout and precision.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alignkit.data.preferences import PreferenceBatch, PreferenceGroup, make_preference_batch
from alignkit.data.prompts import load_prompts
from alignkit.evaluation.comparison import suite_for_training, suite_rates
from alignkit.evaluation.policy import measure_policy
from alignkit.generation.sampler import SamplingConfig, response_logprobs
from alignkit.losses import dpo as losses
from alignkit.models.lm import hidden_states, logits_at
from alignkit.models.lora import is_lora
from alignkit.models.precision import autocast, uses_bf16, uses_fp16
from alignkit.utils.distributed import World, gather_shares, share
from alignkit.utils.fingerprint import json_digest, module_digest, update_with_ints

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


def make_batch(groups: list[PreferenceGroup], model, cfg, pad_id: int
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
                counts: torch.Tensor, batch: PreferenceBatch, cfg) -> dict:
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
def reference_logps(model, groups: list[PreferenceGroup], cfg, pad_id: int,
                    device: str, reference=None, world: World = World()) -> list[torch.Tensor]:
    """Per group, (K,) summed reference log-probs of its responses: the ``reference`` model when
    given, else the adapter-free ``model`` (LoRA), else ``model`` itself (before any update).
    The groups go in batches of ``--batch-size``; under torchrun each process computes its
    contiguous share of those batches and every process gets all the log-probs, the very
    numbers one process computes (the same batches)."""
    was = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for i in share(list(range(0, len(groups), cfg.batch_size)), world):
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
    return gather_shares(out, world)


REFERENCE_CACHE = "reference_logps.pt"
# bump when what reference_logps computes from the same inputs changes
REFERENCE_CACHE_FORMAT = 2


def reference_cache_key(model, train, heldout, cfg, pad_id: int,
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
                "bf16_autocast": uses_bf16(device, cfg.precision),
                "fp16_autocast": uses_fp16(cfg.precision), "batch_size": cfg.batch_size,
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


def cached_reference(model, train, heldout, cfg, pad_id: int, device: str,
                     output: Path, write: bool = True, world: World = World()
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Reference log-probs of every train and held-out response, from the cache file when its
    key (``reference_cache_key``: the data, the reference's weights and the numerics) equals
    this run's -- a resumed run -- else computed now (before any update) and cached with it.
    Under torchrun (``world``) each process computes its share and all get every value (the
    same numbers at any number of processes, so the key leaves the world size out)."""
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
    tr = reference_logps(model, train, cfg, pad_id, device, world=world)
    ho = reference_logps(model, heldout, cfg, pad_id, device, world=world)
    if write:  # one process writes the cache
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"key": key, "train": tr, "heldout": ho}, tmp)
        tmp.replace(path)
    log.info("reference log-probs of %d responses computed and cached in %.1fs",
             sum(len(t) for t in tr + ho), time.time() - t0)
    return tr, ho


def preference_step(model, micro: list[tuple[PreferenceBatch, torch.Tensor | None]], cfg,
                    trainer) -> dict:
    """Forward and backward passes of one optimiser step over this process's micro-batches of
    (batch, reference log-probs of its responses or None): the loss is the weighted mean over
    all the step's comparisons (across processes too). Returns the step's metrics (loss, DPO
    loss, implicit rewards, margin, accuracy, log-probs, pairs, tokens)."""
    device = trainer.device
    local = [sum(float(b.weight.sum()) for b, _ in micro), sum(b.num_pairs for b, _ in micro),
             sum(b.num_tokens for b, _ in micro), sum(b.computed_tokens for b, _ in micro)]
    weight_total, pairs, tokens, computed = trainer.sum(local)
    sums: dict[str, float] = {}
    for i, (batch, ref) in enumerate(micro):
        batch = batch.to(device)
        with trainer.accumulate(last=i == len(micro) - 1):
            with trainer.autocast():
                logps, counts = trainer.forward(sequence_logps, batch)
            out = pair_losses(logps, None if ref is None else ref.to(device), counts, batch, cfg)
            w = batch.weight
            trainer.backward((out["total"] * w).sum() / max(weight_total, 1e-9))
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
    keys = sorted(sums)
    totals = trainer.sum([sums[k] for k in keys])
    row = {k: v / max(weight_total, 1e-9) for k, v in zip(keys, totals)}
    row.update(pairs=int(pairs), tokens=int(tokens), computed_tokens=int(computed))
    return row


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_pairs(model, groups, refs, cfg, pad_id: int, device: str) -> dict:
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
    samples), gold score, length (keys ``sample_*``). The reference is the adapter-free policy
    (LoRA) or a frozen copy of the starting weights. With ``--eval-adversarial`` the policy also
    answers that suite at every evaluation: ``refusal_rate``, ``over_refusal_rate``, per-category
    rates and the answers with their verdicts, as PPO's monitor logs them."""

    def __init__(self, model, tokenizer, cfg, device: str, reward_fn=None,
                 reference=None, world: World = World()):
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
        self.world = world  # under torchrun each process samples its share of the prompts
        self.engine = None  # a rollout engine that follows the model (online DPO's --rollout-engine)
        self.suite, self.suite_ids = suite_for_training(
            cfg, tokenizer, getattr(cfg, "max_prompt_length", cfg.max_length))

    def measure(self, model) -> dict:
        def ref_logprobs(rollout):
            args = (rollout.query, rollout.query_mask, rollout.response, rollout.response_mask)
            if self.reference is None:
                with model.disable_adapter():
                    return response_logprobs(model, *args)["logprobs"]
            return response_logprobs(self.reference, *args)["logprobs"]

        p, n = self.prompts, self.n
        sampling = SamplingConfig(self.cfg.max_new_tokens, 1.0)
        common = dict(seed=self.cfg.seed + 1, device=self.device, precision=self.cfg.precision,
                      world=self.world, engine=self.engine)
        row = measure_policy(model, self.tokenizer, p.texts[:n], p.ids[:n], p.categories[:n],
                             ref_logprobs, self.reward_fn, self.gold, sampling, **common)
        row.pop("samples", None)
        row = {f"sample_{k}": v for k, v in row.items()}
        if self.suite:
            row.update(suite_rates(model, self.tokenizer, self.suite, self.suite_ids, sampling,
                                   **common))
        return row
