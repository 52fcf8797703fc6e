"""How many panel rankings per prompt the demo's reward ensemble should learn from: a finished
demo's stage-2 answers (the same answers, the same gold) ranked 2, 5, 8 ... times a prompt by
the simulated panel, one ensemble learned from each label set with the demo's own round-1
reward config (trained on the demo's training prompts), and each ensemble scored on its
held-out prompts against

- an independent label set (8 more rankings a prompt from a panel seeded apart; its
  Bayes-optimal accuracy is the ceiling), by the reward recipe's own evaluation
  (``--eval-data``): every label count is judged on the same labels, not on its own held-out
  share (whose noise differs from set to set);
- the gold order (the pairs of answers to one prompt whose gold scores differ).

    python bench/reward_labels.py runs/demo
    python bench/reward_labels.py runs/q11 --labels 2,4,8 --json reward_labels.json
    python bench/reward_labels.py runs/demo --labels 5 --steps 40,120   # training steps too

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


def split_prompts(items: list[dict], seed: int, eval_fraction: float) -> tuple[set[str], set[str]]:
    """(training, held-out) prompt keys, split as the reward recipe splits the demo's data
    (``data.preferences.split_groups``: whole prompt groups, seeded)."""
    from alignkit.data.preferences import PreferenceGroup, split_groups

    groups = [PreferenceGroup(prompt=i["prompt"], unit=json.dumps(i["prompt"])) for i in items]
    train, held = split_groups(groups, eval_fraction, seed)
    return {g.unit for g in train}, {g.unit for g in held}


def only(records: list[dict], prompts: set[str]) -> list[dict]:
    return [r for r in records if json.dumps(r["prompt"]) in prompts]


def gold_order_accuracy(reward_folder: Path, items: list[dict]) -> tuple[float, int]:
    """Share of the pairs of answers to one prompt whose gold scores differ that the ensemble's
    mean reward orders as gold does, and the number of such pairs."""
    import torch

    from alignkit.models.reward import RewardModel

    prompts = [i["prompt"] for i in items for _ in i["responses"]]
    responses = [r for i in items for r in i["responses"]]
    with torch.no_grad():
        scores = RewardModel.load(reward_folder).score(prompts, responses).mean.tolist()
    right = total = at = 0
    for item in items:
        gold, mine = item["gold"], scores[at:at + len(item["gold"])]
        at += len(gold)
        for a, b in itertools.combinations(range(len(gold)), 2):
            if gold[a] != gold[b]:
                right += (gold[a] > gold[b]) == (mine[a] > mine[b])
                total += 1
    return right / total, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", help="a finished demo folder (its prefs.jsonl and reward config)")
    p.add_argument("--seed", type=int, default=None,
                   help="the demo's seed (its held-out split; default: its reward config's)")
    p.add_argument("--labels", default="2,5,8", help="rankings per prompt to compare")
    p.add_argument("--steps", default="",
                   help="reward training steps to compare (comma list; default: the config's)")
    p.add_argument("--eval-labels", type=int, default=8,
                   help="rankings per prompt of the independent label set")
    p.add_argument("--gold-scale", type=float, default=2.0, help="the demo's --label.gold-scale")
    p.add_argument("--json", default=None, help="write the table here")
    args = p.parse_args()

    import yaml

    from alignkit.feedback.simulated import SimulatedPanel, bayes_optimal_accuracy
    from alignkit.utils.files import write_jsonl_atomic

    demo = Path(args.demo)
    folder = demo / "reward-r1" if (demo / "reward-r1").is_dir() else demo / "reward"
    reward_config = folder / "config.yaml"
    resolved = yaml.safe_load(reward_config.read_text())
    if args.seed is None:
        args.seed = resolved["seed"]
    items = one_item_per_prompt(demo / "prefs.jsonl")
    train, held = split_prompts(items, args.seed, resolved["eval_fraction"])
    # the independent labels of the held-out prompts: a panel seeded apart from every training
    # set below; each ensemble is evaluated on them by the reward recipe itself (--eval-data)
    eval_labels = only(rank(items, args.eval_labels, args.seed + 100_003, args.gold_scale), held)
    annotators = SimulatedPanel(gold_scale=args.gold_scale).annotators
    ceiling = bayes_optimal_accuracy(eval_labels, annotators, args.gold_scale)
    print(f"{len(items)} prompts, {len(held)} held out; independent labels: {args.eval_labels} "
          f"rankings a prompt, ceiling {ceiling:.4f}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        heldout_file = write_jsonl_atomic(eval_labels, Path(tmp) / "heldout.jsonl")
        steps_list = [int(x) for x in args.steps.split(",")] if args.steps else [None]
        for times, steps in itertools.product([int(x) for x in args.labels.split(",")],
                                              steps_list):
            data = Path(tmp) / f"prefs_{times}.jsonl"
            if not data.exists():  # one label set per count, shared by every step count
                write_jsonl_atomic(only(rank(items, times, args.seed, args.gold_scale), train),
                                   data)
            output = Path(tmp) / f"reward_{times}_{steps}"
            started = time.time()
            subprocess.run([sys.executable, "-m", "alignkit", "reward", "--config",
                            str(reward_config), "--data", str(data), "--eval-data",
                            str(heldout_file), "--output", str(output), "--no-progress",
                            *(["--max-steps", str(steps)] if steps else [])],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.time() - started
            heldout = [r for r in map(json.loads, (output / "metrics.jsonl").read_text()
                                      .splitlines()) if r.get("split") == "eval"][-1]
            gold, gold_pairs = gold_order_accuracy(
                output / "final", [i for i in items if json.dumps(i["prompt"]) in held])
            steps = steps or resolved["max_steps"]
            rows[times if not args.steps else f"{times}x{steps}"] = row = {
                "rankings_per_prompt": times, "steps": steps,
                "label_accuracy": heldout["accuracy"], "label_pairs": int(heldout["pairs"]),
                "share_of_ceiling": heldout["accuracy"] / ceiling,
                "gold_order_accuracy": gold, "gold_pairs": gold_pairs,
                "seconds": round(seconds, 1)}
            print(f"{times} rankings a prompt, {steps} steps: accuracy "
                  f"{row['label_accuracy']:.4f} ({row['share_of_ceiling']:.1%} of the ceiling, "
                  f"{row['label_pairs']} pairs), gold order {gold:.4f} ({gold_pairs} pairs), "
                  f"{seconds:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"demo": str(demo), "seed": args.seed, "reward_config": str(reward_config),
             "heldout_prompts": len(held), "eval_labels_per_prompt": args.eval_labels,
             "ceiling": ceiling, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
