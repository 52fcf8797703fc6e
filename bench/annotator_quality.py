"""Annotator quality control end to end: does weighting labels by annotator quality give a reward
model closer to gold than training on the same labels unweighted?

1. candidate answers per shipped demonstration prompt (bench/reward_bayes.py's pool), scored by
   the hidden gold scorer; prompts split into labelled and held-out ones;
2. an annotation project (SQLite, the app's own store) with a calibration gate and attention
   checks; pairwise items of two candidates from the labelled prompts, a share of them gold
   items (the gold-better answer known);
3. simulated annotators (``alignkit.feedback.simulated``) take items from the queue in turn and
   answer from the gold scores: careful ones, sloppy ones (a share of answers at random, who
   still pass a lenient calibration) and a careless one (all random, gated by calibration);
4. ``alignkit annotate export --mode labels`` writes one record per label with its annotator and
   ``annotator_weights.json`` beside them; ``alignkit reward --model minilm`` trains twice with
   the same seed: on that folder (the weights are read from beside the data) and on a copy of
   the labels without the weights file;
5. both are scored on every held-out pair of candidates with different gold: accuracy against
   gold (the ordering the hidden scorer gives), and the Spearman correlation of reward and gold.

    python bench/annotator_quality.py            # ~5 min on 2 idle cores
    python bench/annotator_quality.py --quick    # fewer prompts and steps
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for r, i in enumerate(order):
            out[i] = float(r)
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else float("nan")


def against_gold(model, held: list[tuple[str, list[str], list[float]]]) -> dict:
    """Accuracy against gold over every held-out pair of candidates with different gold, and the
    mean per-prompt Spearman correlation of reward and gold."""
    prompts = [p for p, pool, _ in held for _ in pool]
    texts = [c for _, pool, _ in held for c in pool]
    rewards = [float(x) for x in model.score(prompts, texts).combined]
    right = total = 0
    rhos, at = [], 0
    for _, pool, golds in held:
        r = rewards[at:at + len(pool)]
        at += len(pool)
        for a in range(len(pool)):
            for b in range(a + 1, len(pool)):
                if golds[a] == golds[b]:
                    continue
                total += 1
                right += (r[a] - r[b]) * (golds[a] - golds[b]) > 0
        rho = spearman(r, golds)
        if rho == rho:
            rhos.append(rho)
    return {"gold_pairs": total, "accuracy_vs_gold": right / total,
            "spearman_vs_gold": sum(rhos) / len(rhos)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=300, help="demo prompts used (labelled + held)")
    ap.add_argument("--heldout-fraction", type=float, default=0.3)
    ap.add_argument("--gold-items", type=int, default=40)
    ap.add_argument("--labels-per-item", type=int, default=3)
    ap.add_argument("--calibration-items", type=int, default=8)
    ap.add_argument("--calibration-accuracy", type=float, default=0.6)
    ap.add_argument("--attention-rate", type=float, default=0.1)
    ap.add_argument("--sloppy-rate", type=float, default=0.7,
                    help="share of a sloppy annotator's answers given at random")
    ap.add_argument("--gold-scale", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=0, help="reward steps (0: two epochs)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/alignkit-annotator-quality")
    ap.add_argument("--json", default=None,
                    help="results file (default: bench/results/annotator_quality[_quick].json)")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.gold_items = 160, 30
    args.json = args.json or str(HERE / "results" / ("annotator_quality_quick.json"
                                                     if args.quick else "annotator_quality.json"))

    from alignkit.cli import run
    from alignkit.config import AnnotateExportConfig, RewardConfig
    from alignkit.data.readers import read_records
    from alignkit.feedback.quality import project_report
    from alignkit.feedback.simulated import Annotator, SimulatedPanel
    from alignkit.feedback.store import Store
    from alignkit.judges.gold import GoldScorer
    from reward_bayes import candidates

    started = time.time()
    rng = random.Random(args.seed)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # 1. candidates and their gold scores; labelled / held-out prompts
    recs = [r.fields for r in read_records("demo")][:args.prompts]
    pools = [candidates(r["prompt"], r["completion"],
                        recs[(i * 7 + 11) % len(recs)]["completion"], rng)
             for i, r in enumerate(recs)]
    flat = GoldScorer().score([r["prompt"] for r, pool in zip(recs, pools) for _ in pool],
                              [c for pool in pools for c in pool],
                              [r["category"] for r, pool in zip(recs, pools) for _ in pool])
    golds, at = [], 0
    for pool in pools:
        golds.append(flat[at:at + len(pool)])
        at += len(pool)
    order = list(range(len(recs)))
    rng.shuffle(order)
    n_held = int(len(recs) * args.heldout_fraction)
    held = [(recs[i]["prompt"], pools[i], golds[i]) for i in order[:n_held]]
    labelled = order[n_held:]

    # 2. the project: work items from the labelled prompts, gold items where gold clearly differs
    store = Store(f"sqlite:///{work / 'annotate.db'}")
    store.upgrade()
    pid = store.create_project("bench", "Pick the better answer.", ["overall"],
                               args.labels_per_item, calibration_items=args.calibration_items,
                               calibration_accuracy=args.calibration_accuracy,
                               attention_rate=args.attention_rate)
    scores: dict[int, tuple[float, float]] = {}
    items, item_gold = [], []
    for n, i in enumerate(labelled):
        a, b = rng.sample(range(len(pools[i])), 2)
        ga, gb = golds[i][a], golds[i][b]
        item = {"kind": "pairwise", "prompt": recs[i]["prompt"],
                "responses": [pools[i][a], pools[i][b]]}
        if n < args.gold_items and abs(ga - gb) > 0.5:
            item["gold"] = {"choices": {"overall": "A" if ga > gb else "B"}}
        items.append(item)
        item_gold.append((ga, gb))
    for tid, g in zip(store.add_tasks(pid, items), item_gold):
        scores[tid] = g

    # 3. simulated annotators through the queue, in turn
    panel = SimulatedPanel([Annotator("careful-0", 0.5), Annotator("careful-1", 0.5),
                            Annotator("sloppy-0", 0.5, careless_rate=args.sloppy_rate),
                            Annotator("sloppy-1", 0.5, careless_rate=args.sloppy_rate),
                            Annotator("sloppy-2", 0.5, careless_rate=args.sloppy_rate),
                            Annotator("careless", 0.5, careless_rate=1.0)],
                           seed=args.seed, gold_scale=args.gold_scale)
    users = {}
    for a in panel.annotators:
        users[a.id], _ = store.create_user(a.id)
        store.add_member(pid, users[a.id].id)
    project = store.project(pid)
    active = [a.id for a in panel.annotators]
    while active:
        for who in list(active):
            task = store.next_task(project, users[who])
            if task is None:
                active.remove(who)
                continue
            a_wins, _ = panel.compare(*scores[task["id"]], who)
            store.submit(pid, users[who], task["id"],
                         {"choices": {"overall": "A" if a_wins else "B"}})
    report = project_report(store, pid)
    per = {n: {k: a[k] for k in ("status", "labels", "calibration_accuracy", "attention_checks",
                                 "attention_accuracy", "agreement_with_others", "quality",
                                 "weight")} for n, a in report["per_annotator"].items()}
    print(json.dumps(per, indent=1), flush=True)

    # 4. the export (with the weights beside it) and a copy of the labels without them
    weighted = work / "weighted"
    counts = run(AnnotateExportConfig(db=store.url, project="bench", output=str(weighted),
                                      mode="labels"))
    store.dispose()
    unweighted = work / "unweighted"
    unweighted.mkdir()
    shutil.copy(weighted / "pairs.jsonl", unweighted / "pairs.jsonl")
    label_acc = []
    for line in (weighted / "pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        i = next(j for j in labelled if recs[j]["prompt"] == rec["prompt"])
        pool, gs = pools[i], golds[i]
        label_acc.append(gs[pool.index(rec["chosen"])] > gs[pool.index(rec["rejected"])])
    steps = args.steps or 2 * -(-len(labelled) // 8)
    results = {}
    for name, folder in (("unweighted", unweighted), ("weighted", weighted)):
        t0 = time.time()
        out = run(RewardConfig(model="minilm", data=str(folder / "pairs.jsonl"),
                               output=str(work / f"rm-{name}"), max_steps=steps, lr=args.lr,
                               warmup_steps=5, eval_fraction=0.0, eval_every=0, save_every=0,
                               seed=args.seed, overwrite=True, progress=False))
        results[name] = {**against_gold(out["model"], held),
                         "train_seconds": round(time.time() - t0, 1)}
        print(name, results[name], flush=True)

    result = {"command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
              "settings": vars(args), "steps": steps, "exported_pairs": counts["pairs"],
              "labels_not_counted": counts["labels_not_counted"],
              "exported_label_accuracy_vs_gold": sum(label_acc) / len(label_acc),
              "annotators": per, **results,
              "gain_accuracy_vs_gold": results["weighted"]["accuracy_vs_gold"]
              - results["unweighted"]["accuracy_vs_gold"]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\n{counts['pairs']} exported labels ({result['exported_label_accuracy_vs_gold']:.3f} "
          f"agree with gold; {counts['labels_not_counted']} labels of gated "
          f"annotators left out); held-out gold pairs {results['weighted']['gold_pairs']}: "
          f"accuracy vs gold unweighted {results['unweighted']['accuracy_vs_gold']:.3f}, "
          f"weighted {results['weighted']['accuracy_vs_gold']:.3f}; Spearman vs gold "
          f"{results['unweighted']['spearman_vs_gold']:.3f} -> "
          f"{results['weighted']['spearman_vs_gold']:.3f}; {result['seconds']:.0f}s")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
