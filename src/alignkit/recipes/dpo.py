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
prompts. The pieces live in ``alignkit.training.preference``.
"""

from __future__ import annotations

import logging

import torch

from alignkit.config import DPOConfig
from alignkit.data.mixture import Draw
from alignkit.data.preferences import load_preference_groups, split_groups
from alignkit.errors import UserError
from alignkit.training.engine import Trainer, start_run, steps_for_epochs
from alignkit.models.lora import is_lora
from alignkit.models.reward import RewardFunction
from alignkit.training.policy import load_policy
from alignkit.training.preference import (PolicySampler, cached_reference, drop_empty_pairs,
                                          drop_ties, evaluate_pairs, make_batch,
                                          preference_step)
from alignkit.training.selection import best_checkpoint, check_selection

log = logging.getLogger("alignkit.dpo")


def check_flags(cfg: DPOConfig) -> None:
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
    check_selection(cfg, scored=bool(cfg.select_reward_model))


def load_pairs(cfg: DPOConfig, tokenizer):
    """Train and held-out prompt groups (file:line:field errors), without comparisons the loss
    cannot learn from: an empty response (unless --keep-empty), a tie (all losses but
    sigmoid). Returns (train, held-out, counts of what was skipped and what was drawn)."""
    draw = Draw.of(cfg)  # --seed, --oversample, --mixture-size; draw.report: what was drawn
    groups, skipped = load_preference_groups(cfg.data, tokenizer, "policy", cfg.chat,
                                             cfg.max_length, cfg.skip_invalid, draw=draw)
    if skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(skipped), "\n  ".join(skipped[:20]))
    if cfg.eval_data:
        train = groups
        heldout, _ = load_preference_groups(cfg.eval_data, tokenizer, "policy", cfg.chat,
                                            cfg.max_length, cfg.skip_invalid,
                                            draw=draw.for_eval())
    else:
        train, heldout = split_groups(groups, cfg.eval_fraction, cfg.seed)
    counts = {"skipped_records": len(skipped), "skipped_empty_pairs": 0, "skipped_ties": 0,
              **draw.report}
    if not cfg.keep_empty:
        train, dropped = drop_empty_pairs(train)
        heldout, dropped_eval = drop_empty_pairs(heldout)
        counts["skipped_empty_pairs"] = dropped + dropped_eval
        if dropped + dropped_eval:
            log.warning("skipped %d comparison(s) with an empty response (--keep-empty keeps "
                        "them)", dropped + dropped_eval)
    if cfg.loss != "sigmoid":
        train, ties = drop_ties(train)
        heldout, ties_eval = drop_ties(heldout)
        counts["skipped_ties"] = ties + ties_eval
        if ties + ties_eval:
            log.warning("skipped %d tie(s): --loss %s needs a preferred response (sigmoid "
                        "learns ties as soft labels)", ties + ties_eval, cfg.loss)
    if not train:
        raise UserError(f"{cfg.data}: no training comparisons left")
    return train, heldout, counts


def main(cfg: DPOConfig) -> dict:
    # 1. Flags, output folder, resolved config, seed, device.
    run = start_run(cfg, validate=lambda: check_flags(cfg))
    device = run.device

    # 2. Policy and tokenizer; LoRA adapters when asked (then the reference is adapter-free).
    model, tokenizer = load_policy(cfg, device)
    pad_id = tokenizer.pad_token_id

    # 3. Data: validated, tokenised per prompt group, split by prompt. The --sample-prompts file
    #    is data too: checked before the reference log-probs are computed.
    train, heldout, skipped = load_pairs(cfg, tokenizer)
    proxy = RewardFunction(cfg.select_reward_model, device) if cfg.select_reward_model else None
    sampler = (PolicySampler(model, tokenizer, cfg, device, reward_fn=proxy, world=run.world)
               if cfg.sample_prompts else None)

    # 4. The data was accepted: the output folder and config.yaml (with --overwrite the earlier
    #    run's outputs and caches go first). Reference log-probs, once, before any update (cached
    #    for a resumed run; under torchrun each process computes its share).
    run.commit()
    ref_train, ref_heldout = ([], []) if cfg.reference_free else cached_reference(
        model, train, heldout, cfg, pad_id, device, run.output, write=run.is_main,
        world=run.world)

    # 5. The loop: optimiser, schedule, resume; the data position is a function of the step.
    trainer = Trainer(run, model, steps_for_epochs(cfg, len(train)), name="dpo", counter="pairs",
                      sources=[g.where for g in train])
    chooser = best_checkpoint(cfg, trainer, tokenizer)  # --select-by: best/ among evaluations
    trainer.resume()
    trainer.log_setup({"train_prompts": len(train), "heldout_prompts": len(heldout),
                       "train_pairs": sum(len(g.pairs) for g in train),
                       "heldout_pairs": sum(len(g.pairs) for g in heldout), **skipped,
                       "mode": ("lora: reference = adapters disabled" if is_lora(model) else
                                "full: reference log-probs cached from the starting weights"),
                       "loss": cfg.loss, "beta": cfg.beta})

    # 6. Train: whole prompt groups per micro-batch; the step's loss is the mean over its pairs.
    def train_step(step: int) -> dict:
        micro = [(make_batch([train[i] for i in ids], model, cfg, pad_id),
                  None if cfg.reference_free else torch.cat([ref_train[i] for i in ids]))
                 for ids in trainer.micro_batches(step, len(train),
                                                  lengths=[g.num_tokens for g in train])]
        return preference_step(model, micro, cfg, trainer)

    def evaluate(step: int) -> dict:
        row = evaluate_pairs(model, heldout, ref_heldout, cfg, pad_id, device) if heldout else {}
        row.update(sampler.measure(model) if sampler is not None else {})
        if chooser is not None:
            chooser(step, row)
        return row

    trainer.fit(train_step, evaluate,
                progress=lambda row: {"loss": f"{row['loss']:.3f}",
                                      "acc": f"{row['reward_accuracy']:.2f}"})
    if chooser is not None and chooser.readings:  # the choice against every evaluation
        trainer.log(trainer.state.step, chooser.best_row(), split="best")
    trainer.finish()

    # 7. The plain HF model folder (LoRA merged in); best/ when --select-by kept one.
    final, plain = trainer.save_final(tokenizer)
    best = run.output / "best"
    return {"final": final, "model": plain, "tokenizer": tokenizer,
            "best": best if chooser is not None and best.exists() else None,
            "eval": trainer.eval_history, "metrics": run.output / "metrics.jsonl"}
