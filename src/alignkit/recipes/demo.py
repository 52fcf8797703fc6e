"""``alignkit demo``: the main job, end to end on the packaged default model.

It grows with every stage. Today: LoRA SFT of SmolLM2-135M-Instruct on the demonstrations alignkit
ships (complete, concise answers; polite refusals of harmful requests; honest uncertainty), then
held-out loss before and after and answers to unseen prompts side by side.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
import time

from alignkit.config import DemoConfig
from alignkit.data.readers import read_records
from alignkit.generation.simple import generate
from alignkit.models.loading import load_model_and_tokenizer, pick_device, resolve_model
from alignkit.recipes import sft
from alignkit.recipes.common import log


def pick_sample_prompts(n: int) -> list[dict]:
    """Unseen held-out prompts, alternating categories so refusals and uncertainty show up."""
    records = [r.fields for r in read_records("demo-prompts-heldout")]
    by_cat: dict[str, list[dict]] = {}
    for rec in records:
        by_cat.setdefault(rec.get("category", "other"), []).append(rec)
    order = [c for c in ("helpful", "harmful", "uncertain") if c in by_cat] + \
        sorted(c for c in by_cat if c not in ("helpful", "harmful", "uncertain"))
    picked, i = [], 0
    while len(picked) < n and any(by_cat[c][i:] for c in order):
        for c in order:
            if i < len(by_cat[c]) and len(picked) < n:
                picked.append(by_cat[c][i])
        i += 1
    return picked


def side_by_side(left: str, right: str, width: int) -> str:
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"  {x:<{width}} | {y}" for x, y in zip(a, b))


def main(cfg: DemoConfig) -> dict:
    started = time.time()
    if cfg.quick:
        cfg = dataclasses.replace(cfg, max_steps=min(cfg.max_steps, 8), samples=min(cfg.samples, 2),
                                  eval_every=0, save_every=0, warmup_steps=min(cfg.warmup_steps, 2))
    # 1. Resolve the model (the default converts once from the packaged GGUF, ~30 s).
    t0 = time.time()
    resolve_model(cfg.model)
    log.info("model %s ready in %.1fs", cfg.model, time.time() - t0)

    # 2. Answers of the starting model to unseen prompts.
    device = pick_device(cfg.device)
    prompts = pick_sample_prompts(cfg.samples)
    base_model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    before = generate(base_model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens)
    del base_model

    # 3. Stage 1: SFT with LoRA on the shipped demonstrations.
    result = sft.main(cfg)

    # 4. Answers of the fine-tuned model to the same prompts.
    after = generate(result.model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens)

    # 5. Report: held-out loss before/after and the answers side by side.
    steps = sorted(result.eval_history)
    first, last = result.eval_history[steps[0]], result.eval_history[steps[-1]]
    width = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 6) // 2))
    lines = ["", "=" * (2 * width + 5), "alignkit demo: stage 1 (SFT, LoRA) on "
             f"{cfg.model}", "=" * (2 * width + 5),
             f"held-out loss        {first['loss']:.3f} -> {last['loss']:.3f}",
             f"held-out perplexity  {first['perplexity']:.2f} -> {last['perplexity']:.2f}",
             f"answers that end (EOS within {cfg.max_new_tokens} tokens): "
             f"{sum(g.ended for g in before)}/{len(before)} -> {sum(g.ended for g in after)}/{len(after)}",
             ""]
    for p, b, a in zip(prompts, before, after):
        lines.append(f"[{p.get('category', '')}] {p['prompt']}")
        lines.append(side_by_side(f"BEFORE ({b.num_tokens} tok{'' if b.ended else ', cut'})",
                                  f"AFTER SFT ({a.num_tokens} tok{'' if a.ended else ', cut'})", width))
        lines.append(side_by_side(b.text, a.text, width))
        lines.append("")
    summary = {
        "model": cfg.model, "steps": steps[-1], "heldout_loss_before": first["loss"],
        "heldout_loss_after": last["loss"], "heldout_ppl_before": first["perplexity"],
        "heldout_ppl_after": last["perplexity"],
        "samples": [{"prompt": p["prompt"], "category": p.get("category"),
                     "before": b.text, "after": a.text, "before_ended": b.ended,
                     "after_ended": a.ended} for p, b, a in zip(prompts, before, after)],
        "final_model": str(result.final), "seconds": round(time.time() - started, 1),
    }
    (result.output / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    lines.append(f"fine-tuned model: {result.final}  (a plain Hugging Face folder)")
    lines.append(f"metrics: {result.output / 'metrics.jsonl'}   time: {summary['seconds']:.0f}s")
    print("\n".join(lines))
    return summary
