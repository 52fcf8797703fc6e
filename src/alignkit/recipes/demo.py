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
from pathlib import Path

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


def preference_stage(cfg: DemoConfig, root: Path, policy, tokenizer) -> dict:
    from alignkit.config import RewardConfig
    from alignkit.feedback.simulated import SimulatedPanel
    from alignkit.judges.gold import GoldScorer
    from alignkit.recipes import label, reward

    items = label.read_prompts("demo-prompts", cfg.label_prompts)
    label.sample_responses(policy, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                           temperature=1.0, top_p=1.0, batch_size=16, seed=cfg.seed)
    scorer = GoldScorer(token_counter=tokenizer)
    panel = SimulatedPanel(seed=cfg.seed, gold_scale=cfg.gold_scale, scorer=scorer)
    labels_path = root / "prefs.jsonl"
    report = label.write_labels(label.label_items(items, scorer, panel), labels_path, panel)
    rcfg = RewardConfig(model="minilm", data=str(labels_path), output=str(root / "reward"),
                        ensemble=cfg.reward_ensemble, max_steps=cfg.reward_steps,
                        lr=cfg.reward_lr, warmup_steps=2, eval_fraction=0.2, eval_every=0,
                        save_every=0, seed=cfg.seed, progress=cfg.progress, overwrite=True,
                        device=cfg.device)
    out = reward.main(rcfg)
    return {"report": report, "eval": out["eval"], "final": out["final"], "labels": labels_path,
            "prompts": len(items)}


def main(cfg: DemoConfig) -> dict:
    started = time.time()
    if cfg.quick:
        cfg = dataclasses.replace(cfg, max_steps=min(cfg.max_steps, 8), samples=min(cfg.samples, 2),
                                  eval_every=0, save_every=0, warmup_steps=min(cfg.warmup_steps, 2),
                                  label_prompts=min(cfg.label_prompts, 10),
                                  reward_steps=min(cfg.reward_steps, 4))
    root = Path(cfg.output)
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
    result = sft.main(dataclasses.replace(cfg, output=str(root / "sft")))

    # 4. Answers of the fine-tuned model to the same prompts.
    after = generate(result.model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens)

    # 5. Stage 2: the SFT policy answers training prompts K times, a simulated panel ranks the
    #    answers, and a MiniLM reward ensemble learns from the rankings.
    stage2 = preference_stage(cfg, root, result.model, tokenizer)

    # 6. Report: held-out loss before/after, the answers side by side, the reward ensemble.
    steps = sorted(result.eval_history)
    first, last = result.eval_history[steps[0]], result.eval_history[steps[-1]]
    width = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 6) // 2))
    lines = ["", "=" * (2 * width + 5), "alignkit demo: stage 1 (SFT, LoRA) and stage 2 (reward) on "
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
    ev, rep = stage2["eval"], stage2["report"]
    lines += ["-" * (2 * width + 5),
              f"stage 2: {stage2['prompts']} prompts x {cfg.num_responses} SFT answers, ranked by a "
              f"simulated panel ({len(rep['per_annotator'])} annotators labelled) -> {rep['pairs']} pairs",
              f"labels agree with the hidden gold scorer: {rep['gold_agreement']:.3f}   "
              f"Bayes-optimal accuracy (ceiling): {rep['bayes_optimal']:.3f}",
              f"{cfg.reward_ensemble}-member MiniLM reward ensemble, held-out pairs {ev.get('pairs', 0)}: "
              f"accuracy {ev.get('accuracy', float('nan')):.3f} "
              f"({ev.get('accuracy', float('nan')) / max(rep['bayes_optimal'], 1e-9):.0%} of the ceiling), "
              f"log-loss {ev.get('log_loss', float('nan')):.3f}, ECE {ev.get('ece', float('nan')):.3f}"
              + (f", spread flags mistakes AUROC {ev['std_auroc_vs_mistakes']:.2f}"
                 if "std_auroc_vs_mistakes" in ev else ""), ""]
    summary = {
        "model": cfg.model, "steps": steps[-1], "heldout_loss_before": first["loss"],
        "heldout_loss_after": last["loss"], "heldout_ppl_before": first["perplexity"],
        "heldout_ppl_after": last["perplexity"],
        "samples": [{"prompt": p["prompt"], "category": p.get("category"),
                     "before": b.text, "after": a.text, "before_ended": b.ended,
                     "after_ended": a.ended} for p, b, a in zip(prompts, before, after)],
        "final_model": str(result.final), "seconds": round(time.time() - started, 1),
        "labels": rep, "reward_eval": ev, "reward_model": str(stage2["final"]),
    }
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    lines.append(f"fine-tuned model: {result.final}  (a plain Hugging Face folder)")
    lines.append(f"reward model: {stage2['final']}   labels: {stage2['labels']}")
    lines.append(f"metrics: {root}/*/metrics.jsonl   time: {summary['seconds']:.0f}s")
    print("\n".join(lines))
    return summary
