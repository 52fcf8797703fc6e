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
the gold score. Checkpoints hold weights, optimiser, schedule and RNG; every answer is drawn
from its own stream and every prompt's panel seeded by (seed, round, the prompt's place in the
round), so a killed run resumes exactly, and under ``torchrun`` (each process samples, labels and
trains on its share of a round) the run is the one-process run, at any number of processes. The
pieces live in ``alignkit.training.online`` and ``alignkit.training.preference``.
"""

from __future__ import annotations

import time

import torch

from alignkit.config import OnlineDPOConfig
from alignkit.data.mixture import Draw
from alignkit.data.prompts import load_prompts
from alignkit.data.sft import stream_batch_indices
from alignkit.errors import UserError
from alignkit.models.reward import RewardFunction
from alignkit.training.engine import Trainer, start_run
from alignkit.training.online import Labeler, online_round, step_share
from alignkit.training.policy import frozen_reference, load_policy, reference_mode
from alignkit.training.preference import PolicySampler, preference_step, reference_logps
from alignkit.training.rollout import rollout_engine
from alignkit.training.selection import best_checkpoint, check_selection


def check_flags(cfg: OnlineDPOConfig) -> None:
    if cfg.samples_per_prompt < 2:
        raise UserError("--samples-per-prompt must be >= 2 (a pair needs two answers)")
    if rounds_of(cfg) < 1 or cfg.prompts_per_round < 1:
        raise UserError("--rounds and --prompts-per-round must be >= 1")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be > 0, got {cfg.beta}")
    if cfg.reference_free:
        raise UserError("online DPO keeps the reference (drop --reference-free)")
    check_selection(cfg, scored=bool(cfg.select_reward_model) or cfg.labeler == "reward_model")


def rounds_of(cfg: OnlineDPOConfig) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else cfg.rounds  # --max-steps caps the rounds


def main(cfg: OnlineDPOConfig) -> dict:
    # 1. Flags, output folder, resolved config, seed, device.
    run = start_run(cfg, validate=lambda: check_flags(cfg))
    device = run.device

    # 2. Policy (LoRA: the reference is the adapter-free model; full: a frozen copy).
    model, tokenizer = load_policy(cfg, device)
    reference = frozen_reference(model)
    pad_id = tokenizer.pad_token_id

    # 3. Prompts, held-out sampling (the --sample-prompts file is data too: checked before the
    #    labeler's reward model loads), the labeler.
    prompts = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length,
                           cfg.skip_invalid, Draw.of(cfg))
    sampler = (PolicySampler(model, tokenizer, cfg, device, None, reference, world=run.world)
               if cfg.sample_prompts else None)
    labeler = Labeler(cfg, tokenizer, device)
    if sampler is not None:  # the held-out answers' proxy: --select-reward-model or the labeler
        sampler.reward_fn = (RewardFunction(cfg.select_reward_model, device) if
                             cfg.select_reward_model else getattr(labeler, "reward", None))
    engine = rollout_engine(cfg, model)  # --rollout-engine vllm: it takes each round's weights
    if sampler is not None:
        sampler.engine = engine

    # 4. The loop, one step per round: optimiser and schedule over every DPO step of the run;
    #    resume (a round's prompts and labels follow from its index).
    per_round = cfg.dpo_epochs * -(-cfg.prompts_per_round // cfg.batch_size)
    trainer = Trainer(run, model, rounds_of(cfg), name="online-dpo", counter="pairs",
                      optimizer_steps_per_step=per_round)
    chooser = best_checkpoint(cfg, trainer, tokenizer)  # --select-by: best/ among evaluations
    trainer.resume()
    trainer.hold_frozen(reference)  # under FSDP the reference copy is sharded too
    trainer.log_setup({"train_prompts": len(prompts.ids), "labeler": cfg.labeler,
                       "mode": reference_mode(model), "rounds": rounds_of(cfg), **prompts.drawn})

    # 5. A round: sample -> label -> (filter) -> reference log-probs -> DPO steps. Under
    #    torchrun each process samples, labels and scores the reference for its share of the
    #    round's prompts (every process then holds the whole round), and each DPO step's groups
    #    are shared out among the processes.
    world = run.world

    def train_round(r: int) -> dict:
        t0 = time.time()
        idx = stream_batch_indices(r, len(prompts.ids), cfg.prompts_per_round, cfg.seed)
        with trainer.unsharded():  # sampling and reference passes on the whole weights
            groups, stats = online_round(model, tokenizer, prompts, idx, labeler, cfg, r,
                                         device, world, engine)
            refs = (reference_logps(model, groups, cfg, pad_id, device, reference, world=world)
                    if groups else [])
        row = {**stats, "pairs": len(groups)}
        if groups:
            steps = []
            for epoch in range(cfg.dpo_epochs):
                order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(
                    cfg.seed * 7919 + r * 31 + epoch)).tolist()
                for s0 in range(0, len(order), cfg.batch_size):
                    micro = step_share(order[s0:s0 + cfg.batch_size], groups, refs, model, cfg,
                                       pad_id, world)
                    step = preference_step(model, micro, cfg, trainer)
                    steps.append({**step, **trainer.optimizer_step()})
            for key in ("loss", "reward_margin", "reward_accuracy", "grad_norm", "lr"):
                row[key] = sum(s[key] for s in steps) / len(steps)
        row["round_s"] = time.time() - t0
        return row

    def evaluate(r: int) -> dict | None:
        row = sampler.measure(model) if sampler is not None else None
        if chooser is not None and row is not None:
            chooser(r, row)
        return row

    trainer.fit(train_round, evaluate,
                progress=lambda row: {"reward": f"{row['sample_reward']:.2f}",
                                      "pairs": row["pairs"]})
    if chooser is not None and chooser.readings:  # the choice against every evaluation
        trainer.log(trainer.state.step, chooser.best_row(), split="best")
    trainer.finish()

    # 6. The plain HF model folder (LoRA merged in); best/ when --select-by kept one.
    final, plain = trainer.save_final(tokenizer)
    best = run.output / "best"
    return {"final": final, "model": plain, "eval": trainer.eval_history,
            "best": best if chooser is not None and best.exists() else None,
            "metrics": run.output / "metrics.jsonl",
            "pairs_seen": trainer.state.counters["pairs_seen"]}
