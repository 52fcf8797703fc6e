"""How well does the adversarial suite's refusal detector agree with a person?

    # (a) sample answers to label (a draft with "refusal": null; the shipped labels file is never
    #     overwritten): 100 prompts of the shipped suite (30 harmful, 30 jailbreak, 25 benign,
    #     15 uncertain, drawn with random.Random(--prompt-seed)), one answer each, temperature 1,
    #     48 new tokens, sampling seed --seed, batch 16, CPU (~4 min on 2 busy cores)
    python bench/refusal_detector.py generate --model runs/study/sft/final --policy sft \
        --seed 11 --prompt-seed 2 --output /tmp/refusal_answers.jsonl   # the evaluation set
    #     (the development samples in refusal_train.jsonl: --seed 42 --prompt-seed 0 and
    #      --seed 7 --prompt-seed 1)
    # then label each answer by hand (the rule: alignkit.judges.refusal's docstring)

    # (b) choose the classifier's C, class weighting and threshold on the training data only
    python bench/refusal_detector.py select

    # (c) measure the detectors against the hand labels (src/alignkit/assets/data/
    #     refusal_labels.jsonl): accuracy, precision, recall, Cohen's kappa
    python bench/refusal_detector.py measure

Detectors: ``regex`` (the gold scorer's ``is_refusal`` plus ``judges.refusal._MORE_REFUSAL``, what
the suite used before), ``classifier`` (``alignkit.judges.refusal``: logistic regression on MiniLM
embeddings and cue words, trained on the shipped demonstrations plus ``refusal_train.jsonl``,
never on the labels) and ``combined`` (regex OR classifier, the suite's default). Writes
bench/results/refusal_detector.json and prints the table. Run it alone (2 cores).

How the design got here (SFT policy runs/study/sft/final; kappa = Cohen's kappa):

* v1, embedding only, trained on the demonstrations + 80 hand-written phrasings, measured on the
  seed-42 sample: regex 88/100 (kappa 0.35), classifier 68/100 (kappa 0.31): it learned "harmful
  topic", not "refuses". That sample became training data.
* v2, + 50 hand-written answers on harmful topics that do not refuse, + the seed-42 sample, on
  the seed-7 sample: regex 89 (0.43), combined 86 (0.48). Adding the cue features was checked on
  this sample too (91, 0.66; optimistic, as its errors were seen); it then became training data.
* final, on the fresh seed-11 sample (labelled before any detector was run on it): regex 88/100
  (kappa 0.13, 1 of 13 refusals found), combined 88 (0.39) with the first cue set, and 87 (0.31)
  after the cues were narrowed so that the unit tests' "I can't stress enough ..." and
  "... kill its parent instead" are not refusals (a change chosen by training CV, not by these
  labels). The shipped numbers are the last ones.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

PER_CATEGORY = {"harmful": 30, "jailbreak": 30, "benign": 25, "uncertain": 15}
LABELS = Path("src/alignkit/assets/data/refusal_labels.jsonl")


def pick_prompts(seed: int = 0) -> list:
    """The suite prompts the labelled answers answer, in suite order within each category."""
    from alignkit.evaluation.adversarial import load_suite

    suite = load_suite("shipped")
    rng = random.Random(seed)
    picked = []
    for cat, n in PER_CATEGORY.items():
        items = [s for s in suite if s.category == cat]
        keep = set(rng.sample(range(len(items)), n))
        picked.extend(s for i, s in enumerate(items) if i in keep)
    return picked


def generate(args) -> None:
    from alignkit.generation.simple import generate as gen
    from alignkit.models.loading import load_model_and_tokenizer

    prompts = pick_prompts(args.prompt_seed)
    model, tok = load_model_and_tokenizer(args.model, "cpu")
    started = time.time()
    outs = gen(model, tok, [p.prompt for p in prompts], max_new_tokens=args.max_new_tokens,
               do_sample=True, temperature=1.0, seed=args.seed, batch_size=16)
    with open(args.output, "w", encoding="utf-8") as fh:
        for p, o in zip(prompts, outs):
            fh.write(json.dumps({"prompt": p.prompt, "category": p.category,
                                 "policy": args.policy, "response": o.text,
                                 "refusal": None}) + "\n")
    print(f"{len(outs)} answers in {time.time() - started:.0f} s -> {args.output}")


def agreement(pred: list[bool], gold: list[bool]) -> dict:
    n = len(gold)
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    tn = n - tp - fp - fn
    acc = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return {"n": n, "agree": tp + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "accuracy": round(acc, 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "kappa": round((acc - pe) / (1 - pe), 4) if pe < 1 else None}


def select(args) -> None:
    """Pick C, class weighting and threshold on the TRAINING data only: 10-fold stratified CV
    (shuffled, seed 0) of the combined detector (regex OR p > threshold); the score is the mean of
    Cohen's kappa over all training records and over its sampled-answer records (those closest
    to what the suite sees). The chosen values are alignkit.judges.refusal's defaults."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from alignkit.judges import refusal

    texts, labels = refusal.training_data()
    y = np.asarray(labels, dtype=int)
    X = refusal.features(texts)
    rx = np.asarray([refusal.regex_refusal(t) for t in texts])
    sources = np.asarray(refusal.training_sources())
    sampled = (sources != "hand-written") & (sources != "demonstration")
    folds = list(StratifiedKFold(10, shuffle=True, random_state=0).split(X, y))

    def kappa(pred, gold):
        return agreement(list(map(bool, pred)), list(map(bool, gold)))["kappa"] or 0.0

    rows = []
    for c in (0.25, 1.0, 4.0, 16.0):
        for cw in ("balanced", None):
            prob = np.zeros(len(y))
            for tr, te in folds:
                clf = LogisticRegression(C=c, class_weight=cw, max_iter=5000).fit(X[tr], y[tr])
                prob[te] = clf.predict_proba(X[te])[:, 1]
            for th in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
                comb = (prob > th) | rx
                k_all, k_s = kappa(comb, y), kappa(comb[sampled], y[sampled])
                rows.append({"C": c, "class_weight": cw, "threshold": th, "kappa_all": k_all,
                             "kappa_sampled": k_s, "score": round((k_all + k_s) / 2, 4)})
    rows.sort(key=lambda r: -r["score"])
    for r in rows[:8]:
        print(r)
    best = rows[0]
    now = {"C": refusal.DEFAULT_C, "class_weight": refusal.DEFAULT_CLASS_WEIGHT,
           "threshold": refusal.DEFAULT_THRESHOLD}
    print("best:", {k: best[k] for k in now}, "| defaults:", now,
          "| match" if all(best[k] == now[k] for k in now) else "| DIFFER")


def measure(args) -> None:
    from alignkit.judges.refusal import RefusalDetector

    recs = [json.loads(line) for line in Path(args.labels).read_text().splitlines() if line]
    gold = [r["refusal"] for r in recs]
    responses, prompts = [r["response"] for r in recs], [r["prompt"] for r in recs]
    started = time.time()
    probs = RefusalDetector("classifier").probability(responses, prompts)
    fit_s = time.time() - started
    rows, preds = {}, {}
    for mode in ("regex", "classifier", "combined"):
        preds[mode] = RefusalDetector(mode)(responses, prompts)
        rows[mode] = agreement(preds[mode], gold)
        rows[mode]["by_category"] = {
            cat: agreement([p for p, r in zip(preds[mode], recs) if r["category"] == cat],
                           [r["refusal"] for r in recs if r["category"] == cat])["agree"]
            for cat in PER_CATEGORY}
    counts = {}
    for r in recs:
        key = f"{r['policy']}/{r['category']}"
        counts[key] = counts.get(key, 0) + 1
    disagreements = [{"i": i, "category": r["category"], "label": r["refusal"],
                      "regex": preds["regex"][i], "p": probs[i], "response": r["response"]}
                     for i, r in enumerate(recs)
                     if preds["combined"][i] != r["refusal"] or preds["regex"][i] != r["refusal"]]
    out = {"labels": args.labels, "n": len(recs), "refusals": sum(gold), "answers": counts,
           "detectors": rows, "classifier_fit_and_score_s": round(fit_s, 1),
           "disagreements": disagreements}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{len(recs)} hand-labelled answers ({sum(gold)} refusals): {counts}")
    print(f"{'detector':<11} {'agree':>5} {'acc':>6} {'prec':>6} {'recall':>6} {'kappa':>6}"
          f"  {'tp':>3} {'fp':>3} {'fn':>3} {'tn':>3}")
    for mode, r in rows.items():
        print(f"{mode:<11} {r['agree']:>5} {r['accuracy']:>6.3f} {r['precision'] or 0:>6.3f} "
              f"{r['recall'] or 0:>6.3f} {r['kappa'] or 0:>6.3f}  {r['tp']:>3} {r['fp']:>3} "
              f"{r['fn']:>3} {r['tn']:>3}")
    print(f"-> {args.output}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="sample the answers to label (no labels written)")
    g.add_argument("--model", default="runs/study/sft/final")
    g.add_argument("--policy", default="sft", help="name stored in each record's policy field")
    g.add_argument("--output", default="/tmp/refusal_answers.jsonl")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--prompt-seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=48)
    m = sub.add_parser("measure", help="agreement of the detectors with the hand labels")
    m.add_argument("--labels", default=str(LABELS))
    m.add_argument("--output", default="bench/results/refusal_detector.json")
    sub.add_parser("select", help="choose C, class weight and threshold on the training data")
    args = ap.parse_args()
    {"generate": generate, "measure": measure, "select": select}[args.cmd](args)


if __name__ == "__main__":
    main()
