"""``alignkit demo``: the main job, end to end on the packaged default model.

A pipeline of the other stages, each run by its recipe's ``main`` with its own config: the
demo's nested one (``cfg.sft``, ``cfg.reward``, ``cfg.ppo``, ``cfg.dpo``) with the paths between
stages and the demo-wide seed, device and precision filled in. (1) LoRA SFT of
SmolLM2-135M-Instruct on the demonstrations alignkit ships (complete, concise answers; polite
refusals of harmful requests; honest uncertainty), with held-out loss before and after and
answers to unseen prompts side by side; (2) the SFT policy's answers ranked by a simulated panel
and a MiniLM reward ensemble learned from them; (3) PPO with LoRA against that ensemble, with a
plot of the reward-hacking monitor; (4) DPO with LoRA on the same rankings; then base, SFT, PPO,
DPO and best-of-n (SFT samples picked by the ensemble) compared on unseen prompts by gold score
and KL to the SFT policy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
import time
from pathlib import Path

from alignkit.config import DEMO_LABELS, DemoConfig, save_config
from alignkit.data.readers import read_records
from alignkit.generation.simple import generate
from alignkit.generation.vllm_engine import engine_for
from alignkit.models.loading import load_model_and_tokenizer, pick_device, resolve_model
from alignkit.recipes import dpo, ppo, reward, sft
from alignkit.utils.logs import log

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


def label_answers(cfg: DemoConfig, policy, tokenizer, path: Path,
                  engine=None) -> tuple[dict, int]:
    """Stage 2's labels: the policy answers training prompts K times, the hidden gold scorer
    scores the answers and the simulated panel ranks them; returns the agreement report and the
    number of prompts."""
    from alignkit.data.prompts import read_prompts
    from alignkit.feedback.labelling import label_items, write_labels
    from alignkit.feedback.simulated import SimulatedPanel
    from alignkit.generation.responses import sample_responses
    from alignkit.judges.gold import GoldScorer

    items = read_prompts("demo-prompts", cfg.label.prompts)
    sample_responses(policy, tokenizer, items, cfg.label.num_responses, cfg.max_new_tokens,
                     temperature=1.0, top_p=1.0, batch_size=16, seed=cfg.seed, engine=engine)
    scorer = GoldScorer(token_counter=tokenizer)
    panel = SimulatedPanel(seed=cfg.seed, gold_scale=cfg.label.gold_scale, scorer=scorer)
    records = label_items(items, scorer, panel, cfg.label.labels_per_prompt)
    return write_labels(records, path, panel), len(items)


def plot_monitor(metrics_path: Path, png: Path) -> Path | None:
    """Proxy reward, gold score and KL of PPO's held-out monitor over training, one PNG."""
    rows = [r for r in (json.loads(ln) for ln in metrics_path.read_text().splitlines())
            if r.get("split") == "eval"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    panels = [("proxy", "proxy reward (reward-model units)"), ("gold", "gold score (hidden scorer units)"),
              ("kl", "KL to the SFT reference (nats/response)")]
    panels = [(k, label) for k, label in panels if all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(list(axes) if len(panels) > 1 else [axes], panels):
        ax.plot(steps, [r[key] for r in rows], marker="o")
        ax.set_xlabel("PPO step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO on held-out prompts: the reward-hacking monitor", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def compare_policies(cfg: DemoConfig, sft_model, tokenizer, policies: dict,
                     reward_final: Path, device: str, sft_folder: str,
                     engine=None) -> tuple[dict, int]:
    """Each policy answers the same held-out prompts with the same seed: gold score, proxy reward
    (the ensemble), KL to the SFT policy (k1 on its own samples), length; best-of-n draws n SFT
    answers per prompt and keeps the ensemble's favourite (KL: the closed form). ``engine``: a
    vLLM engine that writes every policy's answers (it loads each folder in turn)."""
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.best_of_n import analytic_kl, best_of_n
    from alignkit.evaluation.policy import logprobs_under, measure_policy
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.judges.gold import GoldScorer
    from alignkit.models.reward import RewardFunction

    prompts = load_prompts("demo-prompts-heldout", tokenizer)
    n = min(cfg.compare_prompts, len(prompts.ids))
    prompts = dataclasses.replace(prompts, texts=prompts.texts[:n], ids=prompts.ids[:n],
                                  categories=prompts.categories[:n])
    reward_fn = RewardFunction(str(reward_final), device, cfg.ppo.combine)
    gold = GoldScorer(token_counter=tokenizer)
    sft_model.eval()

    sft_logprobs = logprobs_under(sft_model)
    sampling = SamplingConfig(cfg.max_new_tokens, 1.0)
    table = {}
    for name, spec in policies.items():
        policy = sft_model if spec is None else load_model_and_tokenizer(spec, device)[0]
        if engine is not None:
            engine.serve_folder(spec or sft_folder)
        table[name] = measure_policy(policy, tokenizer, prompts.texts, prompts.ids,
                                     prompts.categories, sft_logprobs, reward_fn, gold, sampling,
                                     seed=cfg.seed + 1, device=device, precision=cfg.precision,
                                     engine=engine)
        if spec is not None:
            del policy
    if cfg.best_of > 1:
        if engine is not None:
            engine.serve_folder(sft_folder)
        picked = best_of_n(sft_model, tokenizer, prompts, reward_fn, cfg.best_of, sampling,
                           cfg.seed + 1, device, cfg.precision, engine=engine)
        rows = list(range(n))
        ended = picked.ended[rows, picked.best]
        scores = gold.score(prompts.texts, picked.picked(), prompts.categories, ended.tolist())
        lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + int(e)
                   for a, e in zip(picked.picked(), ended.tolist())]
        table[f"best-of-{cfg.best_of}"] = {
            "gold": sum(scores) / n, "proxy": float(picked.rewards[rows, picked.best].mean()),
            "kl": analytic_kl(cfg.best_of), "response_length": sum(lengths) / n,
            "ended_fraction": float(ended.float().mean()), "prompts": n}
    return table, n


def validated(cfg):
    """A stage config the pipeline built, checked as the command line checks it."""
    cfg.validate()
    return cfg


def main(cfg: DemoConfig) -> dict:
    started = time.time()
    if cfg.annotate:  # the annotation app instead of training (alignkit.recipes.annotate)
        from alignkit.recipes.annotate import demo_app

        return demo_app(cfg)
    given, cfg = cfg, cfg.shortened() if cfg.quick else cfg
    root = Path(cfg.output)
    # 1. Every stage's own config, derived from the nested one.
    configs = cfg.stage_configs(root)

    # 2. Resolve the model (the default converts once from the packaged GGUF, ~30 s).
    t0 = time.time()
    resolve_model(cfg.model)
    log.info("model %s ready in %.1fs", cfg.model, time.time() - t0)

    # 3. Answers of the starting model to unseen prompts (--rollout-engine vllm: an engine
    #    writes every answer the demo samples itself; PPO runs its own).
    device = pick_device(cfg.device)
    prompts = pick_sample_prompts(cfg.samples)
    engine = engine_for(cfg, cfg.model)
    base_model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    before = generate(base_model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens,
                      engine=engine)
    del base_model

    # 4. Stage 1: SFT with LoRA on the shipped demonstrations; once it has run (an earlier run
    #    it refused to replace keeps its record), the demo's resolved config beside the stages.
    result = sft.main(validated(configs["sft"]))
    save_config(given, root)

    # 5. Answers of the fine-tuned model to the same prompts.
    if engine is not None:
        engine.serve_folder(str(result.final))
    after = generate(result.model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens,
                     engine=engine)

    # 6. Stage 2: the SFT policy answers training prompts K times, a simulated panel ranks the
    #    answers, and a MiniLM reward ensemble learns from the rankings.
    report, n_labelled = label_answers(cfg, result.model, tokenizer, root / DEMO_LABELS, engine)
    if engine is not None:  # PPO starts its own; one engine in memory at a time
        engine.close()
    trained = reward.main(validated(configs["reward"]))
    stage2 = {"report": report, "eval": trained["eval"], "final": trained["final"],
              "labels": root / DEMO_LABELS, "prompts": n_labelled}

    # 7. Stage 3: PPO (LoRA) on the SFT policy against the ensemble, and its monitor's plot.
    stage3 = None
    if not cfg.skip_ppo:
        rl = ppo.main(validated(configs["ppo"]))
        stage3 = {"final": rl["final"], "best": rl["best"], "monitor": rl["monitor"],
                  "png": plot_monitor(rl["metrics"], root / "ppo" / "monitor.png")}

    # 8. Stage 4: DPO (LoRA) on the same rankings.
    stage4 = None
    if not cfg.skip_dpo:
        direct = dpo.main(validated(configs["dpo"]))
        stage4 = {"final": direct["final"],
                  "eval": direct["eval"][max(direct["eval"])] if direct["eval"] else {}}

    # 9. Every policy on the same unseen prompts: gold score and KL to SFT.
    policies = {"base": cfg.model, "sft": None}
    if stage3 is not None:
        policies["ppo"] = str(stage3["final"])
    if stage4 is not None:
        policies["dpo"] = str(stage4["final"])
    engine = engine_for(cfg, str(result.final))
    table, n_compare = compare_policies(cfg, result.model, tokenizer, policies, stage2["final"],
                                        device, str(result.final), engine)
    if engine is not None:
        engine.close()

    # 10. Report: held-out loss before/after, the answers side by side, the reward ensemble,
    #     the policies compared.
    steps = sorted(result.eval_history)
    first, last = result.eval_history[steps[0]], result.eval_history[steps[-1]]
    width = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 6) // 2))
    stages = ["SFT", "reward"] + ["PPO"] * (stage3 is not None) + ["DPO"] * (stage4 is not None)
    lines = ["", "=" * (2 * width + 5), f"alignkit demo: {', '.join(stages)} (LoRA policies) on "
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
              f"stage 2: {stage2['prompts']} prompts x {cfg.label.num_responses} SFT answers, ranked by a "
              f"simulated panel ({len(rep['per_annotator'])} annotators labelled) -> {rep['pairs']} pairs",
              f"labels agree with the hidden gold scorer: {rep['gold_agreement']:.3f}   "
              f"Bayes-optimal accuracy (ceiling): {rep['bayes_optimal']:.3f}",
              f"{cfg.reward.ensemble}-member MiniLM reward ensemble, held-out pairs {ev.get('pairs', 0)}: "
              f"accuracy {ev.get('accuracy', float('nan')):.3f} "
              f"({ev.get('accuracy', float('nan')) / max(rep['bayes_optimal'], 1e-9):.0%} of the ceiling), "
              f"log-loss {ev.get('log_loss', float('nan')):.3f}, ECE {ev.get('ece', float('nan')):.3f}"
              + (f", spread flags mistakes AUROC {ev['std_auroc_vs_mistakes']:.2f}"
                 if "std_auroc_vs_mistakes" in ev else ""), ""]
    lines += ["-" * (2 * width + 5)]
    if stage3 is not None:
        lines.append(f"stage 3: PPO with LoRA, {cfg.ppo.max_steps} steps x {cfg.ppo.batch_size} "
                     f"prompts, reward = ensemble {cfg.ppo.combine}, KL coefficient "
                     f"{cfg.ppo.kl_coef}")
    if stage4 is not None:
        ev4 = stage4["eval"]
        lines.append(f"stage 4: DPO with LoRA, {cfg.dpo.max_steps} steps, beta {cfg.dpo.beta}, on the "
                     f"panel's rankings; held-out pairs: implicit-reward accuracy "
                     f"{ev4.get('reward_accuracy', float('nan')):.3f}")
    lines += [f"held-out comparison on {n_compare} unseen prompts (one sampled answer each, same "
              "seed; best-of-n: n SFT answers, the ensemble picks):",
              f"  {'policy':<9} {'gold':>6} {'proxy':>7} {'KL to SFT':>10} {'length':>7} "
              f"{'ended':>6}"]
    for name, row in table.items():
        lines.append(f"  {name:<9} {row['gold']:>6.3f} {row['proxy']:>7.3f} "
                     f"{row['kl']:>10.2f} {row['response_length']:>7.1f} "
                     f"{row['ended_fraction']:>6.0%}")
    if stage3 is not None and stage3["png"]:
        lines.append(f"monitor plot (proxy, gold, KL over PPO steps): {stage3['png']}")
    lines.append("")
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
    summary["policies"] = {k: {m: v for m, v in row.items() if m != "samples"}
                           for k, row in table.items()}
    if stage3 is not None:
        summary["ppo_model"] = str(stage3["final"])
        summary["ppo_monitor"] = stage3["monitor"]
    if stage4 is not None:
        summary["dpo_model"] = str(stage4["final"])
        summary["dpo_eval"] = stage4["eval"]
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    lines.append(f"fine-tuned model: {result.final}  (a plain Hugging Face folder)")
    lines.append(f"reward model: {stage2['final']}   labels: {stage2['labels']}")
    lines.append(f"metrics: {root}/*/metrics.jsonl   time: {summary['seconds']:.0f}s")
    print("\n".join(lines))

    # 11. The run report: one self-contained HTML page (plus PNGs) for the whole demo folder.
    from alignkit.evaluation.report import build_report

    # the adversarial suite and judged win rates take another ~12 min on 2 cores: offered, not
    # run; the report's path stays the last line the demo prints
    evaluated = ",".join(f"{k}={result.final if v is None else v}" for k, v in policies.items())
    print(f"next: alignkit eval --policies {evaluated} --baseline sft --reward-model "
          f"{stage2['final']} --output {root / 'eval'}  (then alignkit report {root})")
    summary["report"] = str(build_report(root).path)
    print(f"report: {summary['report']}")
    return summary
