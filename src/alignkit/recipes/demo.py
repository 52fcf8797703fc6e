"""``alignkit demo``: the main job, end to end on the packaged default model.

A pipeline of the other stages, each run by its recipe's ``main`` with its own config: the
demo's nested one (``cfg.sft``, ``cfg.reward``, ``cfg.ppo``, ``cfg.dpo``) with the paths between
stages and the demo-wide seed, device and precision filled in. (1) LoRA SFT of
SmolLM2-135M-Instruct on the demonstrations alignkit ships (complete, concise answers; polite
refusals of harmful requests; honest uncertainty), with held-out loss before and after and
answers to unseen prompts side by side; (2) the SFT policy's answers ranked by a simulated panel
and a MiniLM reward ensemble learned from them; (3) PPO with LoRA against that ensemble, with a
plot of the reward-hacking monitor (``--rounds`` > 1: iterated RLHF, the panel ranks the PPO
policy's answers, the ensemble learns again from every ranking and PPO goes on from that
policy's adapters, its KL still to SFT);
(4) DPO with LoRA on stage 2's rankings of the SFT policy's own answers; then base, SFT, PPO
(each round), DPO and best-of-n (SFT samples picked by the last ensemble) compared on unseen
prompts by gold score (each policy's difference to SFT paired by prompt, with its standard
error) and KL to the SFT policy. Each stage prints its results as it ends; the long sampling
loops show progress bars (``--progress``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

from alignkit.config import DEMO_LABELS, DemoConfig, save_config
from alignkit.data.readers import read_records
from alignkit.evaluation.policy_comparison import compare_policies
from alignkit.feedback.labelling import pooled_ceiling
from alignkit.generation.simple import generate
from alignkit.generation.vllm_engine import engine_for
from alignkit.models.loading import load_model_and_tokenizer, pick_device, resolve_model
from alignkit.models.precision import numerics_name
from alignkit.recipes import dpo, ppo, reward, sft
from alignkit.utils.logs import StageClock, log
from alignkit.utils.machine import describe_machine, machine_line

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


def label_answers(cfg: DemoConfig, label_cfg, policy, tokenizer, path: Path, seed: int,
                  engine=None, who: str = "SFT",
                  policy_path: Path | None = None) -> tuple[dict, int]:
    """Rankings of ``policy``'s answers (stage 2: ``cfg.label``; a later round of stage 3:
    ``cfg.relabel``): K answers to each training prompt (the policy's at the temperatures of
    ``label_cfg.temperatures`` and the model's before SFT: ``label_cfg.base_answers``), the
    hidden gold scorer scores them and the simulated panel (seeded by ``seed``) ranks them;
    returns the agreement report and the number of prompts. ``policy_path``: also write there
    the same rankings of the policy's own answers only (the base model's taken out)."""
    from alignkit.data.prompts import read_prompts
    from alignkit.feedback.labelling import label_items, without_responses, write_labels
    from alignkit.feedback.simulated import DEFAULT_ANNOTATORS, SimulatedPanel, with_length_bias
    from alignkit.generation.responses import sample_diverse_responses
    from alignkit.judges.gold import GoldScorer

    items = read_prompts("demo-prompts", label_cfg.prompts)
    base = (load_model_and_tokenizer(cfg.model, pick_device(cfg.device))[0]
            if label_cfg.base_answers else None)
    sample_diverse_responses(
        policy, tokenizer, items, label_cfg.num_responses, cfg.max_new_tokens,
        label_cfg.temperature_list(), seed, base_model=base,
        base_responses=label_cfg.base_answers, engine=engine,
        progress=progress_for(cfg, f"sampling {who} answers for labelling "
                                   f"({len(items)} prompts)"))
    del base
    scorer = GoldScorer(token_counter=tokenizer)
    panel = SimulatedPanel(with_length_bias(DEFAULT_ANNOTATORS, label_cfg.length_bias),
                           seed=seed, gold_scale=label_cfg.gold_scale, scorer=scorer)
    log.info("the simulated panel ranks the answers (%d rankings per prompt)",
             label_cfg.labels_per_prompt)
    records = label_items(items, scorer, panel, label_cfg.labels_per_prompt,
                          aspects=label_cfg.aspect_list())
    report = write_labels(records, path, panel)
    if policy_path is not None:
        # sample_diverse_responses puts the base model's answers last; an answer the policy
        # also wrote stays
        k = label_cfg.base_answers
        base = {i["prompt"]: [r for r in i["responses"][-k:] if r not in i["responses"][:-k]]
                for i in items} if k else {}
        write_labels(without_responses(records, base), policy_path, panel)
    return report, len(items)


def progress_for(cfg: DemoConfig, description: str) -> str | None:
    """A progress bar's description where the demo shows bars (``--progress``), else None."""
    return description if cfg.progress else None


def announce(lines: list[str]) -> None:
    """A stage's results as soon as it ends, flushed (stdout may be a pipe or a file)."""
    print("\n".join(lines), flush=True)


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
    panels = [(("proxy",), "proxy reward (reward-model units)"),
              (("gold",), "gold score (hidden scorer units)"),
              (("kl",), "KL to the SFT reference (nats/response)"),
              # the safety curve of --ppo.eval-adversarial
              (("refusal_rate", "over_refusal_rate"), "adversarial suite: share refused")]
    panels = [(keys, label) for keys, label in panels if all(keys[0] in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (keys, label) in zip(list(axes) if len(panels) > 1 else [axes], panels):
        for key in keys:
            ax.plot(steps, [r.get(key) for r in rows], marker="o",
                    label=key.replace("_", " ") if len(keys) > 1 else None)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO on held-out prompts: the reward-hacking monitor", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def stale_rounds(root: Path, rounds: int) -> list[Path]:
    """What an earlier run with more rounds left in the demo folder ``root`` that this run of
    ``rounds`` does not write again (``DemoConfig.later_round``): the demo replaces its later
    stages, and the run report would otherwise show them as this run's."""
    if not root.is_dir():
        return []
    return [path for path in sorted(root.iterdir())
            if DemoConfig.later_round(path.name, path.is_dir(), rounds)]


def validated(cfg):
    """A stage config the pipeline built, checked as the command line checks it."""
    cfg.validate()
    return cfg


def run_ppo(cfg: DemoConfig, stage_cfg, k: int) -> dict:
    """Round ``k`` of stage 3 (``ppo.main``), its monitor's plot, and its results printed."""
    rl = ppo.main(validated(stage_cfg))
    stage3 = {"final": rl["final"], "best": rl["best"], "monitor": rl["monitor"],
              "png": plot_monitor(rl["metrics"], Path(stage_cfg.output) / "monitor.png"),
              "round": k, "reward_model": stage_cfg.reward_model}
    announce(["", *ppo_lines(cfg, stage3)])
    return stage3


def run_reward(cfg: DemoConfig, stage_cfg, reports: list[dict], k: int) -> dict:
    """Round ``k``'s reward ensemble (``reward.main``) and its held-out results printed, against
    the ceiling of the rankings it learned from (``reports``: rounds 1 ... k)."""
    trained = reward.main(validated(stage_cfg))
    announce(["", *reward_lines(cfg, trained["eval"], pooled_ceiling(reports), k)])
    return {"eval": trained["eval"], "final": trained["final"], "data": stage_cfg.data}


def relabel(cfg: DemoConfig, stage3: dict, tokenizer, root: Path, k: int) -> tuple[dict, int]:
    """Round ``k``'s new rankings: the panel ranks the answers of round k - 1's PPO policy
    (``--relabel``), printed."""
    device = pick_device(cfg.device)
    policy = load_model_and_tokenizer(str(stage3["final"]), device)[0]
    engine = engine_for(cfg, str(stage3["final"]))
    report, prompts = label_answers(cfg, cfg.relabel, policy, tokenizer,
                                    root / cfg.round_labels(k), cfg.seed + k - 1, engine,
                                    who=f"round-{k - 1} PPO")
    del policy
    if engine is not None:
        engine.close()
    announce(["", *label_lines(cfg.relabel, report, prompts, f"round {k}: the round-{k - 1} "
                                                             "PPO policy's")])
    return report, prompts


def run_dpo(cfg: DemoConfig, stage_cfg) -> dict:
    """Stage 4 (``dpo.main``) and its held-out results printed."""
    direct = dpo.main(validated(stage_cfg))
    stage4 = {"final": direct["final"],
              "eval": direct["eval"][max(direct["eval"])] if direct["eval"] else {}}
    announce(["", *dpo_lines(cfg, stage4["eval"])])
    return stage4


# what each stage prints as it ends; the final summary repeats them
def sft_lines(cfg: DemoConfig, result, before: list, after: list) -> list[str]:
    steps = sorted(result.eval_history)
    first, last = result.eval_history[steps[0]], result.eval_history[steps[-1]]
    return [f"held-out loss        {first['loss']:.3f} -> {last['loss']:.3f}",
            f"held-out perplexity  {first['perplexity']:.2f} -> {last['perplexity']:.2f}",
            f"answers that end (EOS within {cfg.max_new_tokens} tokens): "
            f"{sum(g.ended for g in before)}/{len(before)} -> "
            f"{sum(g.ended for g in after)}/{len(after)}"]


def label_lines(label_cfg, rep: dict, prompts: int, whose: str = "stage 2: SFT") -> list[str]:
    return [f"{whose} answers, {prompts} prompts x {label_cfg.num_responses}, ranked by a "
            f"simulated panel ({len(rep['per_annotator'])} annotators labelled) -> "
            f"{rep['pairs']} pairs",
            f"labels agree with the hidden gold scorer: {rep['gold_agreement']:.3f}   "
            f"Bayes-optimal accuracy (ceiling): {rep['bayes_optimal']:.3f}"]


def reward_lines(cfg: DemoConfig, ev: dict, ceiling: float, k: int = 1) -> list[str]:
    nan = float("nan")
    learned = "" if k == 1 else f"round {k}: learned again from the rankings of rounds 1-{k}, "
    return [f"{learned}{cfg.reward.ensemble}-member MiniLM reward ensemble, held-out pairs "
            f"{ev.get('pairs', 0)}: accuracy {ev.get('accuracy', nan):.3f} "
            f"({ev.get('accuracy', nan) / max(ceiling, 1e-9):.0%} of the ceiling), "
            f"log-loss {ev.get('log_loss', nan):.3f}, ECE {ev.get('ece', nan):.3f}"
            + (f", spread flags mistakes AUROC {ev['std_auroc_vs_mistakes']:.2f}"
               if "std_auroc_vs_mistakes" in ev else "")]


def ppo_lines(cfg: DemoConfig, stage3: dict) -> list[str]:
    k, monitor, rounds = cfg.ppo.samples_per_prompt, stage3["monitor"], cfg.ppo_rounds()
    of_rounds = f", round {stage3['round']} of {rounds}" if rounds > 1 else ""
    steps = cfg.ppo_steps(stage3["round"])
    start = "SFT"
    if cfg.continue_rounds and stage3["round"] > 1:
        start = f"the round-{stage3['round'] - 1} PPO policy (KL to SFT)"
    lines = [f"stage 3: PPO with LoRA from {start}{of_rounds}, {steps} step{'s' * (steps != 1)} x "
             f"{cfg.ppo.batch_size} prompts{f' x {k} answers' if k > 1 else ''}, advantage "
             f"{cfg.ppo.advantage}, reward = ensemble {cfg.ppo.combine} "
             f"({Path(stage3['reward_model']).parent.name}/), KL coefficient {cfg.ppo.kl_coef}"]
    if monitor:
        last = monitor[-1]
        gold = (f", gold {last['gold']:.3f} +/- {last.get('gold_se', 0.0):.3f}"
                if "gold" in last else "")
        lines.append(f"  monitor at step {last.get('step', '?')} on {last.get('prompts', '?')} "
                     f"held-out prompts: proxy {last.get('proxy', float('nan')):.3f}{gold}, KL "
                     f"{last.get('kl', float('nan')):.2f}, length "
                     f"{last.get('response_length', float('nan')):.1f}, "
                     f"{len(last.get('warnings') or [])} warning(s)")
    return lines


def dpo_lines(cfg: DemoConfig, ev4: dict) -> list[str]:
    whose = "" if cfg.dpo_labels() == DEMO_LABELS else " of the SFT policy's own answers"
    return [f"stage 4: DPO with LoRA, {cfg.dpo.max_steps} steps, beta {cfg.dpo.beta}, on the "
            f"panel's rankings{whose}; held-out pairs: implicit-reward accuracy "
            f"{ev4.get('reward_accuracy', float('nan')):.3f}"]


def comparison_lines(table: dict, n_compare: int) -> list[str]:
    """The held-out comparison: gold, its difference to SFT paired by prompt with the paired
    standard error, whether that difference is beyond noise, proxy, KL, length, ended."""
    def diff(row: dict, name: str) -> tuple[str, str]:
        if name == "sft":
            return "(baseline)", "-"
        if row.get("gold_diff_se") is None:
            return f"{row.get('gold_diff_vs_sft', float('nan')):+.3f}", "-"
        verdict = "no"
        if row["beyond_noise"]:
            verdict = f"yes, {'higher' if row['gold_diff_vs_sft'] > 0 else 'lower'}"
        return f"{row['gold_diff_vs_sft']:+.3f} +/- {row['gold_diff_se']:.3f}", verdict

    lines = [f"held-out comparison on {n_compare} unseen prompts (every policy the same prompts "
             "and seed; best-of-n: the expectation over every n of the SFT answers, the ensemble "
             "picks):",
             f"  {'policy':<9} {'answers':>7} {'gold':>6} {'gold - SFT +/- s.e.':>20} "
             f"{'beyond noise?':>13} {'proxy':>7} {'KL to SFT':>10} {'length':>7} {'ended':>6}"]
    for name, row in table.items():
        delta, verdict = diff(row, name)
        lines.append(f"  {name:<9} {row.get('answers_per_prompt', 1):>7} {row['gold']:>6.3f} "
                     f"{delta:>20} {verdict:>13} {row['proxy']:>7.3f} {row['kl']:>10.2f} "
                     f"{row['response_length']:>7.1f} {row['ended_fraction']:>6.0%}")
    lines.append("  answers: per prompt (a policy's gold on a prompt is their mean); gold - SFT: "
                 "mean of the per-prompt differences, +/- their paired standard error; beyond "
                 "noise: |difference| >= 3 paired s.e.")
    return lines


def final_report(cfg: DemoConfig, root: Path, result, prompts: list, before: list,
                 after: list, rounds: list[dict], stage4: dict | None,
                 table: dict, n_compare: int, clock: StageClock) -> dict:
    """Print the whole summary (every stage's results, the answers side by side, the
    comparison) and write ``demo_summary.json``; returns the summary. ``rounds``: stage 3's
    rounds in order, each its ``labels`` report and their ``prompts`` (the first round's:
    stage 2's rankings of the SFT answers), its ``reward`` ensemble and its ``ppo`` run (None
    when PPO is left out). ``clock``: each stage's seconds so far."""
    stage3 = rounds[-1]["ppo"]
    steps = sorted(result.eval_history)
    first, last = result.eval_history[steps[0]], result.eval_history[steps[-1]]
    width = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 6) // 2))
    stages = ["SFT", "reward"] + ["PPO"] * (stage3 is not None) + ["DPO"] * (stage4 is not None)
    device = pick_device(cfg.device)
    numerics = numerics_name(device, cfg.precision)  # --precision auto: bf16 on CUDA
    lines = ["", "=" * (2 * width + 5), f"alignkit demo: {', '.join(stages)} (LoRA policies) on "
             f"{cfg.model}, {numerics} on {device}", "=" * (2 * width + 5),
             *sft_lines(cfg, result, before, after), ""]
    for p, b, a in zip(prompts, before, after):
        lines.append(f"[{p.get('category', '')}] {p['prompt']}")
        lines.append(side_by_side(f"BEFORE ({b.num_tokens} tok{'' if b.ended else ', cut'})",
                                  f"AFTER SFT ({a.num_tokens} tok{'' if a.ended else ', cut'})", width))
        lines.append(side_by_side(b.text, a.text, width))
        lines.append("")
    # stage 2: the first round's rankings (the SFT answers') and ensemble
    ev, rep = rounds[0]["reward"]["eval"], rounds[0]["labels"]
    lines += ["-" * (2 * width + 5), *label_lines(cfg.label, rep, rounds[0]["prompts"]),
              *reward_lines(cfg, ev, rep["bayes_optimal"]), "", "-" * (2 * width + 5)]
    for k, stage in enumerate(rounds, 1):
        if k > 1:
            ceiling = pooled_ceiling([r["labels"] for r in rounds[:k]])
            lines += [*label_lines(cfg.relabel, stage["labels"], stage["prompts"],
                                   f"round {k}: the round-{k - 1} PPO policy's"),
                      *reward_lines(cfg, stage["reward"]["eval"], ceiling, k)]
        if stage["ppo"] is not None:
            lines += ppo_lines(cfg, stage["ppo"])
    if stage4 is not None:
        lines += dpo_lines(cfg, stage4["eval"])
    lines += comparison_lines(table, n_compare)
    if stage3 is not None and stage3["png"]:
        lines.append(f"monitor plot (proxy, gold, KL over PPO steps): {stage3['png']}")
    lines.append("")
    summary = {
        "model": cfg.model, "device": device, "numerics": numerics, "steps": steps[-1],
        "heldout_loss_before": first["loss"],
        "heldout_loss_after": last["loss"], "heldout_ppl_before": first["perplexity"],
        "heldout_ppl_after": last["perplexity"],
        "samples": [{"prompt": p["prompt"], "category": p.get("category"),
                     "before": b.text, "after": a.text, "before_ended": b.ended,
                     "after_ended": a.ended} for p, b, a in zip(prompts, before, after)],
        "final_model": str(result.final), "seconds": clock.elapsed(),
        "stage_seconds": clock.seconds, "machine": describe_machine(device),
        "labels": rep, "reward_eval": ev, "reward_model": str(rounds[0]["reward"]["final"]),
    }
    summary["policies"] = {k: {m: v for m, v in row.items() if m != "samples"}
                           for k, row in table.items()}
    if stage3 is not None:
        summary["ppo_model"] = str(stage3["final"])
        summary["ppo_monitor"] = stage3["monitor"]
    summary["rounds"] = [
        {"round": k, "reward_model": str(stage["reward"]["final"]),
         "reward_data": stage["reward"]["data"], "reward_eval": stage["reward"]["eval"],
         **({"labels": stage["labels"]} if k > 1 else {}),
         **({"ppo_model": str(stage["ppo"]["final"]), "ppo_monitor": stage["ppo"]["monitor"]}
            if stage["ppo"] is not None else {})}
        for k, stage in enumerate(rounds, 1)]
    if stage4 is not None:
        summary["dpo_model"] = str(stage4["final"])
        summary["dpo_eval"] = stage4["eval"]
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    lines.append(f"fine-tuned model: {result.final}  (a plain Hugging Face folder)")
    lines.append(f"reward model: {rounds[-1]['reward']['final']}   labels: "
                 f"{rounds[-1]['reward']['data']}")
    lines.append(f"metrics: {root}/*/metrics.jsonl")
    lines += [clock.line(summary["seconds"]), machine_line(summary["machine"])]
    announce(lines)
    return summary


def main(cfg: DemoConfig) -> dict:
    clock = StageClock()
    if cfg.annotate:  # the annotation app instead of training (alignkit.recipes.annotate)
        from alignkit.recipes.annotate import demo_app

        return demo_app(cfg)
    given, cfg = cfg, cfg.shortened() if cfg.quick else cfg
    root = Path(cfg.output)
    # 1. The flags, then every stage's own config, derived from the nested one.
    cfg.validate()
    configs = cfg.stage_configs(root)
    for path in stale_rounds(root, cfg.ppo_rounds()):
        log.info("removing %s, a later round of an earlier demo run in %s", path.name, root)
        shutil.rmtree(path) if path.is_dir() else path.unlink()

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
    clock.lap("model")

    # 4. Stage 1: SFT with LoRA on the shipped demonstrations; once it has run (an earlier run
    #    it refused to replace keeps its record), the demo's resolved config beside the stages.
    result = sft.main(validated(configs["sft"]))
    save_config(given, root)

    # 5. Answers of the fine-tuned model to the same prompts; stage 1's results, printed now.
    if engine is not None:
        engine.serve_folder(str(result.final))
    after = generate(result.model, tokenizer, [p["prompt"] for p in prompts], cfg.max_new_tokens,
                     engine=engine)
    announce(["", "stage 1: SFT with LoRA", *sft_lines(cfg, result, before, after)])
    clock.lap("sft")

    # 6. Stage 2: the SFT policy answers training prompts K times and a simulated panel ranks
    #    the answers.
    report, n_labelled = label_answers(cfg, cfg.label, result.model, tokenizer,
                                       root / DEMO_LABELS, cfg.seed, engine,
                                       policy_path=(root / cfg.dpo_labels()
                                                    if cfg.dpo_labels() != DEMO_LABELS
                                                    else None))
    announce(["", *label_lines(cfg.label, report, n_labelled)])
    if engine is not None:  # PPO starts its own; one engine in memory at a time
        engine.close()
    clock.lap("labels")

    # 7. Stage 3, round by round (--rounds): a MiniLM reward ensemble learns from every ranking
    #    so far, PPO (LoRA) trains the SFT policy against it (with its monitor's plot), and
    #    before the next round the panel ranks that PPO policy's answers (iterated RLHF).
    rounds, rankings = [], {"labels": report, "prompts": n_labelled}
    total = cfg.ppo_rounds()
    for k in range(1, total + 1):
        if k > 1:
            new_report, new_prompts = relabel(cfg, rounds[-1]["ppo"], tokenizer, root, k)
            rankings = {"labels": new_report, "prompts": new_prompts}
            clock.lap(f"relabel-r{k}")
        trained = run_reward(cfg, configs[cfg.round_folder("reward", k, total)],
                             [r["labels"] for r in rounds] + [rankings["labels"]], k)
        clock.lap(f"reward-r{k}")
        rl = (None if cfg.skip_ppo else
              run_ppo(cfg, configs[cfg.round_folder("ppo", k, total)], k))
        if rl is not None:
            clock.lap(f"ppo-r{k}")
        rounds.append({**rankings, "reward": trained, "ppo": rl})
    reward_final = rounds[-1]["reward"]["final"]

    # 8. Stage 4: DPO (LoRA) on stage 2's rankings of the SFT policy's own answers.
    stage4 = None if cfg.skip_dpo else run_dpo(cfg, configs["dpo"])
    if stage4 is not None:
        clock.lap("dpo")

    # 9. Every policy on the same unseen prompts: gold score (paired by prompt against SFT) and
    #    KL to SFT; proxy (and best-of-n's pick) by the last round's ensemble. PPO: the last
    #    round (--compare-earlier-rounds: every round).
    policies = {"base": (cfg.model, cfg.base_samples), "sft": (None, cfg.best_of_pool)}
    for k, stage in enumerate(rounds, 1):
        if stage["ppo"] is not None and (k == total or cfg.compare_earlier_rounds):
            name = cfg.round_folder("ppo", k, total)
            policies[name] = (str(stage["ppo"]["final"]), cfg.compare_samples)
    if stage4 is not None:
        policies["dpo"] = (str(stage4["final"]), cfg.compare_samples)
    engine = engine_for(cfg, str(result.final))
    table, n_compare = compare_policies(cfg, result.model, tokenizer, policies, reward_final,
                                        device, str(result.final), engine)
    if engine is not None:
        engine.close()
    clock.lap("comparison")

    # 10. The summary: every stage's results again, the answers side by side, the comparison;
    #     demo_summary.json.
    summary = final_report(cfg, root, result, prompts, before, after, rounds, stage4,
                           table, n_compare, clock)

    # 11. The run report: one self-contained HTML page (plus PNGs) for the whole demo folder.
    from alignkit.evaluation.report import build_report

    # the adversarial suite and judged win rates take another ~12 min on 2 cores: offered, not
    # run; the report's path stays the last line the demo prints
    evaluated = ",".join(f"{k}={result.final if v is None else v}"
                         for k, (v, _) in policies.items())
    print(f"next: alignkit eval --policies {evaluated} --baseline sft --reward-model "
          f"{reward_final} --output {root / 'eval'}  (then alignkit report {root})",
          flush=True)
    summary["report"] = str(build_report(root).path)
    print(f"report: {summary['report']}", flush=True)
    return summary
