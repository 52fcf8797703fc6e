"""The reward-vs-KL frontier on the demo task (after Rafailov et al. 2023, Fig. 2): held-out gold
score against KL to the SFT reference for best-of-n, DPO (a beta sweep), online DPO and PPO (a
KL-coefficient sweep), all with LoRA on SmolLM2-135M-Instruct, on one PNG with the points in a CSV.

    python bench/frontier.py                      # uses runs/demo (stages 1-2 run first if missing)
    python bench/frontier.py --quick              # 2 points per method, 8 prompts: harness check
    python bench/frontier.py --demo runs/demo --out bench/results/frontier

Every policy answers the same ``--prompts`` held-out prompts (``demo-prompts-heldout``) once with
the same seed; gold is the simulated annotators' hidden scorer, KL is k1 on the policy's own
samples against the SFT policy (nats per response); best-of-n's KL is its closed form
``log n - (n-1)/n``. DPO and online DPO train on / label with what stage 2 of the demo produced
(the panel's rankings; the MiniLM reward ensemble); PPO optimises that ensemble's
``mean - std``. Run it alone: a second torch job on the machine slows both.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def ensure_demo(root: Path, seed: int) -> None:
    """Stages 1-2 of the demo (SFT, labels, reward ensemble) unless ``root`` already has them."""
    if all((root / p).exists() for p in ("sft/final", "reward/final", "prefs.jsonl")):
        return
    from alignkit.cli import run
    from alignkit.config import DemoConfig

    print(f"{root}: no demo outputs yet; running stages 1-2 of alignkit demo (~10 min)", flush=True)
    run(DemoConfig(output=str(root), skip_ppo=True, skip_dpo=True, best_of=1, seed=seed,
                   progress=False, compare_prompts=4))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="runs/demo", help="a finished alignkit demo folder")
    p.add_argument("--out", default=None, help="output folder (default bench/results/frontier)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--best-of", default="1,2,4,8,16")
    p.add_argument("--dpo-betas", default="0.03,0.1,0.3")
    p.add_argument("--dpo-steps", type=int, default=24)
    p.add_argument("--online-betas", default="0.1")
    p.add_argument("--online-rounds", type=int, default=6)
    p.add_argument("--ppo-kl", default="0.02,0.05,0.2")
    p.add_argument("--ppo-steps", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.best_of, args.dpo_betas, args.ppo_kl = 8, "1,4", "0.1,0.3", "0.05"
        args.dpo_steps, args.ppo_steps, args.online_rounds = 4, 2, 2
    out = Path(args.out) if args.out else RESULTS / ("frontier_quick" if args.quick else "frontier")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    import torch

    from alignkit.cli import run
    from alignkit.config import DPOConfig, OnlineDPOConfig, PPOConfig
    from alignkit.data.prompts import Prompts, load_prompts
    from alignkit.evaluation.best_of_n import analytic_kl, best_of_n
    from alignkit.evaluation.policy import logprobs_under, measure_policy
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.judges.gold import GoldScorer
    from alignkit.models.loading import load_model_and_tokenizer, pick_device
    from alignkit.models.reward import RewardFunction

    # 1. What the frontier starts from: the SFT policy, the panel's rankings, the reward ensemble.
    root = Path(args.demo)
    ensure_demo(root, args.seed)
    sft_path, rm_path, labels = root / "sft" / "final", root / "reward" / "final", root / "prefs.jsonl"
    device = pick_device("auto")
    sft_model, tok = load_model_and_tokenizer(str(sft_path), device)
    sft_model.eval()
    prompts = load_prompts("demo-prompts-heldout", tok)
    n = min(args.prompts, len(prompts.ids))
    texts, ids, cats = prompts.texts[:n], prompts.ids[:n], prompts.categories[:n]
    reward_fn = RewardFunction(str(rm_path), device, "mean_minus_std")
    gold = GoldScorer(token_counter=tok)
    sampling = SamplingConfig(args.max_new_tokens, 1.0)

    sft_logprobs = logprobs_under(sft_model)

    points: list[dict] = []

    def save_csv() -> None:  # after every point: a stopped sweep keeps what it measured
        with (out / "frontier.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["method", "param", "gold", "gold_se", "kl",
                                               "proxy", "length", "train_s"])
            w.writeheader()
            w.writerows(points)

    def measure(method: str, param: str, folder, seconds: float) -> None:
        policy = load_model_and_tokenizer(str(folder), device)[0]
        row = measure_policy(policy, tok, texts, ids, cats, sft_logprobs, reward_fn, gold,
                             sampling, seed=args.seed + 1, device=device)
        del policy
        points.append({"method": method, "param": param, "gold": row["gold"],
                       "gold_se": row["gold_se"], "kl": row["kl"], "proxy": row["proxy"],
                       "length": row["response_length"], "train_s": round(seconds, 1)})
        save_csv()
        print(f"  {method} {param}: gold {row['gold']:.3f} +- {row['gold_se']:.3f}, KL "
              f"{row['kl']:.2f}, proxy {row['proxy']:.3f} ({seconds:.0f} s)", flush=True)

    # 2. Best-of-n from the SFT policy (n = 1 is the SFT policy itself).
    for k in [int(x) for x in args.best_of.split(",")]:
        t0 = time.time()
        picked = best_of_n(sft_model, tok, Prompts(texts, ids, cats), reward_fn, k,
                           sampling, args.seed + 1, device)
        rows = torch.arange(n)
        ended = picked.ended[rows, picked.best]
        scores = torch.tensor(gold.score(texts, picked.picked(), cats, ended.tolist()))
        points.append({"method": "best-of-n", "param": f"n={k}", "gold": float(scores.mean()),
                       "gold_se": float(scores.std() / n ** 0.5), "kl": analytic_kl(k),
                       "proxy": float(picked.rewards[rows, picked.best].mean()),
                       "length": None, "train_s": round(time.time() - t0, 1)})
        save_csv()
        print(f"  best-of-{k}: gold {points[-1]['gold']:.3f}, KL {analytic_kl(k):.2f}", flush=True)

    # 3. DPO (LoRA) on the panel's rankings, one run per beta.
    for beta in [float(x) for x in args.dpo_betas.split(",")]:
        t0 = time.time()
        res = run(DPOConfig(model=str(sft_path), data=str(labels), lora=True, lr=3e-4,
                            beta=beta, max_steps=args.dpo_steps, batch_size=8,
                            warmup_steps=2, eval_fraction=0.1, eval_every=0, save_every=0,
                            sample_prompts=None, output=str(out / f"dpo-beta{beta}"),
                            seed=args.seed, progress=False, overwrite=True))
        measure("dpo", f"beta={beta}", res["final"], time.time() - t0)

    # 4. Online DPO (LoRA), the ensemble labelling the policy's own answers.
    for beta in [float(x) for x in args.online_betas.split(",") if x]:
        t0 = time.time()
        res = run(OnlineDPOConfig(
            model=str(sft_path), reward_model=str(rm_path), combine="mean_minus_std", lora=True,
            lr=3e-4, beta=beta, rounds=args.online_rounds, prompts_per_round=16,
            samples_per_prompt=4, batch_size=8, warmup_steps=1, eval_every=0, save_every=0,
            sample_prompts=None, max_new_tokens=args.max_new_tokens,
            output=str(out / f"online-dpo-beta{beta}"), seed=args.seed, progress=False,
            overwrite=True))
        measure("online-dpo", f"beta={beta}", res["final"], time.time() - t0)

    # 5. PPO (LoRA) against the ensemble's mean - std, one run per KL coefficient.
    for kl in [float(x) for x in args.ppo_kl.split(",")]:
        t0 = time.time()
        res = run(PPOConfig(model=str(sft_path), reward_model=str(rm_path), lora=True,
                            lr=5e-4, batch_size=8, minibatch_size=4, ppo_epochs=2,
                            max_steps=args.ppo_steps, max_new_tokens=args.max_new_tokens,
                            kl_coef=kl, combine="mean_minus_std", eval_data=None,
                            save_every=0, output=str(out / f"ppo-kl{kl}"), seed=args.seed,
                            progress=False, overwrite=True))
        measure("ppo", f"kl_coef={kl}", res["final"], time.time() - t0)

    # 6. The figure (the CSV is already written).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, marker in (("best-of-n", "s"), ("dpo", "o"), ("online-dpo", "D"), ("ppo", "^")):
        pts = sorted((q for q in points if q["method"] == method), key=lambda q: q["kl"])
        if not pts:
            continue
        ax.errorbar([q["kl"] for q in pts], [q["gold"] for q in pts],
                    yerr=[q["gold_se"] for q in pts], marker=marker, capsize=3, label=method)
        for q in pts:
            ax.annotate(q["param"], (q["kl"], q["gold"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("KL to the SFT policy (nats per response)")
    ax.set_ylabel(f"held-out gold score (mean of {n} prompts, +- 1 s.e.)")
    ax.set_title("Reward vs KL frontier on the demo task (SmolLM2-135M, LoRA)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
    (out / "frontier.json").write_text(json.dumps({
        "command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(time.time() - started, 1), "prompts": n, "points": points,
        "demo": str(root)}, indent=1))
    print(f"wrote {out / 'frontier.csv'}, {out / 'frontier.png'} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
