"""``alignkit online-dpo``: iterative DPO on the policy's own answers (Xu et al. 2023, "Some things
are more CRINGE than others"; Guo et al. 2024, "Direct language model alignment from online AI
feedback"). Each round:

1. the current policy answers ``--prompts-per-round`` prompts ``--samples-per-prompt`` times with
   the shared sampler;
2. a labeler picks the better and the worse answer of each prompt: the reward model (or ensemble)
   by its combined reward, or the simulated annotator panel (the gold scorer's noisy raters);
3. with an ensemble, pairs it is unsure of can be dropped (std of the members' margins above
   ``--max-std``, or the mean margin below ``--min-margin``, both in normalised reward units) or
   given the members' mean Bradley-Terry preference probability as a soft label (``--uncertain
   soft``, the cDPO form per pair; from each member's raw reward, see ``Labeler``);
4. the pairs keep the exact sampled tokens (no re-tokenisation: the data are on-policy), the
   reference scores them (adapter-free policy with ``--lora``, else a frozen copy), and DPO takes
   ``--dpo-epochs`` passes over them (one optimiser step per micro-batch of
   ``--batch-size`` prompts).

Held-out answers every ``--eval-every`` rounds report KL to the reference, the proxy reward and
the gold score. Checkpoints hold weights, optimiser, schedule and RNG; the panel of a round is
seeded by (seed, round), so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from alignkit.config import OnlineDPOConfig, save_config
from alignkit.data.preferences import Comparison, PreferenceGroup
from alignkit.data.sft import stream_batch_indices
from alignkit.data.tokenize import IGNORE
from alignkit.errors import UserError
from alignkit.evaluation.policy import RewardFunction, decode_responses, load_prompts
from alignkit.generation.sampler import SamplingConfig, sample
from alignkit.models import checkpoint as ckpt
from alignkit.models.lora import add_lora, count_parameters, disable_dropout, is_lora
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.recipes.common import autocast, make_optimizer, prepare_output, progress_bar
from alignkit.recipes.dpo import PolicySampler, dpo_step, make_batch, reference_logps
from alignkit.utils.metrics import MetricsLog
from alignkit.utils.schedule import make_scheduler

log = logging.getLogger("alignkit.online_dpo")


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
    comparison trains (``recipes.reward.pair_margins``); with aspect-tagged data only, it is the
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

    def __init__(self, cfg: OnlineDPOConfig, tokenizer, device: str):
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


def keep_pair(label: dict, cfg: OnlineDPOConfig) -> bool:
    if cfg.uncertain != "drop":
        return True
    if cfg.max_std > 0 and label["std"] > cfg.max_std:
        return False
    return label["margin"] >= cfg.min_margin


def main(cfg: OnlineDPOConfig) -> dict:
    # 1. Output folder, seed, device; the resolved config beside the outputs.
    if cfg.samples_per_prompt < 2:
        raise UserError("--samples-per-prompt must be >= 2 (a pair needs two answers)")
    rounds = cfg.max_steps if cfg.max_steps > 0 else cfg.rounds  # --max-steps caps the rounds
    if rounds < 1 or cfg.prompts_per_round < 1:
        raise UserError("--rounds and --prompts-per-round must be >= 1")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be > 0, got {cfg.beta}")
    if cfg.reference_free:
        raise UserError("online DPO keeps the reference (drop --reference-free)")
    output = prepare_output(cfg)
    save_config(cfg, output)
    ckpt.seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    # 2. Policy (LoRA: the reference is the adapter-free model; full: a frozen copy).
    model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if not cfg.keep_dropout:
        # the reference (and the sampler) run in eval mode: training forwards with dropout would
        # compute another function, and the first DPO loss would not be ln 2
        disable_dropout(model)
    reference = None if is_lora(model) else copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    trainable, total_params = count_parameters(model)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # 3. Prompts, the labeler, held-out sampling.
    prompts = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length,
                           cfg.skip_invalid)
    # the --sample-prompts file is data too: checked before the labeler's reward model loads
    sampler = (PolicySampler(model, tokenizer, cfg, device, None, reference)
               if cfg.sample_prompts else None)
    labeler = Labeler(cfg, tokenizer, device)
    if sampler is not None and cfg.labeler == "reward_model":
        sampler.reward_fn = labeler.reward

    # 4. Optimiser and schedule over every optimiser step of the run.
    per_round = cfg.dpo_epochs * -(-cfg.prompts_per_round // cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, rounds * per_round, cfg.warmup_steps, cfg.schedule)

    # 5. Resume: weights, optimiser, schedule, RNG; the round's prompts follow from its index.
    start, pairs_seen = 0, 0
    found = ckpt.list_checkpoints(output) if cfg.resume else []
    if found:
        state = ckpt.load_checkpoint(found[-1], model, optimizer, scheduler)
        start, pairs_seen = state["step"], state.get("pairs_seen", 0)
        log.info("resuming from %s (round %d of %d)", found[-1], start, rounds)
    metrics = MetricsLog(output, resume_step=start if cfg.resume else None)
    history: dict[int, dict] = {}

    def run_eval(r: int) -> None:
        if sampler is not None:
            history[r] = sampler.measure(model)
            metrics.log(r, history[r], split="eval")

    if start == 0:
        metrics.log(0, {"train_prompts": len(prompts.ids), "trainable_params": trainable,
                        "total_params": total_params, "labeler": cfg.labeler,
                        "mode": ("lora: reference = adapters disabled" if is_lora(model)
                                 else "full: frozen reference copy"),
                        "rounds": rounds, "device": device}, split="setup")
        run_eval(0)

    # 6. Rounds: sample -> label -> (filter) -> reference log-probs -> DPO steps.
    k = cfg.samples_per_prompt
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    bar = progress_bar(rounds, start, cfg.progress, "online-dpo")
    for r in range(start, rounds):
        t0 = time.time()
        idx = stream_batch_indices(r, len(prompts.ids), cfg.prompts_per_round, cfg.seed)
        with autocast(device, cfg.precision):
            rollout = sample(model, [prompts.ids[i] for i in idx for _ in range(k)], pad_id,
                             eos_id, sampling, with_logprobs=False)
        gen_s = time.time() - t0
        flat = decode_responses(tokenizer, rollout)
        answers = [flat[j * k:(j + 1) * k] for j in range(len(idx))]
        ended = rollout.ended.view(-1, k).tolist()
        labels = labeler([prompts.texts[i] for i in idx], [prompts.categories[i] for i in idx],
                         answers, ended, r)
        groups, dropped, identical = [], 0, 0
        for j, (i, lab) in enumerate(zip(idx, labels)):
            if lab["better"] == lab["worse"] or answers[j][lab["better"]] == \
                    answers[j][lab["worse"]]:
                identical += 1
                continue
            if not keep_pair(lab, cfg):
                dropped += 1
                continue
            g = PreferenceGroup(prompts.texts[i], where=f"round {r + 1}")
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
        row = {"sample_reward": sum(lab["reward"] for lab in labels) / len(labels),
               "pairs_dropped": dropped, "pairs_identical": identical,
               "label_std": sum(lab["std"] for lab in labels) / len(labels),
               "response_length": float(rollout.response_mask.float().sum(1).mean()),
               "gen_s": gen_s}
        if groups:
            refs = reference_logps(model, groups, cfg, pad_id, device, reference)
            steps = []
            for epoch in range(cfg.dpo_epochs):
                order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(
                    cfg.seed * 7919 + r * 31 + epoch)).tolist()
                for s0 in range(0, len(order), cfg.batch_size):
                    ids = order[s0:s0 + cfg.batch_size]
                    batch = make_batch([groups[i] for i in ids], model, cfg, pad_id)
                    steps.append(dpo_step(model, [(batch, torch.cat([refs[i] for i in ids]))],
                                          cfg, device, params, optimizer, scheduler))
            for key in ("loss", "reward_margin", "reward_accuracy", "grad_norm", "lr"):
                row[key] = sum(s[key] for s in steps) / len(steps)
            row["pairs"] = len(groups)
            pairs_seen += len(groups)
        done = r + 1
        row["round_s"] = time.time() - t0
        metrics.log(done, row)
        bar.set_postfix(reward=f"{row['sample_reward']:.2f}", pairs=len(groups))
        bar.update(1)
        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < rounds:
            run_eval(done)
        if cfg.save_every > 0 and done % cfg.save_every == 0 and done < rounds:
            ckpt.save_checkpoint(output, done, model, optimizer, scheduler,
                                 {"pairs_seen": pairs_seen}, keep=cfg.keep_checkpoints)
    bar.close()

    # 7. Final held-out sampling and the plain HF model folder.
    if rounds not in history:
        run_eval(rounds)
    metrics.log(rounds, {"pairs_seen": pairs_seen}, split="summary")
    metrics.close()
    model.eval()
    final, plain = ckpt.save_final(output, model, tokenizer)
    log.info("saved %s", final)
    return {"final": final, "model": plain, "eval": history,
            "metrics": output / "metrics.jsonl", "pairs_seen": pairs_seen}
