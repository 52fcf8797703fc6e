"""How many panel rankings per prompt the demo's reward ensemble should learn from: a finished
demo's stage-2 answers (the same answers, the same gold) ranked 2, 5, 8 ... times a prompt by
the simulated panel, one ensemble learned from each label set with the demo's own round-1
reward config, and each ensemble scored on the demo's held-out prompts against

- an independent label set (8 more rankings a prompt from a panel seeded apart; its
  Bayes-optimal accuracy is the ceiling), so every label count is judged on the same labels,
  not on its own held-out share (whose noise differs from set to set);
- the gold order (the pairs whose gold scores differ).

    python bench/reward_labels.py runs/demo
    python bench/reward_labels.py runs/q11 --labels 2,4,8 --json reward_labels.json

The rankings of one prompt share one forward pass (identical responses are merged into one
group), so the label count costs the ensemble no compute. Run it alone: a second torch job on
the machine slows both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_item_per_prompt(prefs: Path) -> list[dict]:
    """The stage-2 answers of each prompt, with their gold scores and category."""
    items: dict[str, dict] = {}
    for line in prefs.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        items.setdefault(json.dumps(rec["prompt"]), rec)
    return list(items.values())


def rank(items: list[dict], times: int, seed: int, gold_scale: float) -> list[dict]:
    """``times`` panel rankings of each prompt's answers, round by round (as the demo labels)."""
    from alignkit.feedback.simulated import SimulatedPanel

    panel = SimulatedPanel(seed=seed, gold_scale=gold_scale)
    out = []
    for _ in range(times):
        for rec, item in zip(panel.label_rankings([i["prompt"] for i in items],
                                                  [i["responses"] for i in items],
                                                  golds=[i["gold"] for i in items]), items):
            if item.get("category") is not None:
                rec["category"] = item["category"]
            out.append(rec)
    return out


def heldout_prompts(items: list[dict], seed: int, eval_fraction: float) -> set[str]:
    """The prompts the reward recipe holds out (``data.preferences.split_groups``: whole prompt
    groups in file order, a seeded permutation)."""
    import torch

    units = [json.dumps(i["prompt"]) for i in items]
    n_eval = min(max(int(round(len(units) * eval_fraction)), 1), len(units) - 1)
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    return {units[i] for i in order[:n_eval]}


def accuracies(reward_folder: Path, items: list[dict], held: set[str],
               labels: list[dict]) -> dict:
    """The ensemble's mean reward on every held-out answer; its agreement with ``labels``'
    ranked pairs and with the gold order."""
    import torch

    from alignkit.models.reward import RewardModel

    kept = [i for i in items if json.dumps(i["prompt"]) in held]
    prompts = [i["prompt"] for i in kept for _ in i["responses"]]
    responses = [r for i in kept for r in i["responses"]]
    model = RewardModel.load(reward_folder)
    with torch.no_grad():
        scores = model.score(prompts, responses).mean.reshape(-1).tolist()
    score = {(json.dumps(p), r): s for p, r, s in zip(prompts, responses, scores)}
    right = total = 0
    for rec in labels:
        key = json.dumps(rec["prompt"])
        if key not in held:
            continue
        order = rec["ranking"]
        for a, b in itertools.combinations(range(len(order)), 2):
            better, worse = rec["responses"][order[a]], rec["responses"][order[b]]
            right += score[(key, better)] > score[(key, worse)]
            total += 1
    gold_right = gold_total = 0
    for item in kept:
        key, gold = json.dumps(item["prompt"]), item["gold"]
        for a, b in itertools.combinations(range(len(gold)), 2):
            if gold[a] == gold[b]:
                continue
            hi, lo = (a, b) if gold[a] > gold[b] else (b, a)
            gold_right += (score[(key, item["responses"][hi])]
                           > score[(key, item["responses"][lo])])
            gold_total += 1
    return {"label_accuracy": right / total, "label_pairs": total,
            "gold_order_accuracy": gold_right / gold_total, "gold_pairs": gold_total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", help="a finished demo folder (its prefs.jsonl and reward config)")
    p.add_argument("--seed", type=int, default=None,
                   help="the demo's seed (its held-out split; default: its reward config's)")
    p.add_argument("--labels", default="2,5,8", help="rankings per prompt to compare")
    p.add_argument("--eval-labels", type=int, default=8,
                   help="rankings per prompt of the independent label set")
    p.add_argument("--gold-scale", type=float, default=2.0, help="the demo's --label.gold-scale")
    p.add_argument("--json", default=None, help="write the table here")
    args = p.parse_args()

    import yaml

    from alignkit.feedback.simulated import SimulatedPanel, bayes_optimal_accuracy

    demo = Path(args.demo)
    folder = demo / "reward-r1" if (demo / "reward-r1").is_dir() else demo / "reward"
    reward_config = folder / "config.yaml"
    resolved = yaml.safe_load(reward_config.read_text())
    eval_fraction = resolved["eval_fraction"]
    if args.seed is None:
        args.seed = resolved["seed"]
    items = one_item_per_prompt(demo / "prefs.jsonl")
    held = heldout_prompts(items, args.seed, eval_fraction)
    # the independent labels: a panel seeded apart from every training set below
    eval_labels = rank(items, args.eval_labels, args.seed + 100_003, args.gold_scale)
    annotators = SimulatedPanel(gold_scale=args.gold_scale).annotators
    ceiling = bayes_optimal_accuracy([r for r in eval_labels if json.dumps(r["prompt"]) in held],
                                     annotators, args.gold_scale)
    print(f"{len(items)} prompts, {len(held)} held out; independent labels: {args.eval_labels} "
          f"rankings a prompt, ceiling {ceiling:.4f}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for times in [int(x) for x in args.labels.split(",")]:
            data = Path(tmp) / f"prefs_{times}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in
                                    rank(items, times, args.seed, args.gold_scale)))
            started = time.time()
            subprocess.run([sys.executable, "-m", "alignkit", "reward", "--config",
                            str(reward_config), "--data", str(data), "--output",
                            str(Path(tmp) / f"reward_{times}"), "--no-progress"],
                           check=True, stdout=subprocess.DEVNULL)
            row = accuracies(Path(tmp) / f"reward_{times}" / "final", items, held, eval_labels)
            row.update(share_of_ceiling=row["label_accuracy"] / ceiling,
                       seconds=round(time.time() - started, 1))
            rows[times] = row
            print(f"{times} rankings a prompt: accuracy {row['label_accuracy']:.4f} "
                  f"({row['share_of_ceiling']:.1%} of the ceiling, {row['label_pairs']} pairs), "
                  f"gold order {row['gold_order_accuracy']:.4f} ({row['gold_pairs']} pairs), "
                  f"{row['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"demo": str(demo), "seed": args.seed, "reward_config": str(reward_config),
             "heldout_prompts": len(held), "eval_labels_per_prompt": args.eval_labels,
             "ceiling": ceiling, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
