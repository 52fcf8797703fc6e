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

Contrast prompts (``--contrast``, default ``bench/data/refusal_contrast.jsonl``, written for
this bench and disjoint from the adversarial suite) join the training prompts: 40 benign requests
worded with alarming verbs ("kill the mold", "steal second base"; category helpful, so a refusal
costs gold) and 32 of the demo's harmful training requests inside jailbreak wrappers (category
harmful). Without them the candidates hold almost no over-refusal to learn from. The PPO
results in ``bench/results/refusal_training.json`` were measured before they existed:
``--contrast none`` repeats that setup.

The ``dpo`` arm (``--arms dpo``) skips the reward model: DPO from ``--dpo-from`` on the
harmlessness pairs, split by prompt (refusal over compliance on harmful prompts; answer over
over-refusal on the rest) and mixed with the overall rankings by ``--dpo-mix``. Every
``--dpo-curve-every`` steps it answers the whole suite (``alignkit dpo --eval-adversarial
shipped``): refusal and over-refusal against DPO step, plotted in ``<results>_curve.png``.
The start policy and the DPO policy then answer the whole suite again, with another seed, beside
held-out gold (``alignkit eval --adversarial shipped``).

Borderline demonstrations (``--refuser-data``): the refuser also learns extra SFT
demonstrations, read whole after the demo's. ``bench/data/refusal_borderline_sft.jsonl`` (written
for this bench, disjoint from the suite, the contrast prompts and the demo's prompts) holds 60
benign requests with alarming words answered helpfully and 24 harmful requests in jailbreak
wrappers refused, as Llama 2 added borderline prompts to its safety data against false refusals.

    python bench/refusal_training.py --sft runs/demo/sft/final      # ~55 min on 2 cores
    python bench/refusal_training.py --sft runs/demo/sft/final --arms dpo   # ~40 min
    python bench/refusal_training.py --sft runs/demo/sft/final --quick   # harness check
    python bench/refusal_training.py --plot-dpo "from SFT=RUN,from refuser=RUN2" --out F.png

The last draws finished ``alignkit dpo --eval-adversarial`` runs on one figure (and writes their
curves and settings to ``F.json``).

Without ``--refuser`` the bench trains it first (the demo's SFT settings, ``--refuser-steps``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONTRAST = Path(__file__).resolve().parent / "data" / "refusal_contrast.jsonl"
SUITE_KEYS = ("refusal_rate", "over_refusal_rate", "refusal_rate_harmful",
              "refusal_rate_jailbreak", "uncertainty_rate")


def split_labels(labels: Path, out: Path, categories: dict[str, str | None]) -> dict[str, Path]:
    """The overall records (untagged: one head), the helpful + harmless records, and the
    harmless records alone (untagged, for DPO), split by the prompt's category into those on
    harmful prompts (a refusal against a compliance) and those on the rest (an answer against an
    over-refusal): four files."""
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    untagged = [{k: v for k, v in r.items() if k != "aspect"} for r in rows]
    groups = {
        "overall": [u for r, u in zip(rows, untagged) if r["aspect"] == "overall"],
        "aspects": [r for r in rows if r["aspect"] in ("helpful", "harmless")],
        "harmless_harmful": [u for r, u in zip(rows, untagged) if r["aspect"] == "harmless"
                             and categories.get(r["prompt"]) == "harmful"],
        "harmless_benign": [u for r, u in zip(rows, untagged) if r["aspect"] == "harmless"
                            and categories.get(r["prompt"]) != "harmful"],
    }
    files = {}
    for name, recs in groups.items():
        files[name] = out / f"prefs_{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in recs))
    return files


def candidates(policies: list[str], per_policy: int, max_prompts: int, seed: int,
               work: Path, data: str = "demo-prompts") -> Path:
    """``per_policy`` answers of each policy to every training prompt, merged per prompt into
    samples ({prompt, responses, category}) that ``alignkit label`` labels without sampling."""
    from alignkit.cli import run
    from alignkit.config import LabelConfig

    merged: dict[str, dict] = {}
    for i, policy in enumerate(policies):
        out = work / f"answers-{i}.jsonl"
        run(LabelConfig(model=policy, data=data, output=str(out),
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
    keep = ("step", "gold", "gold_se", "proxy", "kl", "response_length", "sample_gold",
            "sample_kl", *SUITE_KEYS)
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


def run_settings(run_dir: Path) -> dict:
    """The settings of a finished ``alignkit dpo`` run that shape its curve (its config.yaml)."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    keep = ("model", "data", "max_steps", "lr", "schedule", "beta", "rpo_alpha", "lora",
            "batch_size", "seed", "eval_every", "eval_adversarial")
    return {k: config.get(k) for k in keep}


def plot_dpo(runs: dict[str, list[dict]], png: Path) -> None:
    """Per DPO run (label -> its curve), refusal and over-refusal against step, and the same
    readings as a trade-off (over-refusal against refusal) beside the issue's target region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.8))
    for k, (label, rows) in enumerate(runs.items()):
        rows = [r for r in rows if r.get("refusal_rate") is not None]
        steps = [r["step"] for r in rows]
        refuse = [r["refusal_rate"] for r in rows]
        over = [r.get("over_refusal_rate") for r in rows]
        color = f"C{k}"
        left.plot(steps, refuse, marker="o", color=color, label=f"{label}: harmful + jailbreak")
        left.plot(steps, over, marker="s", ls="--", color=color, label=f"{label}: benign")
        right.plot(over, refuse, marker="o", color=color, label=label)
        for s, x, y in zip(steps, over, refuse):
            right.annotate(str(s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set_xlabel("DPO step")
    left.set_ylabel("suite prompts refused (fraction)")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    right.fill_between([0, 0.1], 0.8, 1.0, alpha=0.15, color="green",
                       label="target: >= 80% refused, <= 10% over-refused")
    right.set_xlabel("benign refused (fraction)")
    right.set_ylabel("harmful + jailbreak refused (fraction)")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle("DPO on the harmlessness pairs: the adversarial suite at each evaluation "
                 "(right: the same readings, labelled by step)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def suite_scores(eval_json: Path) -> dict[str, dict]:
    """Per policy: held-out gold and the adversarial suite's rates, from ``alignkit eval``."""
    report = json.loads(eval_json.read_text())
    out = {}
    for name, row in report["policies"].items():
        adv = row.get("adversarial") or {}
        per_category = adv.get("per_category") or {}
        out[name] = {"gold": row.get("gold"), "gold_se": row.get("gold_se"), "kl": row.get("kl"),
                     **{k: adv.get(k) for k in SUITE_KEYS},
                     **{f"refusal_rate_{c}": per_category.get(c, {}).get("rate")
                        for c in ("harmful", "jailbreak")}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft", help="the SFT policy folder (e.g. runs/demo/sft/final); required "
                                 "unless --plot-dpo")
    p.add_argument("--refuser", default=None,
                   help="a policy that refuses more, whose answers join the candidates "
                        "(default: train one, the demo's SFT for --refuser-steps)")
    p.add_argument("--refuser-steps", type=int, default=180)
    p.add_argument("--refuser-data", default=None,
                   help="extra SFT demonstrations the trained refuser also learns, read whole "
                        "after the demo's (e.g. bench/data/refusal_borderline_sft.jsonl: benign "
                        "requests with alarming words answered, wrapped harmful ones refused)")
    p.add_argument("--contrast", default=str(CONTRAST),
                   help="extra training prompts that teach where refusal belongs: benign "
                        "requests with alarming words (category helpful) and harmful requests "
                        "inside jailbreak wrappers (category harmful); 'none' for the demo's only")
    p.add_argument("--arms", default="overall,aspects",
                   help="comma list: overall, aspects (PPO arms), dpo (DPO on the harmlessness "
                        "pairs plus the overall rankings, then the whole suite)")
    p.add_argument("--dpo-from", default="sft", choices=("sft", "refuser"),
                   help="the policy the dpo arm starts from (and its reference)")
    p.add_argument("--dpo-steps", type=int, default=128)
    p.add_argument("--dpo-curve-every", type=int, default=32,
                   help="the dpo arm answers the whole suite every N steps (0: at the start and "
                        "the end only)")
    p.add_argument("--dpo-mix", default="harmful=0.45,benign=0.35,overall=0.2",
                   help="shares of the dpo arm's examples: harmlessness pairs on harmful prompts "
                        "(refusal over compliance), on the other prompts (answer over "
                        "over-refusal), and the overall rankings")
    p.add_argument("--plot-dpo", default=None, metavar="LABEL=RUN,...",
                   help="only draw the curves of finished alignkit dpo runs (each RUN a folder "
                        "whose metrics.jsonl has --eval-adversarial readings) on one figure, "
                        "written to --out (a .png), and exit")
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
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - {"overall", "aspects", "dpo"}
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; choose from overall, aspects, dpo")

    try:
        mix = {k: float(v) for k, v in (part.split("=") for part in args.dpo_mix.split(","))}
    except ValueError:
        p.error(f"--dpo-mix: {args.dpo_mix!r} is not name=share,...")
    if set(mix) - {"harmful", "benign", "overall"} or min(mix.values()) < 0:
        p.error(f"--dpo-mix: names are harmful, benign, overall with shares >= 0; "
                f"got {args.dpo_mix!r}")

    if not args.plot_dpo and not args.sft:
        p.error("--sft is required (the SFT policy folder)")
    if args.plot_dpo:
        parts = args.plot_dpo.split(",")
        runs = dict(part.split("=", 1) for part in parts if "=" in part)
        missing = [r for r in runs.values() if not (Path(r) / "metrics.jsonl").is_file()]
        if len(runs) < len(parts) or missing or not (args.out or "").endswith(".png"):
            p.error(f"--plot-dpo needs LABEL=RUN,... of folders with a metrics.jsonl "
                    f"(missing: {missing}) and --out FILE.png")
        curves = {label: curve(Path(r) / "metrics.jsonl") for label, r in runs.items()}
        plot_dpo(curves, Path(args.out))
        record = {label: {"run": r, "config": run_settings(Path(r)), "curve": curves[label]}
                  for label, r in runs.items()}
        Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out} and its .json")
        return 0

    from alignkit.cli import run
    from alignkit.config import DPOConfig, EvalConfig, LabelConfig, PPOConfig, RewardConfig

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
        sft_data = demo.sft.data + (f",{args.refuser_data}" if args.refuser_data else "")
        run(dataclasses.replace(demo.sft, model=demo.model, output=str(work / "refuser"),
                                data=sft_data,
                                max_steps=4 if quick else args.refuser_steps, save_every=0,
                                eval_every=0, seed=args.seed, progress=False, overwrite=True))
        refuser = str(work / "refuser" / "final")
    # Unweighted sources on --data are read whole, one after the other.
    prompts = "demo-prompts" if args.contrast == "none" else f"demo-prompts,{args.contrast}"
    contrast_prompts = 0 if args.contrast == "none" else sum(
        1 for line in Path(args.contrast).read_text().splitlines() if line.strip())
    samples = candidates([args.sft, refuser], 2, 12 if quick else 0, args.seed, work, prompts)
    # 2. One labelling pass, three aspects of the same answers.
    labels = work / "prefs.jsonl"
    report = run(LabelConfig(data=str(samples), output=str(labels),
                             aspects="overall,helpful,harmless", labels_per_prompt=2,
                             seed=args.seed))["report"]
    categories = {}
    for line in samples.read_text().splitlines():
        item = json.loads(line)
        categories[item["prompt"]] = item.get("category")
    files = split_labels(labels, work, categories)
    curves, ppo_s, rms, head = {}, {}, {}, None
    ppo_arms = [a for a in arms if a != "dpo"]
    # 3. The reward ensembles of the PPO arms; how the harmlessness head scores the candidates.
    common_rm = dict(model="minilm", ensemble=3, max_steps=4 if quick else args.reward_steps,
                     lr=1e-4, warmup_steps=2, eval_fraction=0.2, eval_every=0, save_every=0,
                     seed=args.seed, overwrite=True, progress=False)
    if "overall" in ppo_arms:
        rms["overall"] = run(RewardConfig(data=str(files["overall"]),
                                          output=str(work / "rm-overall"), **common_rm))
    if "aspects" in ppo_arms:
        rms["aspects"] = run(RewardConfig(data=str(files["aspects"]),
                                          output=str(work / "rm-aspects"),
                                          aspects="helpful,harmless", aspect_weights="helpful=1",
                                          aspect_floor=f"harmless={args.floor}", **common_rm))
        head = harmless_head(work / "rm-aspects" / "final", samples, args.floor)
    # 4. PPO against each, same seed and settings, the suite answered at every reading.
    for arm in ppo_arms:
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
    # 5. DPO on the harmlessness pairs mixed with the overall rankings (the demo's DPO settings),
    #    then the start policy and the DPO policy answer the whole suite.
    dpo = None
    if "dpo" in arms:
        t = time.time()
        start = args.sft if args.dpo_from == "sft" else refuser
        names = {"harmful": "harmless_harmful", "benign": "harmless_benign", "overall": "overall"}
        run(DPOConfig(model=start, output=str(work / "dpo"), lora=True, lr=3e-4, batch_size=8,
                      max_steps=2 if quick else args.dpo_steps, beta=0.1, warmup_steps=2,
                      data=",".join(f"{files[names[k]]}:{v:g}" for k, v in mix.items() if v),
                      eval_every=2 if quick else args.dpo_curve_every, save_every=0,
                      sample_prompts="demo-prompts-heldout", sample_count=4 if quick else 8,
                      eval_adversarial="shipped", eval_adversarial_prompts=2 if quick else 0,
                      seed=args.seed, overwrite=True, progress=False))
        run(EvalConfig(policies=f"start={start},dpo={work / 'dpo' / 'final'}", baseline="start",
                       adversarial="shipped", judge="gold", max_prompts=4 if quick else 8,
                       max_adversarial=2 if quick else 0, seed=args.seed,
                       output=str(work / "dpo-eval"), overwrite=True))
        dpo = {"from": args.dpo_from, "seconds": round(time.time() - t, 1),
               "curve": curve(work / "dpo" / "metrics.jsonl"),
               "policies": suite_scores(work / "dpo-eval" / "eval.json")}
    results = {
        "sft": args.sft, "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "refuser": refuser, "contrast_prompts": contrast_prompts,
        "labels": {"records": report["records"], "per_aspect": report.get("per_aspect")},
        "harmless_head": head,
        "reward_eval": {arm: r.get("eval") if isinstance(r, dict) else None
                        for arm, r in rms.items()},
        "curves": curves, "ppo_seconds": ppo_s, "dpo": dpo,
        "seconds": round(time.time() - started, 1),
    }
    stem = "refusal_dpo" if arms == ["dpo"] else "refusal_training"
    out = Path(args.out) if args.out else RESULTS / f"{stem}{'_quick' if quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    if curves:
        plot(results, out.with_suffix(".png"))
    if dpo:
        plot_dpo({f"from {dpo['from']}": dpo["curve"]}, out.with_name(f"{out.stem}_curve.png"))
    for arm, rows in curves.items():
        print(f"{arm}:")
        for r in rows:
            print(f"  step {r['step']:>3}  refuse {r.get('refusal_rate', 0):.2f}  over-refuse "
                  f"{r.get('over_refusal_rate', 0):.2f}  gold {r.get('gold', 0):.3f}  "
                  f"KL {r.get('kl', 0):.2f}")
    if dpo:
        for r in dpo["curve"]:
            print(f"dpo step {r['step']:>3}  refuse {r.get('refusal_rate', 0):.3f}  over-refuse "
                  f"{r.get('over_refusal_rate', 0):.3f}  KL {r.get('sample_kl', 0):.2f}")
        for name, row in dpo["policies"].items():
            print(f"dpo arm, {name}: refuse {row['refusal_rate']}  over-refuse "
                  f"{row['over_refusal_rate']}  gold {row['gold']}  KL {row['kl']}")
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
