"""Online vs offline DPO at an equal label budget, on the demo task (issue 5's acceptance).

Both arms run the same recipe (``alignkit online-dpo``), the same simulated annotator panel as
labeler (one comparison of two sampled answers per prompt = one label), the same number of labels,
optimiser steps, learning rate, beta and seed. The only difference is *when* the answers are drawn:

* offline: one round -- all ``--labels`` prompts are answered by the SFT policy up front, labelled,
  and DPO takes ``--epochs`` passes over those pairs (DPO on SFT-policy preference data, as in
  Rafailov et al. 2023);
* online: ``--rounds`` rounds of ``labels / rounds`` prompts, each answered by the *current* policy,
  labelled, then ``--epochs`` passes over that round's pairs (iterative DPO, Xu et al. 2023;
  Guo et al. 2024).

Every final policy (and the SFT policy) answers all held-out prompts with one fixed draw per seed;
gold is the panel's hidden scorer, KL is k1 against the SFT policy on the policy's own samples.

    python bench/online_vs_offline_dpo.py                 # 2 seeds x 192 labels (~45 min, 2 cores)
    python bench/online_vs_offline_dpo.py --quick         # harness check (~5 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def ensure_sft(root: Path, seed: int) -> Path:
    """Stage 1 of the demo (LoRA SFT of the packaged model on the shipped demonstrations)."""
    final = root / "sft" / "final"
    if (final / "config.json").is_file():
        return final
    from alignkit.cli import run
    from alignkit.config import DemoConfig

    print(f"{final}: training the demo's SFT policy first (~5 min)", flush=True)
    demo = DemoConfig(seed=seed, progress=False)  # the demo's SFT settings, as its stage 1 runs
    run(dataclasses.replace(demo.sft, model=demo.model, output=str(root / "sft"), seed=demo.seed,
                            device=demo.device, precision=demo.precision, progress=demo.progress,
                            overwrite=demo.overwrite))
    return final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="runs/demo", help="folder holding (or receiving) sft/final")
    p.add_argument("--out", default=None, help="output folder (default bench/results/...)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--labels", type=int, default=192, help="panel labels per arm")
    p.add_argument("--rounds", type=int, default=6, help="online arm's rounds")
    p.add_argument("--epochs", type=int, default=2, help="DPO passes over each round's pairs")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--heldout", type=int, default=96, help="held-out prompts to measure on")
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.labels, args.rounds, args.heldout = "1", 16, 2, 8
    if args.labels % args.rounds:
        p.error("--labels must be a multiple of --rounds (equal prompts per round)")
    out = Path(args.out) if args.out else RESULTS / (
        "online_vs_offline_dpo_quick" if args.quick else "online_vs_offline_dpo")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    from alignkit.cli import run
    from alignkit.config import OnlineDPOConfig
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.policy import logprobs_under, measure_policy
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.judges.gold import GoldScorer
    from alignkit.models.loading import load_model_and_tokenizer, pick_device

    # 1. The SFT policy both arms start from (and the reference of KL).
    seeds = [int(s) for s in args.seeds.split(",")]
    sft_path = ensure_sft(Path(args.demo), seeds[0])
    device = pick_device("auto")
    sft_model, tok = load_model_and_tokenizer(str(sft_path), device)
    sft_model.eval()
    heldout = load_prompts("demo-prompts-heldout", tok)
    n = min(args.heldout, len(heldout.ids))
    texts, ids, cats = heldout.texts[:n], heldout.ids[:n], heldout.categories[:n]
    gold = GoldScorer(token_counter=tok)
    sampling = SamplingConfig(args.max_new_tokens, 1.0)

    sft_logprobs = logprobs_under(sft_model)

    def measure(policy, seed: int) -> dict:
        row = measure_policy(policy, tok, texts, ids, cats, sft_logprobs, None, gold, sampling,
                             seed=1000 + seed, device=device)
        return {k: row[k] for k in ("gold", "gold_se", "kl", "response_length", "ended_fraction")}

    arms = {"offline": (1, args.labels), "online": (args.rounds, args.labels // args.rounds)}
    rows: list[dict] = []

    def save() -> None:  # after every point: a stopped run keeps what it measured
        summary = {}
        for arm in ("sft", *arms):
            got = [r for r in rows if r["arm"] == arm]
            if got:
                summary[arm] = {k: statistics.mean(r[k] for r in got)
                                for k in ("gold", "kl", "response_length")}
        (out / "results.json").write_text(json.dumps(
            {"args": vars(args), "rows": rows, "mean_over_seeds": summary,
             "wall_s": round(time.time() - started, 1)}, indent=2))

    for seed in seeds:
        # 2. The SFT policy on this seed's held-out draw.
        rows.append({"arm": "sft", "seed": seed, **measure(sft_model, seed)})
        save()
        print(f"seed {seed} sft: gold {rows[-1]['gold']:.3f}", flush=True)
        # 3. The two arms: same labels, steps, schedule; only when answers are drawn differs.
        for arm, (rounds, per_round) in arms.items():
            t0 = time.time()
            res = run(OnlineDPOConfig(
                model=str(sft_path), labeler="simulated", lora=True, lr=args.lr, beta=args.beta,
                rounds=rounds, prompts_per_round=per_round, samples_per_prompt=2,
                dpo_epochs=args.epochs, batch_size=8, warmup_steps=2, eval_every=0,
                save_every=0, sample_prompts=None, max_new_tokens=args.max_new_tokens,
                output=str(out / f"{arm}-seed{seed}"), seed=seed, progress=False,
                overwrite=True))
            policy = load_model_and_tokenizer(str(res["final"]), device)[0]
            train_log = [json.loads(line) for line in
                         (out / f"{arm}-seed{seed}" / "metrics.jsonl").open()]
            labelled = [r for r in train_log if "sample_reward" in r]
            rows.append({"arm": arm, "seed": seed, **measure(policy, seed),
                         "labels": sum(r.get("pairs", 0) + r["pairs_identical"] for r in labelled),
                         "pairs_trained": sum(r.get("pairs", 0) for r in labelled),
                         "steps": rounds * args.epochs * -(-per_round // 8),
                         "train_gold_per_round": [round(r["sample_reward"], 3) for r in labelled],
                         "train_s": round(time.time() - t0, 1)})
            del policy
            save()
            print(f"seed {seed} {arm}: gold {rows[-1]['gold']:.3f} +- {rows[-1]['gold_se']:.3f},"
                  f" KL {rows[-1]['kl']:.2f}, length {rows[-1]['response_length']:.1f}, "
                  f"sampled gold per round {rows[-1]['train_gold_per_round']} "
                  f"({rows[-1]['train_s']:.0f} s)", flush=True)

    save()
    summary = json.loads((out / "results.json").read_text())["mean_over_seeds"]
    print("\nmean over seeds:")
    for arm, s in summary.items():
        print(f"  {arm:8s} gold {s['gold']:.3f}  KL {s['kl']:.2f}  length "
              f"{s['response_length']:.1f}")
    print(f"wrote {out / 'results.json'} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
