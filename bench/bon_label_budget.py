"""Does a reward model learned from fewer labels make best-of-n fall in gold? (Gao et al. 2022
found the fall for small proxies and small label sets.) A finished over-optimisation study's
best-of-n samples (``bon_samples.jsonl``: --bon-n answers to each held-out prompt, with gold)
are scored again by reward ensembles learned from the first 32, 64, 128 ... training prompts'
rankings of one noise level (the study's own reward config, its member count and seed; each
budget at one or more step counts), and for each ensemble it reports

- every member's best-of-n curve (each member is one single reward model, initialised and fed
  in its own order) and their average prompt by prompt: the expected single-RM curve, with
  less of one draw's luck in it;
- the mean, worst-case (WCO) and uncertainty-weighted (UWO) ensemble curves;
- for each: gold at every n, where gold peaked and its drop to the largest n with the paired
  standard error of the per-prompt drops (``peak_and_fall``), and the ensemble's held-out
  accuracy on the budget's own held-out share.

    python bench/bon_label_budget.py runs/study --noise 0.25 --budgets 32,64,128 --steps 40,160

Run it alone: a second torch job on the machine slows both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def curves_for(members, gold, ns, uwo_lambda: float) -> dict:
    """Best-of-n curves: each member alone, the members' prompt-by-prompt average (the study's
    ``single-avg``), and the combined proxies."""
    from alignkit.evaluation.overoptimisation import (average_curves, best_of_n_curve,
                                                      combined_proxy)

    singles = [best_of_n_curve(m.view_as(gold).double(), gold, ns) for m in members]
    out = {"single (member average)": average_curves(singles)}
    out.update({f"member {m}": c for m, c in enumerate(singles)})
    for proxy in ("mean", "wco", "uwo"):
        scores = combined_proxy(members, proxy, uwo_lambda).view_as(gold).double()
        out[proxy] = best_of_n_curve(scores, gold, ns)
    return out


def summarise(curve: list[dict]) -> dict:
    from alignkit.evaluation.overoptimisation import peak_and_fall

    fall = peak_and_fall(curve)
    peak_n = next(p["n"] for p in curve if p["gold"] == fall["peak_gold"])
    return {"gold": [round(p["gold"], 4) for p in curve], "peak_n": peak_n,
            "drop": round(fall["drop"], 4), "drop_se": round(fall["drop_se"], 4),
            "fell": fall["fell"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="a finished study folder (bon_samples.jsonl, noise-<rate>/)")
    p.add_argument("--noise", default="0.25", help="the noise level whose rankings are used")
    p.add_argument("--budgets", default="32,64,128", help="training prompts, comma-separated")
    p.add_argument("--steps", default="40,160", help="reward steps, comma-separated")
    p.add_argument("--uwo-lambda", type=float, default=1.0)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    import torch
    import yaml

    from alignkit.evaluation.overoptimisation import default_ns
    from alignkit.models.reward import RewardModel
    from alignkit.utils.metrics import read_metrics

    study = Path(args.study)
    level = study / f"noise-{args.noise}"
    samples = [json.loads(line) for line in (study / "bon_samples.jsonl").open()]
    texts = [s["prompt"] for s in samples for _ in s["responses"]]
    answers = [a for s in samples for a in s["responses"]]
    gold = torch.tensor([g for s in samples for g in s["gold"]],
                        dtype=torch.float64).view(len(samples), -1)
    ns = default_ns(gold.shape[1])
    rankings = (level / "prefs.jsonl").read_text(encoding="utf-8").splitlines()
    prompts_in_order = list(dict.fromkeys(json.loads(r)["prompt"] for r in rankings))
    base_config = yaml.safe_load((level / "reward" / "config.yaml").read_text())
    results = {"command": " ".join(sys.argv), "study": str(study), "noise": args.noise,
               "bon_prompts": len(samples), "bon_n": gold.shape[1], "ns": ns,
               "members": base_config["ensemble"], "runs": {}}
    with tempfile.TemporaryDirectory(prefix="alignkit-bon-budget-") as tmp:
        for budget in (int(b) for b in args.budgets.split(",")):
            kept = set(prompts_in_order[:budget])
            data = Path(tmp) / f"prefs-{budget}.jsonl"
            data.write_text("".join(r + "\n" for r in rankings
                                    if json.loads(r)["prompt"] in kept), encoding="utf-8")
            for steps in (int(s) for s in args.steps.split(",")):
                out = Path(tmp) / f"rm-{budget}-{steps}"
                config = dict(base_config, data=str(data), output=str(out), max_steps=steps,
                              progress=False)
                config_file = Path(tmp) / f"config-{budget}-{steps}.yaml"
                config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
                started = time.time()
                subprocess.run(["alignkit", "reward", "--config", str(config_file)], check=True,
                               stdout=subprocess.DEVNULL)
                held_out = [m for m in read_metrics(out / "metrics.jsonl")
                            if m.get("split") == "eval"]
                members = RewardModel.load(str(out / "final"), "cpu").score(
                    texts, answers).per_member.float().cpu()
                run = {"prompts": budget, "steps": steps,
                       "held_out_accuracy": held_out[-1]["accuracy"] if held_out else None,
                       "seconds": round(time.time() - started, 1),
                       "curves": {name: summarise(c) for name, c in
                                  curves_for(members, gold, ns, args.uwo_lambda).items()}}
                results["runs"][f"{budget}x{steps}"] = run
                print(f"\n{budget} prompts, {steps} steps (held-out accuracy "
                      f"{run['held_out_accuracy']})", flush=True)
                for name, c in run["curves"].items():
                    print(f"  {name:24s} " + " ".join(f"{g:.3f}" for g in c["gold"])
                          + f" | peak n={c['peak_n']}, drop {c['drop']:.3f} ± {c['drop_se']:.3f}"
                          + (" FELL" if c["fell"] else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
