"""Policies against a finished demo's SFT policy on its 96 held-out prompts, exactly as the
demo's own comparison (``evaluation.policy_comparison.compare_policies``) pairs them: every
policy answers the same prompts with the same seeded streams, gold by the hidden scorer, the
difference to SFT paired by prompt with its standard error, KL to SFT. For variants of one stage (a DPO on other
rankings, a PPO with another setting) trained from that demo's folders.

    python bench/demo_compare.py runs/demo dpo=runs/demo/dpo/final dpo_policy=runs/x/final
    python bench/demo_compare.py runs/demo --seed 1 --answers 4 ppo=runs/demo/ppo/final
    python bench/demo_compare.py runs/demo --seed 1 --answers 8 --sft-answers 8 ppo=... dpo=...

``--seed``: the demo seed whose comparison this repeats (the answers are drawn with seed + 1,
as the demo draws them); another seed repeats the comparison on fresh answers, a second look at
the same policies. Run it alone: a second torch job on the machine slows both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", help="a finished demo folder (its sft/final and reward/final)")
    p.add_argument("policies", nargs="+", help="NAME=FOLDER, each a policy folder")
    p.add_argument("--seed", type=int, default=42, help="the demo seed whose comparison to repeat")
    p.add_argument("--answers", type=int, default=4, help="answers per prompt of each policy")
    p.add_argument("--sft-answers", type=int, default=6,
                   help="answers per prompt of the SFT policy (the demo's --best-of-pool)")
    p.add_argument("--reward-model", default=None, help="default: <demo>/reward/final")
    p.add_argument("--json", default=None, help="write the table here")
    args = p.parse_args()

    from alignkit.config import DemoConfig
    from alignkit.models.loading import load_model_and_tokenizer, pick_device
    from alignkit.evaluation.policy_comparison import compare_policies

    demo = Path(args.demo)
    cfg = DemoConfig(output=str(demo), progress=False, seed=args.seed,
                     best_of_pool=args.sft_answers)
    device = pick_device(cfg.device)
    sft_folder = str(demo / "sft" / "final")
    sft, tokenizer = load_model_and_tokenizer(sft_folder, device)
    policies = {"sft": (None, cfg.best_of_pool)}
    for spec in args.policies:
        name, folder = spec.split("=", 1)
        policies[name] = (folder, args.answers)
    reward = Path(args.reward_model or demo / "reward" / "final")
    started = time.time()
    table, _ = compare_policies(cfg, sft, tokenizer, policies, reward, device, sft_folder)
    for name, row in table.items():
        se = row.get("gold_diff_se") or 0.0
        z = row["gold_diff_vs_sft"] / se if se else 0.0
        print(f"{name:12} {row['answers_per_prompt']:>3} answers  gold {row['gold']:.3f}  "
              f"- SFT {row['gold_diff_vs_sft']:+.3f} +/- {se:.3f} ({z:.1f} s.e.)  "
              f"KL {row['kl']:.2f}  length {row['response_length']:.1f}", flush=True)
    print(f"{time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {name: {k: v for k, v in row.items() if not k.endswith("per_answer")}
             for name, row in table.items()}, indent=1))


if __name__ == "__main__":
    main()
