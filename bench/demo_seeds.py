"""The default demo across seeds: each run's gains over SFT in paired standard errors, its first
reward ensemble's share of the labels' ceiling, and what the runs say together.

One demo is one draw of everything random in the pipeline (the SFT data order, the panel's
labels, the ensemble's initialisation, PPO's rollouts). Its comparison's standard error covers
only the last of those, the answers drawn on the 96 held-out prompts. Across seeds the spread of
the gains covers them all, so the mean over seeds with its standard error (s.d. / sqrt(seeds))
is what the pipeline gives, and the smallest z over seeds is how far one run can fall.

    python bench/demo_seeds.py bench/results/demo_seed6_1206.json runs/s9d/demo_summary.json
    python bench/demo_seeds.py --json bench/results/demo_seeds_1207.json  # the default list

Each input is a bench results file of the demo (``{"runs": ...}``, one or more runs) or a
run's own ``demo_summary.json``. Nothing runs a model: it reads what the runs wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

# "beyond noise": a gain of at least this many paired standard errors, as the demo judges it
from alignkit.evaluation.paired import NOISE_THRESHOLD as LINE

HERE = Path(__file__).resolve().parent
# the default demo of 2026-12-05 on (round 2 going on from round 1, ensemble at lr 2e-4 and 40
# steps, 5 rankings a prompt), one run per seed
DEFAULT_RESULTS = [f"results/{name}" for name in (
    "demo_seed1_continue_lr2_1205.json", "demo_seed3_continue_lr2_1205.json",
    "demo_seed4_continue_lr2_1205.json", "demo_seed5_continue_lr2_1205.json",
    "demo_seed6_1206.json", "demo_seed8_1207.json", "demo_seed9_1207.json",
    "demo_seed42_1207.json")]
POLICIES = ("ppo", "dpo", "best-of-4")


def run_records(path: Path) -> list[dict]:
    """The demo runs one file holds, each with ``source`` (the file) and ``command`` where known."""
    data = json.loads(path.read_text())
    if "policies" in data:  # a run's own demo_summary.json
        return [{**data, "source": str(path), "command": data.get("command", str(path.parent))}]
    runs = data.get("runs")
    if isinstance(runs, dict):
        runs = list(runs.values())
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{path}: neither a demo_summary.json nor a results file with 'runs'")
    return [{**run, "source": str(path)} for run in runs]


def seed_of(run: dict) -> int | None:
    """The run's seed: its command's ``--seed``, else a ``seed`` field, else, for an ``alignkit
    demo`` command without the flag, the demo's default seed (what a newcomer's run uses)."""
    command = run.get("command", "")
    match = re.search(r"--seed[= ](\d+)", command)
    if match:
        return int(match.group(1))
    if "seed" in run:
        return run["seed"]
    if command.startswith("alignkit demo"):
        from alignkit.config import DemoConfig

        return DemoConfig().seed
    return None


def first_ensemble_accuracy(run: dict) -> float:
    rounds = run.get("rounds") or []
    reward_eval = (rounds[0].get("reward_eval") if rounds else None) or run.get("reward_eval")
    return float(reward_eval["accuracy"])


def row(run: dict) -> dict:
    """One run's figures: gold gain over SFT, its paired s.e. and z per policy; the ensemble's
    held-out accuracy against the labels' Bayes-optimal ceiling."""
    out = {"seed": seed_of(run), "source": run["source"], "wall_clock": run.get("wall_clock")}
    for name in POLICIES:
        policy = run["policies"][name]
        diff, se = float(policy["gold_diff_vs_sft"]), float(policy["gold_diff_se"])
        # the demo's own test (evaluation.paired): a gain of at least LINE paired s.e.
        out[name] = {"diff": diff, "se": se, "z": diff / se, "beyond_line": diff >= LINE * se}
    accuracy, ceiling = first_ensemble_accuracy(run), float(run["labels"]["bayes_optimal"])
    out["reward"] = {"accuracy": accuracy, "ceiling": ceiling, "share": accuracy / ceiling}
    return out


def across(rows: list[dict]) -> dict:
    """What the seeds say together: per policy the mean gain, its s.d. over seeds and the mean's
    standard error, the smallest z and how many runs reach the line; the ensemble's mean share,
    its s.d. and how many runs reach 90% of the ceiling.

    ``run_to_run_sd`` is the spread of the runs' true gains, the part of the s.d. over seeds that
    the comparisons' own noise does not explain: sqrt(max(0, s.d.^2 - mean(s.e.^2))), the
    method-of-moments between-study variance of a random-effects meta-analysis (DerSimonian and
    Laird 1986, with equal weights)."""
    n = len(rows)
    summary = {"runs": n}
    for name in POLICIES:
        diffs = [r[name]["diff"] for r in rows]
        sd = statistics.stdev(diffs) if n > 1 else 0.0
        noise = statistics.fmean(r[name]["se"] ** 2 for r in rows)
        summary[name] = {"mean_diff": statistics.fmean(diffs), "sd_over_seeds": sd,
                         "se_of_mean": sd / math.sqrt(n),
                         "run_to_run_sd": math.sqrt(max(0.0, sd ** 2 - noise)),
                         "min_z": min(r[name]["z"] for r in rows),
                         "runs_beyond_line": sum(r[name]["beyond_line"] for r in rows)}
    shares = [r["reward"]["share"] for r in rows]
    summary["reward_share"] = {"mean": statistics.fmean(shares),
                               "sd_over_seeds": statistics.stdev(shares) if n > 1 else 0.0,
                               "min": min(shares), "runs_at_90": sum(s >= 0.9 for s in shares)}
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="demo results files or demo_summary.json files "
                    "(default: the default demo's runs in bench/results)")
    ap.add_argument("--json", default=None, help="write the table and the summary here")
    args = ap.parse_args(argv)

    paths = [Path(f) for f in args.files] or [HERE / f for f in DEFAULT_RESULTS]
    rows = [row(run) for path in paths for run in run_records(path)]
    rows.sort(key=lambda r: (r["seed"] is None, r["seed"] or 0))
    print(f"{'seed':>4}  {'PPO - SFT':>22}  {'DPO - SFT':>22}  {'best-of-4 - SFT':>22}  "
          f"{'ensemble / ceiling':>18}  time")
    for r in rows:
        cells = "  ".join(f"{r[p]['diff']:+.3f} ± {r[p]['se']:.3f} ({r[p]['z']:4.1f})"
                          for p in POLICIES)
        print(f"{r['seed'] if r['seed'] is not None else '?':>4}  {cells}  "
              f"{r['reward']['accuracy']:.3f} / {r['reward']['ceiling']:.3f} "
              f"{100 * r['reward']['share']:4.1f}%  {r['wall_clock'] or ''}")
    summary = across(rows)
    print(f"\n{summary['runs']} runs, one a seed; mean gain over seeds ± its standard error "
          f"(s.d. over seeds; of it, the spread of the runs' true gains); smallest z; runs at "
          f">= {LINE:g} paired s.e.:")
    for p in POLICIES:
        s = summary[p]
        print(f"  {p:10s} {s['mean_diff']:+.3f} ± {s['se_of_mean']:.3f} (s.d. {s['sd_over_seeds']:.3f},"
              f" run to run {s['run_to_run_sd']:.3f})  min z {s['min_z']:.1f}  "
              f"{s['runs_beyond_line']}/{summary['runs']}")
    share = summary["reward_share"]
    print(f"  first ensemble: {100 * share['mean']:.1f}% of the ceiling on average (s.d. "
          f"{100 * share['sd_over_seeds']:.1f} points, lowest {100 * share['min']:.1f}%), "
          f"{share['runs_at_90']}/{summary['runs']} runs at 90% or more")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "across_seeds": summary}, indent=1)
                                   + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
