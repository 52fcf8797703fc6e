"""Online preference data (iterative / online DPO): the policy's sampled answers labelled by a
reward model (or ensemble) or the simulated annotator panel, and turned into preference groups
that keep the exact sampled tokens (``online_round``, each process its share of a round under
torchrun); each DPO step's groups shared out among the processes (``step_share``).

``cfg`` is an ``OnlineDPOConfig``.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from alignkit.data.preferences import Comparison, PreferenceBatch, PreferenceGroup
from alignkit.data.tokenize import IGNORE
from alignkit.evaluation.policy import decode_responses
from alignkit.generation.sampler import row_seed
from alignkit.models.reward import RewardFunction
from alignkit.training.preference import make_batch
from alignkit.training.rollout import rollout_engine_stats, sample_rollout, sampling_config
from alignkit.utils.distributed import World, gather_objects, share


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

    def __call__(self, texts, categories, answers, ended, round_index: int,
                 positions: list[int] | None = None) -> list[dict]:
        """``positions``: each prompt's place in the round (default 0, 1, ...): the panel that
        ranks a prompt's answers is seeded by (seed, round, place), so a label does not depend
        on which other prompts (or which process) are labelled with it."""
        k = self.cfg.samples_per_prompt
        positions = list(range(len(texts))) if positions is None else positions
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

        for i, t in enumerate(texts):
            golds = self.gold.score([t] * k, answers[i], [categories[i]] * k, ended[i])
            panel = SimulatedPanel(seed=row_seed(self.cfg.seed, round_index, positions[i]),
                                   gold_scale=self.cfg.gold_scale)
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


def online_round(model, tokenizer, prompts, idx: list[int], labeler: Labeler, cfg,
                 round_index: int, device: str, world: World = World(), engine=None
                 ) -> tuple[list[PreferenceGroup], dict]:
    """One round's data: the policy answers the round's prompts ``idx`` ``--samples-per-prompt``
    times, the labeler picks each prompt's better and worse answer, and the pairs become
    preference groups (``round_groups``). Returns (the groups in prompt order, the round's
    statistics: mean sampled reward and label spread, response length, pairs left out).

    Answer j of the prompt in place p of the round draws from its own stream, seeded by (seed,
    round, p, j), and the panel labels each prompt with its own seed, so nothing depends on the
    batch. Under torchrun each process samples and labels its contiguous share of the round's
    prompts, and the groups and statistics are gathered: every process returns the whole
    round's, as one process computes them; ``gen_s`` is the slowest process's sampling time.
    ``engine``: the rollout engine that writes the answers (it takes ``model``'s weights)."""
    k = cfg.samples_per_prompt
    mine = share(list(range(len(idx))), world)
    part: dict = {"groups": [], "rewards": [], "stds": [], "lengths": [], "gen_s": 0.0,
                  "pairs_dropped": 0, "pairs_identical": 0}
    t0 = time.time()
    if mine:
        seeds = [row_seed(cfg.seed, round_index, p, j) for p in mine for j in range(k)]
        rollout = sample_rollout(model, [prompts.ids[idx[p]] for p in mine for _ in range(k)],
                                 tokenizer, sampling_config(cfg), device=device,
                                 precision=cfg.precision, row_seeds=seeds, engine=engine)
        part["gen_s"] = time.time() - t0
        flat = decode_responses(tokenizer, rollout)
        answers = [flat[j * k:(j + 1) * k] for j in range(len(mine))]
        labels = labeler([prompts.texts[idx[p]] for p in mine],
                         [prompts.categories[idx[p]] for p in mine], answers,
                         rollout.ended.view(-1, k).tolist(), round_index, mine)
        groups, skipped = round_groups(prompts, [idx[p] for p in mine], rollout, answers,
                                       labels, cfg, where=f"round {round_index + 1}")
        part.update(groups=groups, rewards=[lab["reward"] for lab in labels],
                    stds=[lab["std"] for lab in labels],
                    lengths=rollout.response_mask.sum(1).tolist(), **skipped)
    every = gather_objects(part, world)
    rewards = [x for p in every for x in p["rewards"]]
    stds = [x for p in every for x in p["stds"]]
    lengths = [x for p in every for x in p["lengths"]]
    groups = [g for p in every for g in p["groups"]]
    stats = {"sample_reward": sum(rewards) / len(rewards),
             "pairs_dropped": sum(p["pairs_dropped"] for p in every),
             "pairs_identical": sum(p["pairs_identical"] for p in every),
             "label_std": sum(stds) / len(stds),
             "response_length": sum(lengths) / len(lengths),
             "gen_s": max(p["gen_s"] for p in every),  # the slowest process's sampling
             **rollout_engine_stats(engine)}
    return groups, stats


def step_share(ids: list[int], groups: list[PreferenceGroup], refs: list[torch.Tensor], model,
               cfg, pad_id: int, world: World = World()
               ) -> list[tuple[PreferenceBatch, torch.Tensor]]:
    """This process's micro-batch of one DPO step over the groups ``ids`` (with their reference
    log-probs): its contiguous share of them. ``preference_step`` normalises by the whole step's
    weight, so the shares' gradients sum to the one-process step's. A process left without a
    group still runs one forward and backward, over a group stripped of its comparisons (weight
    0, nothing counted): DistributedDataParallel averages gradients only when every process
    runs the backward."""
    mine = share(ids, world)
    if mine:
        return [(make_batch([groups[i] for i in mine], model, cfg, pad_id),
                 torch.cat([refs[i] for i in mine]))]
    return [(without_comparisons(make_batch([groups[ids[0]]], model, cfg, pad_id)),
             refs[ids[0]])]


def without_comparisons(batch: PreferenceBatch) -> PreferenceBatch:
    """``batch``'s forward with none of its comparisons (and no tokens counted): a loss of 0
    whose backward reaches every parameter the forward used."""
    none = batch.better[:0]
    return dataclasses.replace(
        batch, better=none, worse=none, margin=batch.margin[:0], weight=batch.weight[:0],
        label=batch.label[:0], group=batch.group[:0], aspects=[],
        pair_ranking=None if batch.pair_ranking is None else batch.pair_ranking[:0],
        num_tokens=0, computed_tokens=0)
