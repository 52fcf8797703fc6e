"""Supervised fine-tuning pieces (``alignkit sft``): batches (packed when that saves work), the
summed next-token loss over target tokens, one step's forward/backward with exact token
normalisation, and held-out loss and perplexity.

``cfg`` is an ``SFTConfig``.
"""

from __future__ import annotations

import math

import torch

from alignkit.data.collate import LMBatch, collate_packed, collate_padded
from alignkit.data.tokenize import TokenizedExample
from alignkit.losses.sft import sft_loss_sum
from alignkit.models.lm import hidden_states, logits_at
from alignkit.models.precision import autocast


def make_batch(examples: list[TokenizedExample], cfg, pad_id: int) -> LMBatch:
    """Packed rows when they save real work, else plain padding. Packing needs a dense
    block-diagonal mask (attention over whole rows), so it pays only when it removes at least
    15% of the positions a padded batch would run (padding, or a shared prompt prefix)."""
    if not cfg.packing:
        return collate_padded(examples, pad_id)
    packed = collate_packed(examples, cfg.pack_length or cfg.max_length, pad_id,
                            share_prefix=cfg.share_prefix)
    padded_positions = len(examples) * max(len(e) for e in examples)
    if packed.input_ids.numel() <= 0.85 * padded_positions:
        return packed
    return collate_padded(examples, pad_id)


def batch_loss_sum(model, batch: LMBatch) -> tuple[torch.Tensor, int]:
    """Summed nll of the batch's target tokens; the LM head runs only at target positions."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    keep = batch.targets != -100
    return sft_loss_sum(logits_at(model, hidden[keep]), batch.targets[keep])


def sft_step(model, trainer, examples: list[TokenizedExample], pad_id: int, step: int) -> dict:
    """Forward and backward passes of one optimiser step: this process's micro-batches, each
    loss sum divided by the target tokens of the whole step, across processes too (so that
    accumulation and data parallelism are exact)."""
    micro = [make_batch([examples[i] for i in ids], trainer.cfg, pad_id)
             for ids in trainer.micro_batches(step, len(examples),
                                              lengths=[len(e.input_ids) for e in examples])]
    local = [sum(b.num_targets for b in micro), sum(b.num_tokens for b in micro),
             sum(b.computed_tokens for b in micro), len(micro)]
    step_targets, step_tokens, step_computed, step_micro = trainer.sum(local)
    loss_total = 0.0
    for i, batch in enumerate(micro):
        batch = batch.to(trainer.device)
        with trainer.accumulate(last=i == len(micro) - 1):
            with trainer.autocast():
                loss_sum, _ = trainer.forward(batch_loss_sum, batch)
            trainer.backward(loss_sum / step_targets)
        loss_total += float(loss_sum.detach())
    (loss_total,) = trainer.sum([loss_total])
    return {"loss": loss_total / step_targets, "tokens": int(step_tokens),
            "target_tokens": int(step_targets), "computed_tokens": int(step_computed),
            "micro_batches": int(step_micro)}


@torch.no_grad()
def evaluate(model, examples: list[TokenizedExample], cfg, pad_id: int,
             device: str) -> dict[str, float]:
    """Held-out token-level loss and perplexity."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        batch = make_batch(examples[i:i + cfg.batch_size], cfg, pad_id).to(device)
        with autocast(device, cfg.precision):
            loss_sum, n = batch_loss_sum(model, batch)
        total += float(loss_sum)
        count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
