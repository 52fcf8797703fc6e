"""Online preference data (iterative / online DPO): the policy's sampled answers labelled by a
reward model (or ensemble) or the simulated annotator panel, and turned into preference groups
that keep the exact sampled tokens.

``cfg`` is an ``OnlineDPOConfig``.
"""

from __future__ import annotations

import torch

from alignkit.data.preferences import Comparison, PreferenceGroup
from alignkit.data.tokenize import IGNORE
from alignkit.models.reward import RewardFunction


def sequence_with_targets(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    """The sampled tokens as a training sequence: targets on the response tokens only."""
    ids = list(prompt) + list(response)
    targets = [IGNORE] * (len(prompt) - 1) + list(response) + [IGNORE]
    return ids, targets


def trained_logits(model, scores) -> torch.Tensor:
    """(M, B) each member's reward on the scale its Bradley-Terry loss was trained on, so that
    ``sigmoid(r_m(a) - r_m(b))`` is member m's probability that a beats b.

    ``scores`` holds normalised rewards, ``(raw - offset) / scale`` per member and aspect; the
    normalisation is undone here. One aspect: the raw head output. Several aspects: the aspect
    combination (weights, floors) applied to the raw head outputs, which is the reward an untagged
    comparison trains (``training.reward.pair_margins``); with aspect-tagged data only, it is the
    weighted sum of the per-aspect Bradley-Terry logits."""
    raw = model.denormalise(scores.members.float())  # (M, B, A)
    return raw[..., 0] if raw.shape[-1] == 1 else model.combine(raw).per_member


class Labeler:
    """(prompt texts, categories, K answers each, ended flags) -> per prompt the indices of the
    better and worse answer, the soft label, and (ensemble) the spread of the members' margins.

    Reward-model labeler: the better and worse answers are the best and worst by the combined
    (normalised) reward, the quantity the policy is asked to raise. ``margin`` and ``std`` are the
    mean and std over members of their normalised margins (``--min-margin`` and ``--max-std`` are
    in these units: each member's rewards have std 1 on its reference responses, so the spread
    measures disagreement rather than differences in the members' reward scales). ``label`` is
    the members' mean Bradley-Terry probability ``mean_m sigmoid(r_m(better) - r_m(worse))`` on
    their raw (trained) scale, see ``trained_logits``: a normalised margin is the raw one divided
    by the member's scale, and its sigmoid is not a probability the member was trained to give."""

    def __init__(self, cfg, tokenizer, device: str):
        self.cfg = cfg
        if cfg.labeler == "reward_model":
            self.reward = RewardFunction(cfg.reward_model, device, cfg.combine)
        else:
            from alignkit.judges.gold import GoldScorer

            self.gold = GoldScorer(token_counter=tokenizer)

    def __call__(self, texts, categories, answers, ended, round_index: int) -> list[dict]:
        k = self.cfg.samples_per_prompt
        out = []
        if self.cfg.labeler == "reward_model":
            flat_texts = [t for t in texts for _ in range(k)]
            flat_answers = [a for row in answers for a in row]
            scores = self.reward.model.score(flat_texts, flat_answers)
            m = scores.per_member.shape[0]
            combined = scores.combined.float().cpu().view(-1, k)
            members = scores.per_member.float().cpu().view(m, -1, k)
            logits = trained_logits(self.reward.model, scores).cpu().view(m, -1, k)
            for i in range(len(texts)):
                best, worst = int(combined[i].argmax()), int(combined[i].argmin())
                margins = members[:, i, best] - members[:, i, worst]  # (M,) normalised
                logit_margins = logits[:, i, best] - logits[:, i, worst]  # (M,) raw
                out.append({"better": best, "worse": worst,
                            "label": float(torch.sigmoid(logit_margins).mean()),
                            "margin": float(margins.mean()),
                            "std": float(margins.std()) if len(margins) > 1 else 0.0,
                            "reward": float(combined[i].mean())})
            return out
        from alignkit.feedback.simulated import SimulatedPanel

        panel = SimulatedPanel(seed=self.cfg.seed * 100_003 + round_index,
                               gold_scale=self.cfg.gold_scale)
        for i, t in enumerate(texts):
            golds = self.gold.score([t] * k, answers[i], [categories[i]] * k, ended[i])
            order, _ = panel.rank(golds)
            out.append({"better": order[0], "worse": order[-1], "label": 1.0, "margin": 0.0,
                        "std": 0.0, "reward": sum(golds) / k})
        return out


def keep_pair(label: dict, cfg) -> bool:
    if cfg.uncertain != "drop":
        return True
    if cfg.max_std > 0 and label["std"] > cfg.max_std:
        return False
    return label["margin"] >= cfg.min_margin


def round_groups(prompts, idx: list[int], rollout, answers: list[list[str]], labels: list[dict],
                 cfg, where: str) -> tuple[list[PreferenceGroup], dict]:
    """One preference group per prompt of the round (its better and worse answer as sampled
    tokens) from ``labels``; pairs of identical answers and (``--uncertain drop``) uncertain
    pairs left out and counted."""
    k = cfg.samples_per_prompt
    groups, dropped, identical = [], 0, 0
    for j, (i, lab) in enumerate(zip(idx, labels)):
        if lab["better"] == lab["worse"] or answers[j][lab["better"]] == answers[j][lab["worse"]]:
            identical += 1
            continue
        if not keep_pair(lab, cfg):
            dropped += 1
            continue
        g = PreferenceGroup(prompts.texts[i], where=where)
        for a in (lab["better"], lab["worse"]):
            row = j * k + a
            tokens = rollout.response[row][rollout.response_mask[row].bool()].tolist()
            seq, targets = sequence_with_targets(prompts.ids[i], tokens)
            g.responses.append(answers[j][a])
            g.input_ids.append(seq)
            g.targets = (g.targets or []) + [targets]
        label = lab["label"] if cfg.uncertain == "soft" else 1.0
        g.pairs.append(Comparison(0, 1, label=label, where=g.where))
        groups.append(g)
    return groups, {"pairs_dropped": dropped, "pairs_identical": identical}
