"""Reward-model quality against its ceiling, on simulated labels (issue 3 acceptance).

1. candidate answers per shipped demonstration prompt: the demonstration, a version cut
   mid-sentence, another prompt's answer, the answer plus a ramble, a repeated answer, the prompt
   parroted with praise, a bare refusal, a pleasantry (a pool whose gold scores spread widely);
2. the hidden gold scorer scores every candidate; a simulated panel (5 annotators, one careless)
   ranks K=4 random candidates per prompt, R times per prompt;
3. prompts are split train / held-out; the Bayes-optimal accuracy of the held-out labels is the
   ceiling any reward model can reach on them;
4. ``alignkit reward`` trains a MiniLM ensemble; we report held-out accuracy / ceiling and the
   AUROC of the ensemble spread against its mistakes.

    python bench/reward_bayes.py                 # ~10 min on 2 idle cores
    python bench/reward_bayes.py --quick         # a smaller check (~3 min)

Targets (issue 3): accuracy >= 90% of the ceiling on >= 2000 held-out comparisons, AUROC > 0.6.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def candidates(prompt: str, answer: str, other: str, rng: random.Random) -> list[str]:
    words = answer.split()
    cut = " ".join(words[:max(3, int(len(words) * rng.uniform(0.4, 0.7)))]).rstrip(".!?,")
    return [
        answer,
        cut,
        other,
        answer + " " + other + " " + answer,
        answer + " " + answer,
        prompt + " What a wonderful, amazing question, I love it!",
        "I can't help with that.",
        "Thanks for asking! I hope you have a lovely day.",
    ]


def gold_mistake_auroc(model, rows: list[dict]) -> dict:
    """Order every held-out pair of distinct gold by the ensemble; a mistake is ranking the
    gold-worse answer higher. AUROC against those mistakes of the members' spread of their
    preference probabilities sigmoid(r_m(hi) - r_m(lo)) (the ensemble std alignkit reports), of
    the raw reward-difference spread, and of the spread relative to the mean difference; and the
    accuracy against gold."""
    import torch

    from alignkit.losses.reward import auroc

    texts = sorted({(r["prompt"], x) for r in rows for x in r["responses"]})
    where = {t: i for i, t in enumerate(texts)}
    scores = model.score([p for p, _ in texts], [x for _, x in texts]).per_member  # (M, N)
    diffs, wrong = [], []
    for r in rows:
        for a in range(len(r["responses"])):
            for b in range(a + 1, len(r["responses"])):
                ga, gb = r["gold"][a], r["gold"][b]
                if ga == gb:
                    continue
                hi, lo = (a, b) if ga > gb else (b, a)
                d = scores[:, where[(r["prompt"], r["responses"][hi])]] - \
                    scores[:, where[(r["prompt"], r["responses"][lo])]]
                diffs.append(d)
                wrong.append(float(d.mean() <= 0))
    d = torch.stack(diffs, 1)
    wrong_t = torch.tensor(wrong)
    spread = d.std(0, unbiased=False)
    return {"gold_pairs": len(wrong), "accuracy_vs_gold": 1.0 - float(wrong_t.mean()),
            "std_auroc_vs_gold_mistakes": auroc(torch.sigmoid(d).std(0, unbiased=False), wrong_t),
            "margin_std_auroc_vs_gold_mistakes": auroc(spread, wrong_t),
            "rel_std_auroc_vs_gold_mistakes": auroc(spread / (d.mean(0).abs() + 1e-6), wrong_t)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--reinit-layers", type=int, default=0,
                    help="each member redraws its top N MiniLM blocks (member diversity)")
    ap.add_argument("--steps", type=int, default=0, help="reward steps (0: two epochs)")
    ap.add_argument("--labels-per-prompt", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--gold-scale", type=float, default=2.0)
    ap.add_argument("--heldout-fraction", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/alignkit-reward-bayes")
    ap.add_argument("--json", default=str(HERE / "results" / "reward_bayes.json"))
    args = ap.parse_args()
    if args.quick:
        args.members, args.labels_per_prompt = 2, 2
        args.json = str(HERE / "results" / "reward_bayes_quick.json")

    from alignkit.cli import run
    from alignkit.config import RewardConfig
    from alignkit.data.readers import read_records
    from alignkit.feedback.simulated import SimulatedPanel, agreement_report
    from alignkit.judges.gold import GoldScorer

    started = time.time()
    rng = random.Random(args.seed)
    recs = [r.fields for r in read_records("demo")]
    if args.quick:
        recs = recs[:120]
    pools = []
    for i, r in enumerate(recs):
        other = recs[(i * 7 + 11) % len(recs)]["completion"]
        pools.append(candidates(r["prompt"], r["completion"], other, rng))
    # 2. gold scores of every candidate, then R panel rankings of K random candidates per prompt
    scorer = GoldScorer()
    flat_p = [r["prompt"] for r, pool in zip(recs, pools) for _ in pool]
    flat_c = [r["category"] for r, pool in zip(recs, pools) for _ in pool]
    flat = scorer.score(flat_p, [c for pool in pools for c in pool], flat_c)
    golds, at = [], 0
    for pool in pools:
        golds.append(flat[at:at + len(pool)])
        at += len(pool)
    panel = SimulatedPanel(seed=args.seed, gold_scale=args.gold_scale)
    order = list(range(len(recs)))
    rng.shuffle(order)
    n_held = int(len(recs) * args.heldout_fraction)
    held = set(order[:n_held])
    train_rows, held_rows = [], []
    for i, (r, pool, gs) in enumerate(zip(recs, pools, golds)):
        for _ in range(args.labels_per_prompt):
            pick = rng.sample(range(len(pool)), args.k)
            (rec,) = panel.label_rankings([r["prompt"]], [[pool[j] for j in pick]],
                                          golds=[[gs[j] for j in pick]])
            (held_rows if i in held else train_rows).append(rec)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train_rows), ("heldout.jsonl", held_rows)):
        (work / name).write_text("".join(json.dumps(x) + "\n" for x in rows))
    ceiling = agreement_report(held_rows, panel.annotators, panel.gold_scale)
    print(f"labels: {len(train_rows)} train / {len(held_rows)} held-out rankings; held-out pairs "
          f"{ceiling['pairs']}, gold agreement {ceiling['gold_agreement']:.3f}, Bayes-optimal "
          f"{ceiling['bayes_optimal']:.3f}", flush=True)
    # 4. the reward ensemble
    steps = args.steps or 2 * -(-(len(recs) - n_held) // 8)
    cfg = RewardConfig(model="minilm", data=str(work / "train.jsonl"),
                       eval_data=str(work / "heldout.jsonl"), output=str(work / "rm"),
                       ensemble=args.members, max_steps=steps,
                       reinit_layers=args.reinit_layers, lr=args.lr, warmup_steps=5,
                       eval_every=0, save_every=0, seed=args.seed, overwrite=True, progress=False)
    out = run(cfg)
    ev = out["eval"]
    # 5. against the hidden gold (not the noisy labels): does the ensemble spread flag the pairs
    #    it orders wrongly? Label mistakes are mostly annotator noise, invisible to any model.
    gold_view = gold_mistake_auroc(out["model"], held_rows)
    result = {
        "command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
        "settings": vars(args), "steps": steps,
        "heldout_pairs": ev.get("pairs"), "accuracy": ev.get("accuracy"),
        "bayes_optimal": ceiling["bayes_optimal"], "gold_agreement": ceiling["gold_agreement"],
        "accuracy_over_ceiling": ev.get("accuracy", 0) / ceiling["bayes_optimal"],
        "std_auroc_vs_mistakes": ev.get("std_auroc_vs_mistakes"), "eval": ev, **gold_view,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nheld-out pairs {result['heldout_pairs']}: accuracy {result['accuracy']:.3f} = "
          f"{result['accuracy_over_ceiling']:.1%} of the Bayes-optimal {result['bayes_optimal']:.3f}"
          f" (target >= 90%); ensemble std AUROC vs mistakes "
          f"{result['std_auroc_vs_mistakes']:.3f} against label mistakes, "
          f"{gold_view['std_auroc_vs_gold_mistakes']:.3f} against gold mistakes (target > 0.6); "
          f"relative spread std/|mean| AUROC {gold_view['rel_std_auroc_vs_gold_mistakes']:.3f} "
          f"against gold mistakes; "
          f"accuracy against gold {gold_view['accuracy_vs_gold']:.3f}; {result['seconds']:.0f}s")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
