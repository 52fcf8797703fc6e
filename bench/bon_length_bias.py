"""Best-of-n against reward models learned from annotators with a length bias, side by side.

Finished over-optimisation studies that read the same best-of-n samples (``--bon-samples``) and
differ in ``--label.length-bias`` (and nothing else) are read again: each study's best-of-n
is recomputed from its saved ensemble with the study's own function and settings
(``evaluation.overoptimisation.best_of_n_by_proxy``), now with the kept answer's expected length
beside gold.
For each study and proxy it reports how often the labels and gold prefer the longer answer of
a pair, the ensemble's held-out accuracy and ceiling, gold at n = 1, at its peak and at the
largest n, the drop from the peak with its paired standard error, and the words of the kept
answer at n = 1 and at the largest n.

    alignkit study overoptimisation --policy runs/demo/sft/final --output runs/stlen1 \\
        --label-noise 0 --kl-coefs '' --label.length-bias 1
    alignkit study overoptimisation ... --output runs/stlen0 --label.length-bias 0 \\
        --bon-samples runs/stlen1/bon_samples.jsonl       (and 0.5, ...)
    python bench/bon_length_bias.py runs/stlen0 runs/stlen0.5 runs/stlen1 \\
        --json bench/results/bon_length_bias_1207.json

Run it alone: a second torch job on the machine slows both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_study(folder: Path) -> dict:
    """One study's best-of-n, recomputed with the kept answers' lengths."""
    import torch

    from alignkit.data.readers import read_records
    from alignkit.evaluation.overoptimisation import best_of_n_by_proxy, default_ns
    from alignkit.feedback.simulated import response_words
    from alignkit.models.reward import RewardModel

    summary = json.loads((folder / "study.json").read_text())
    if not summary.get("complete"):
        raise SystemExit(f"{folder}: the study has not finished (study.json: complete false)")
    rows = [r.fields for r in read_records(str(folder / "bon_samples.jsonl"))]
    texts = [row["prompt"] for row in rows for _ in row["responses"]]
    answers = [a for row in rows for a in row["responses"]]
    gold = torch.tensor([row["gold"] for row in rows], dtype=torch.float64)
    words = torch.tensor([[response_words(a) for a in row["responses"]] for row in rows],
                         dtype=torch.float64)
    levels = {}
    for rate, level in summary["levels"].items():
        if "bon" not in level:  # a study run with --bon-n 0
            continue
        members = RewardModel.load(level["reward_model"], "cpu").score(
            texts, answers).per_member.float()
        bon = best_of_n_by_proxy(members, gold, default_ns(summary["bon_n"]),
                                 summary["proxies"], summary["uwo_lambda"], words)
        proxies = {}
        for proxy, result in bon.items():
            curve, peak = result["curve"], result["peak"]
            proxies[proxy] = {
                "gold": [round(p["gold"], 4) for p in curve],
                "proxy": [round(p["proxy"], 4) for p in curve],
                "words": [round(p["words"], 2) for p in curve],
                "peak_n": max(curve, key=lambda p: p["gold"])["n"],
                "drop": round(peak["drop"], 4), "drop_se": round(peak["drop_se"], 4),
                "fell": peak["fell"], "fit_r2": (result["fit"] or {}).get("r2"),
                "gold_pair_accuracy": round(result["gold_pair_accuracy"], 4)}
        labels = level["labels"]
        levels[rate] = {"ns": [p["n"] for p in next(iter(bon.values()))["curve"]],
                        "longer_chosen": labels.get("longer_chosen"),
                        "gold_agreement": labels["gold_agreement"],
                        "bayes_optimal": labels["bayes_optimal"],
                        "ensemble_accuracy": level["reward_eval"].get("accuracy"),
                        "ensemble_pairs": level["reward_eval"].get("pairs"),
                        "proxies": proxies}
    samples_from = summary.get("bon_samples_from") or str(folder / "bon_samples.jsonl")
    return {"study": str(folder), "length_bias": summary["label_length_bias"],
            "bon_samples_from": samples_from, "bon_prompts": summary["bon_prompts"],
            "policy": summary["policy"], "levels": levels}


def print_table(results: list[dict]) -> None:
    print(f"{'bias':>5} {'noise':>5} {'longer: labels / gold':>21} {'acc / ceiling':>13} "
          f"{'proxy':<10} {'gold n=1 -> peak (n) -> last':>30} {'drop +/- s.e.':>15} "
          f"{'words n=1 -> last':>17}")
    for result in results:
        for rate, level in result["levels"].items():
            longer = level["longer_chosen"] or {}
            by_labels = longer.get("labels", float("nan"))
            by_gold = longer.get("gold", float("nan"))
            head = (f"{result['length_bias']:>5g} {rate:>5} {by_labels:>11.0%} / {by_gold:<7.0%} "
                    f"{level['ensemble_accuracy']:.3f} / {level['bayes_optimal']:.3f}")
            for proxy, p in level["proxies"].items():
                print(f"{head} {proxy:<10} {p['gold'][0]:>9.3f} -> {max(p['gold']):.3f} "
                      f"({p['peak_n']:>3}) -> {p['gold'][-1]:.3f} {p['drop']:>6.3f} +/- "
                      f"{p['drop_se']:.3f} {p['words'][0]:>8.1f} -> {p['words'][-1]:.1f}")
                head = " " * len(head)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", type=Path,
                        help="finished study folders that read the same best-of-n samples")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    results = [read_study(folder) for folder in args.studies]
    sources = {Path(r["bon_samples_from"]).resolve() for r in results}
    if len(sources) > 1:
        print(f"warning: the studies read different best-of-n samples ({len(sources)} files)",
              file=sys.stderr)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"studies": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
