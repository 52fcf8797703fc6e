"""A deliberately over-optimised PPO run, to see the reward-hacking monitor catch it (Gao et al.
2023): a single small reward model, no KL leash, a high learning rate, many steps.

    python bench/ppo_overoptimisation.py --demo runs/demo      # ~20 min on 2 cores

It trains one MiniLM reward model (no ensemble) on the demo's simulated rankings, then runs PPO
with LoRA from the demo's SFT policy with ``--kl-coef 0`` and ``--lr 1e-3`` for 48 steps, the
monitor reading 32 held-out prompts every 8 steps. It prints the monitor's table (proxy, gold,
KL, length, entropy, warnings) and writes it to ``bench/results/ppo_overoptimisation.json``.
Expected: proxy keeps rising, gold peaks and then falls, and the monitor warns once gold has
fallen beyond twice its standard error below its best reading.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="runs/demo", help="a finished alignkit demo folder")
    p.add_argument("--out", default="/tmp/alignkit-overoptimisation")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    from alignkit.cli import run
    from alignkit.config import PPOConfig, RewardConfig

    root, out = Path(args.demo), Path(args.out)
    started = time.time()
    rm = run(RewardConfig(model="minilm", data=str(root / "prefs.jsonl"),
                          output=str(out / "rm"), ensemble=1, max_steps=40, lr=1e-4,
                          warmup_steps=2, eval_fraction=0.2, eval_every=0, save_every=0,
                          seed=args.seed, progress=False, overwrite=True))
    res = run(PPOConfig(model=str(root / "sft" / "final"), reward_model=str(rm["final"]),
                        lora=True, lr=args.lr, kl_coef=0.0, batch_size=8, minibatch_size=4,
                        max_steps=args.steps, eval_every=8, eval_prompts=32, save_every=0,
                        output=str(out / "ppo"), seed=args.seed, progress=False,
                        overwrite=True))
    rows = [r for r in (json.loads(ln) for ln in Path(res["metrics"]).read_text().splitlines())
            if r["split"] == "eval"]
    print(f"reward model held-out accuracy {rm['eval'].get('accuracy', float('nan')):.3f}")
    print(f"{'step':>5} {'proxy':>7} {'gold':>6} {'+-':>5} {'KL':>6} {'length':>7} {'entropy':>8}"
          "  warnings")
    for r in rows:
        print(f"{r['step']:>5} {r['proxy']:>7.3f} {r['gold']:>6.3f} {r['gold_se']:>5.2f} "
              f"{r['kl']:>6.1f} {r['response_length']:>7.1f} {r['entropy']:>8.3f}  "
              + "; ".join(r["warnings"]))
    caught = [r["step"] for r in rows if any("while gold fell" in w for w in r["warnings"])]
    print(f"monitor flagged proxy-up/gold-down at steps {caught or 'none'}")
    keep = ("step", "proxy", "gold", "gold_se", "kl", "response_length", "entropy", "warnings")
    (HERE / "results" / "ppo_overoptimisation.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - started),
        "reward_model_accuracy": rm["eval"].get("accuracy"), "flagged_steps": caught,
        "monitor": [{k: r.get(k) for k in keep} for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
