"""Stage 1 of RLHF: supervised fine-tuning on demonstrations (``alignkit sft``).

Loss on response tokens only by default, full fine-tuning or LoRA, gradient accumulation with
exact token normalisation, padding-free packing, held-out loss and perplexity, checkpoints that
resume a killed run exactly, metrics.jsonl + TensorBoard, and a plain HF folder in ``final/``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.config import SFTConfig, save_config
from alignkit.data.collate import LMBatch, collate_packed, collate_padded
from alignkit.data.sft import load_sft_data, micro_batch_indices
from alignkit.data.tokenize import TokenizedExample
from alignkit.errors import UserError
from alignkit.losses.sft import sft_loss_sum
from alignkit.models import checkpoint as ckpt
from alignkit.models.lm import hidden_states, logits_at
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.models.lora import add_lora, count_parameters, is_lora
from alignkit.recipes.common import (autocast, log, make_optimizer, optimizer_step,
                                     prepare_output, progress_bar)
from alignkit.utils.metrics import MetricsLog
from alignkit.utils.schedule import make_scheduler


@dataclass
class SFTResult:
    output: Path
    final: Path
    model: object  # the trained model (LoRA merged in), ready to sample from
    tokenizer: object
    train_losses: dict[int, float] = field(default_factory=dict)
    eval_history: dict[int, dict] = field(default_factory=dict)


def make_batch(examples: list[TokenizedExample], cfg: SFTConfig, pad_id: int) -> LMBatch:
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


@torch.no_grad()
def evaluate(model, examples: list[TokenizedExample], cfg: SFTConfig, pad_id: int,
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


def main(cfg: SFTConfig) -> SFTResult:
    # 1. Output folder, seed, device; the resolved config goes beside the outputs.
    output = prepare_output(cfg)
    save_config(cfg, output)
    ckpt.seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    # 2. Model and tokenizer; LoRA adapters when asked.
    model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    model.train()
    trainable, total_params = count_parameters(model)
    pad_id = tokenizer.pad_token_id

    # 3. Data: read, validate (file:line:field errors), tokenise, split.
    data = load_sft_data(cfg, tokenizer)
    if data.skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(data.skipped),
                    "\n  ".join(data.skipped[:20]))
    if not data.train:
        raise UserError(f"{cfg.data}: no training examples left")

    # 4. Optimiser and schedule; the step count follows --max-steps or --epochs.
    micro_per_epoch = -(-len(data.train) // cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
        1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.schedule)

    # 5. Resume: parameters, optimiser, scheduler, RNG and data position from the newest checkpoint.
    start_step, tokens_seen = 0, 0
    found = ckpt.list_checkpoints(output) if cfg.resume else []
    if found:
        state = ckpt.load_checkpoint(found[-1], model, optimizer, scheduler)
        start_step, tokens_seen = state["step"], state.get("tokens_seen", 0)
        log.info("resuming from %s (step %d of %d)", found[-1], start_step, total_steps)
    metrics = MetricsLog(output, resume_step=start_step if cfg.resume else None)
    if start_step == 0:
        metrics.log(0, {"train_examples": len(data.train), "heldout_examples": len(data.heldout),
                        "skipped_records": len(data.skipped), "trainable_params": trainable,
                        "total_params": total_params, "lora": is_lora(model),
                        "total_steps": total_steps, "device": device}, split="setup")

    # 6. Held-out loss before training.
    result = SFTResult(output, output / "final", model, tokenizer)
    if start_step == 0 and data.heldout:
        result.eval_history[0] = evaluate(model, data.heldout, cfg, pad_id, device)
        metrics.log(0, result.eval_history[0], split="eval")

    # 7. Train: accumulate micro-batches, normalise by the step's target tokens, clip, step.
    bar = progress_bar(total_steps, start_step, cfg.progress, "sft")
    started, tokens_at_start = time.time(), tokens_seen
    for step in range(start_step, total_steps):
        t0 = time.time()
        micro = [make_batch([data.train[i] for i in micro_batch_indices(
                    step * cfg.grad_accum + j, len(data.train), cfg.batch_size, cfg.seed)],
                    cfg, pad_id) for j in range(cfg.grad_accum)]
        step_targets = sum(b.num_targets for b in micro)
        loss_total = 0.0
        for batch in micro:
            batch = batch.to(device)
            with autocast(device, cfg.precision):
                loss_sum, _ = batch_loss_sum(model, batch)
            (loss_sum / step_targets).backward()
            loss_total += float(loss_sum.detach())
        grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)

        done = step + 1
        step_tokens = sum(b.num_tokens for b in micro)
        tokens_seen += step_tokens
        loss = loss_total / step_targets
        result.train_losses[done] = loss
        elapsed = time.time() - t0
        if done % cfg.log_every == 0 or done == total_steps:
            metrics.log(done, {"loss": loss, "lr": lr, "grad_norm": grad_norm,
                               "tokens": step_tokens, "target_tokens": step_targets,
                               "computed_tokens": sum(b.computed_tokens for b in micro),
                               "tokens_per_s": step_tokens / max(elapsed, 1e-9),
                               "step_time_s": elapsed})
        rate = (tokens_seen - tokens_at_start) / max(time.time() - started, 1e-9)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
        bar.update(1)

        if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < total_steps and data.heldout:
            result.eval_history[done] = evaluate(model, data.heldout, cfg, pad_id, device)
            metrics.log(done, result.eval_history[done], split="eval")
        if cfg.save_every > 0 and done % cfg.save_every == 0 and done < total_steps:
            ckpt.save_checkpoint(output, done, model, optimizer, scheduler,
                                 {"tokens_seen": tokens_seen}, keep=cfg.keep_checkpoints)
    bar.close()

    # 8. Final held-out evaluation and the plain HF model folder.
    if data.heldout and total_steps not in result.eval_history:
        result.eval_history[total_steps] = evaluate(model, data.heldout, cfg, pad_id, device)
        metrics.log(total_steps, result.eval_history[total_steps], split="eval")
    metrics.log(total_steps, {"tokens_seen": tokens_seen,
                              "train_time_s": time.time() - started}, split="summary")
    metrics.close()
    model.eval()
    result.final, result.model = ckpt.save_final(output, model, tokenizer)
    log.info("saved %s", result.final)
    return result
