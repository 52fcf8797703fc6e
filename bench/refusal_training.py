"""Does RLHF teach refusal? The harmlessness aspect with a floor against one overall reward, on
the demo task (issue #19, item 4), with the refusal curve over PPO training.

One labelling pass: every shipped training prompt gets four answers, two of the SFT policy and
two of a policy that refuses more (``--refuser``: the same SFT trained three times as long, which
refuses harmful prompts and over-refuses benign ones far more often; candidates from several
policies, as InstructGPT labelled, because the demo's SFT policy refuses so rarely that almost no
pair of its answers differs in harm), and the simulated panel labels three aspects of the same
answers (``alignkit label --aspects``):
``overall`` (K-way rankings by the gold score), ``helpful`` (rankings by the gold score without
its harm and honesty terms) and ``harmless`` (asked only of the pairs whose harm term differs: a
refusal against a compliance on a harmful prompt, an over-refusal against an answer on a benign
one). Two reward ensembles learn from them:

* ``overall``: one head on the overall rankings (the demo's reward);
* ``aspects``: a ``helpful`` and a ``harmless`` head, combined in constraint mode: the reward is
  helpfulness while harmlessness stays above ``--floor``, and below it the shortfall minus the
  gate penalty (``alignkit reward --aspect-weights helpful=1 --aspect-floor harmless=F``).

PPO then runs from the same SFT policy against each, with the same seed and settings, harmful
training prompts drawn ``--oversample`` times as often, and its monitor answering the shipped
adversarial suite at every reading (``--eval-adversarial shipped``): the refusal rate on harmful
and jailbreak prompts, the over-refusal rate on benign ones, and held-out gold, against step.

    python bench/refusal_training.py --sft runs/demo/sft/final      # ~55 min on 2 cores
    python bench/refusal_training.py --sft runs/demo/sft/final --quick   # harness check

Without ``--refuser`` the bench trains it first (the demo's SFT settings, ``--refuser-steps``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUITE_KEYS = ("refusal_rate", "over_refusal_rate", "refusal_rate_harmful",
              "refusal_rate_jailbreak", "uncertainty_rate")


def split_labels(labels: Path, out: Path) -> dict[str, Path]:
    """The overall records (untagged: one head) and the helpful + harmless records, two files."""
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    files = {"overall": out / "prefs_overall.jsonl", "aspects": out / "prefs_aspects.jsonl"}
    overall = [{k: v for k, v in r.items() if k != "aspect"} for r in rows
               if r["aspect"] == "overall"]
    aspects = [r for r in rows if r["aspect"] in ("helpful", "harmless")]
    for name, recs in (("overall", overall), ("aspects", aspects)):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in recs))
    return files


def candidates(policies: list[str], per_policy: int, max_prompts: int, seed: int,
               work: Path) -> Path:
    """``per_policy`` answers of each policy to every training prompt, merged per prompt into
    samples ({prompt, responses, category}) that ``alignkit label`` labels without sampling."""
    from alignkit.cli import run
    from alignkit.config import LabelConfig

    merged: dict[str, dict] = {}
    for i, policy in enumerate(policies):
        out = work / f"answers-{i}.jsonl"
        run(LabelConfig(model=policy, data="demo-prompts", output=str(out),
                        num_responses=per_policy, max_prompts=max_prompts, seed=seed + i))
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            item = merged.setdefault(rec["prompt"], {"prompt": rec["prompt"], "responses": [],
                                                     "category": rec.get("category")})
            item["responses"].extend(rec["responses"])
    samples = work / "samples.jsonl"
    samples.write_text("".join(json.dumps(v) + "\n" for v in merged.values()))
    return samples


def harmless_head(rm: Path, samples: Path, floor: float) -> dict:
    """How the trained harmlessness head scores the training answers, by the prompt's category
    and whether the gold scorer counts the answer as a refusal: the mean (normalised) score and
    the share below the floor."""
    from alignkit.judges.gold import is_refusal
    from alignkit.models.reward import RewardModel

    model = RewardModel.load(rm)
    items = [json.loads(line) for line in samples.read_text().splitlines()]
    prompts = [i["prompt"] for i in items for _ in i["responses"]]
    answers = [r for i in items for r in i["responses"]]
    groups = [f"{i.get('category')}/{'refusal' if is_refusal(r) else 'answer'}"
              for i in items for r in i["responses"]]
    scores = model.score(prompts, answers)
    harmless = scores.aspect_mean[:, scores.aspects.index("harmless")].tolist()
    out: dict[str, dict] = {}
    for g, h in zip(groups, harmless):
        out.setdefault(g, []).append(h)
    return {g: {"n": len(v), "mean": round(sum(v) / len(v), 3),
                "below_floor": round(sum(x < floor for x in v) / len(v), 3)}
            for g, v in sorted(out.items())}


def curve(metrics: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    keep = ("step", "gold", "gold_se", "proxy", "kl", "response_length", *SUITE_KEYS)
    return [{k: r[k] for k in keep if k in r} for r in rows if r.get("split") == "eval"]


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("refusal_rate", "refused: harmful + jailbreak"),
              ("over_refusal_rate", "refused: benign (over-refusal)"),
              ("gold", "held-out gold score")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for arm, rows in results["curves"].items():
            ax.plot([r["step"] for r in rows], [r.get(key) for r in rows], marker="o", label=arm)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("PPO from the SFT policy: one overall reward vs a harmlessness floor",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft", required=True, help="the SFT policy folder (e.g. runs/demo/sft/final)")
    p.add_argument("--refuser", default=None,
                   help="a policy that refuses more, whose answers join the candidates "
                        "(default: train one, the demo's SFT for --refuser-steps)")
    p.add_argument("--refuser-steps", type=int, default=180)
    p.add_argument("--work", default="runs/refusal_training", help="folder for the runs")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/...)")
    p.add_argument("--quick", action="store_true", help="a few prompts and steps")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=32, help="PPO steps per arm")
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--suite-per-category", type=int, default=20,
                   help="adversarial prompts of each category the monitor answers")
    p.add_argument("--oversample", type=float, default=3.0,
                   help="harmful training prompts drawn this many times as often")
    p.add_argument("--floor", type=float, default=-1.0, help="harmlessness floor (normalised)")
    p.add_argument("--reward-steps", type=int, default=60)
    p.add_argument("--kl-coef", type=float, default=0.05)
    args = p.parse_args(argv)

    from alignkit.cli import run
    from alignkit.config import LabelConfig, PPOConfig, RewardConfig

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    steps = 2 if quick else args.steps
    started = time.time()
    # 1. The refuser, then two answers of each policy to every training prompt.
    refuser = args.refuser
    if refuser is None:
        import dataclasses

        from alignkit.config import DemoConfig

        demo = DemoConfig(seed=args.seed, progress=False)
        run(dataclasses.replace(demo.sft, model=demo.model, output=str(work / "refuser"),
                                max_steps=4 if quick else args.refuser_steps, save_every=0,
                                eval_every=0, seed=args.seed, progress=False, overwrite=True))
        refuser = str(work / "refuser" / "final")
    samples = candidates([args.sft, refuser], 2, 12 if quick else 0, args.seed, work)
    # 2. One labelling pass, three aspects of the same answers.
    labels = work / "prefs.jsonl"
    report = run(LabelConfig(data=str(samples), output=str(labels),
                             aspects="overall,helpful,harmless", labels_per_prompt=2,
                             seed=args.seed))["report"]
    files = split_labels(labels, work)
    # 3. The two reward ensembles; how the harmlessness head scores the candidates.
    common_rm = dict(model="minilm", ensemble=3, max_steps=4 if quick else args.reward_steps,
                     lr=1e-4, warmup_steps=2, eval_fraction=0.2, eval_every=0, save_every=0,
                     seed=args.seed, overwrite=True, progress=False)
    rms = {"overall": run(RewardConfig(data=str(files["overall"]),
                                       output=str(work / "rm-overall"), **common_rm)),
           "aspects": run(RewardConfig(data=str(files["aspects"]), output=str(work / "rm-aspects"),
                                       aspects="helpful,harmless", aspect_weights="helpful=1",
                                       aspect_floor=f"harmless={args.floor}", **common_rm))}
    head = harmless_head(work / "rm-aspects" / "final", samples, args.floor)
    # 4. PPO against each, same seed and settings, the suite answered at every reading.
    curves, ppo_s = {}, {}
    for arm in ("overall", "aspects"):
        t = time.time()
        out = work / f"ppo-{arm}"
        run(PPOConfig(model=args.sft, reward_model=str(work / f"rm-{arm}" / "final"),
                      output=str(out), lora=True, lr=5e-4, batch_size=8, minibatch_size=4,
                      ppo_epochs=2, max_steps=steps, kl_coef=args.kl_coef,
                      combine="mean_minus_std", eval_every=1 if quick else args.eval_every,
                      eval_prompts=4 if quick else 32, eval_adversarial="shipped",
                      eval_adversarial_prompts=2 if quick else args.suite_per_category,
                      oversample=f"category=harmful:{args.oversample:g}", save_every=0,
                      seed=args.seed, overwrite=True, progress=False))
        curves[arm] = curve(out / "metrics.jsonl")
        ppo_s[arm] = round(time.time() - t, 1)
    results = {
        "sft": args.sft, "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "refuser": refuser,
        "labels": {"records": report["records"], "per_aspect": report.get("per_aspect")},
        "harmless_head": head,
        "reward_eval": {arm: r.get("eval") if isinstance(r, dict) else None
                        for arm, r in rms.items()},
        "curves": curves, "ppo_seconds": ppo_s, "seconds": round(time.time() - started, 1),
    }
    out = Path(args.out) if args.out else RESULTS / (
        "refusal_training_quick.json" if quick else "refusal_training.json")
    out.write_text(json.dumps(results, indent=1, default=str))
    plot(results, out.with_suffix(".png"))
    for arm, rows in curves.items():
        print(f"{arm}:")
        for r in rows:
            print(f"  step {r['step']:>3}  refuse {r.get('refusal_rate', 0):.2f}  over-refuse "
                  f"{r.get('over_refusal_rate', 0):.2f}  gold {r.get('gold', 0):.3f}  "
                  f"KL {r.get('kl', 0):.2f}")
    print(f"wrote {out} and {out.with_suffix('.png')} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
