"""Stage 1 of RLHF: supervised fine-tuning on demonstrations (``alignkit sft``).

Loss on response tokens only by default, full fine-tuning or LoRA, gradient accumulation with
exact token normalisation, padding-free packing, held-out loss and perplexity, checkpoints that
resume a killed run exactly, metrics.jsonl + TensorBoard, and a plain HF folder in ``final/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignkit.config import SFTConfig
from alignkit.data.sft import load_sft_data
from alignkit.errors import UserError
from alignkit.models.lora import is_lora
from alignkit.training.engine import Trainer, start_run, steps_for_epochs
from alignkit.utils.logs import log
from alignkit.training.policy import load_policy
from alignkit.training.sft import evaluate, sft_step


@dataclass
class SFTResult:
    output: Path
    final: Path
    model: object  # the trained model (LoRA merged in), ready to sample from
    tokenizer: object
    train_losses: dict[int, float] = field(default_factory=dict)
    eval_history: dict[int, dict] = field(default_factory=dict)


def main(cfg: SFTConfig) -> SFTResult:
    # 1. Output folder, resolved config, seed, device.
    run = start_run(cfg)

    # 2. Model and tokenizer; LoRA adapters when asked.
    model, tokenizer = load_policy(cfg, run.device)
    pad_id = tokenizer.pad_token_id

    # 3. Data: read, validate (file:line:field errors), tokenise, split.
    data = load_sft_data(cfg, tokenizer)
    if data.skipped:
        log.warning("skipped %d invalid record(s):\n  %s", len(data.skipped),
                    "\n  ".join(data.skipped[:20]))
    if not data.train:
        raise UserError(f"{cfg.data}: no training examples left")

    # 4. The loop: optimiser, schedule, resume (weights, optimiser, RNG, data position).
    trainer = Trainer(run, model, steps_for_epochs(cfg, len(data.train)), name="sft",
                      sources=[e.where for e in data.train])
    trainer.resume()
    trainer.log_setup({"train_examples": len(data.train), "heldout_examples": len(data.heldout),
                       "skipped_records": len(data.skipped), "lora": is_lora(model),
                       **data.drawn})

    # 5. Train; held-out loss and perplexity before, every --eval-every steps, and at the end.
    trainer.fit(lambda step: sft_step(model, trainer, data.train, pad_id, step),
                evaluate=lambda step: evaluate(model, data.heldout, cfg, pad_id, run.device),
                progress=lambda row: {"loss": f"{row['loss']:.3f}",
                                      "tok_s": f"{row['tokens_per_s']:.0f}"})
    trainer.finish()

    # 6. The plain HF model folder (LoRA merged in).
    final, plain = trainer.save_final(tokenizer)
    return SFTResult(run.output, final, plain, tokenizer,
                     {s: r["loss"] for s, r in trainer.train_history.items()},
                     trainer.eval_history)
