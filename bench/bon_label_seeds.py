"""Is best-of-n's fall under a small label budget a finding or one draw's luck? The
over-optimisation study is run again at several seeds on the same best-of-n samples
(``alignkit study overoptimisation --bon-samples``), each time with only the first
``--label-prompts`` training prompts labelled: each seed draws its own candidate answers, its
own panel labels (at ``--noise``) and its own ensemble initialisation and data order. For every
seed and proxy (``single``: member 0, ``single-avg``: every member alone, averaged prompt by
prompt; ``mean``, ``wco``, ``uwo``) it records where gold peaked, its drop to the largest n with
the paired standard error, and whether that drop is beyond one standard error; then how many
seeds fell, per proxy.

    python bench/bon_label_seeds.py runs/studybon --policy runs/c6/sft/final --seeds 1,2,3,4,5

Run it alone: a second torch job on the machine slows both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PROXIES = ("single", "single-avg", "mean", "wco", "uwo")


def seed_row(study: dict, noise: str) -> dict:
    """One seed's reading: the ensemble's held-out accuracy and each proxy's peak and fall."""
    level = study["levels"][noise]
    row = {"reward_accuracy": level["reward_eval"].get("accuracy"),
           "bayes_optimal": level["labels"].get("bayes_optimal")}
    for proxy in PROXIES:
        bon = level["bon"][proxy]
        peak = max(bon["curve"], key=lambda p: p["gold"])
        row[proxy] = {"peak_n": peak["n"], "peak_gold": round(peak["gold"], 4),
                      "last_gold": round(bon["curve"][-1]["gold"], 4),
                      "drop": round(bon["peak"]["drop"], 4),
                      "drop_se": round(bon["peak"]["drop_se"], 4),
                      "fell": bool(bon["peak"]["fell"])}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="a finished study folder whose bon_samples.jsonl is reused")
    p.add_argument("--policy", required=True, help="the policy that study sampled from")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--label-prompts", type=int, default=32)
    p.add_argument("--noise", default="0.25")
    p.add_argument("--reward-steps", type=int, default=160)
    p.add_argument("--bon-n", type=int, default=256)
    p.add_argument("--bon-prompts", type=int, default=24)
    p.add_argument("--work", default="runs/bon_label_seeds")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from alignkit.cli import main as cli

    samples = Path(args.study) / "bon_samples.jsonl"
    rows, started = {}, time.time()
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        out = Path(args.work) / f"seed-{seed}"
        t = time.time()
        code = cli(["study", "overoptimisation", "--policy", args.policy, "--output", str(out),
                    "--overwrite", "--no-progress", "--seed", str(seed),
                    "--bon-samples", str(samples), "--bon-n", str(args.bon_n),
                    "--bon-prompts", str(args.bon_prompts),
                    "--label.prompts", str(args.label_prompts), "--label-noise", args.noise,
                    "--kl-coefs", "", "--reward.max-steps", str(args.reward_steps)])
        if code:
            raise SystemExit(f"seed {seed}: the study exited {code}")
        study = json.loads((out / "study.json").read_text())
        rows[seed] = {**seed_row(study, f"{float(args.noise):g}"),
                      "seconds": round(time.time() - t, 1)}
        print(f"seed {seed}: acc {rows[seed]['reward_accuracy']:.3f}  " + "  ".join(
            f"{proxy} {r['peak_n']}:{r['drop']:.3f}±{r['drop_se']:.3f}{'*' if r['fell'] else ''}"
            for proxy in PROXIES for r in [rows[seed][proxy]]), flush=True)
    fell = {proxy: sum(r[proxy]["fell"] for r in rows.values()) for proxy in PROXIES}
    record = {"what": __doc__.split("\n\n")[0], "settings": vars(args), "seeds": rows,
              "fell_beyond_one_se": fell, "of": len(rows),
              "seconds": round(time.time() - started, 1)}
    target = Path(args.out) if args.out else RESULTS / (
        f"bon_label_seeds_{args.label_prompts}prompts_noise{args.noise}.json")
    target.write_text(json.dumps(record, indent=1))
    print("fell beyond one s.e.: " + ", ".join(f"{k} {v}/{len(rows)}" for k, v in fell.items()))
    print(f"wrote {target} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
