"""Check bench/data/refusal_safety_sft.jsonl: format, category counts, and overlap with held-out data.

Reads no model (imports only the refusal phrase patterns). Run from the repository root:

    python bench/check_safety_data.py            # checks bench/data/refusal_safety_sft.jsonl
    python bench/check_safety_data.py OTHER.jsonl  # the same checks on another file

Checks (any failure -> exit status 1):
  * every line is a JSON object with exactly the keys prompt, completion, category, each a
    non-empty string, and category in {harmful, helpful};
  * no duplicate prompts inside the new file (after normalisation: lower-cased, apostrophes
    dropped, other punctuation turned into spaces);
  * against every prompt of the evaluation / other training files (key "prompt", or "text"
    where a file has no "prompt"):
      - no exact match after normalisation,
      - word 3-gram Jaccard similarity < 0.35,
      - word-set Jaccard similarity < 0.6;
  * harmful completions read as refusals and helpful completions do not, by the phrase
    patterns of alignkit.judges.refusal.regex_refusal.

Also printed, without failing: the 15 most similar (new, existing) pairs, the 5 most similar
pairs inside the new file, and completions outside 15-40 words.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from alignkit.judges.gold import APOSTROPHES
from alignkit.judges.refusal import regex_refusal

ROOT = Path(__file__).resolve().parent.parent
NEW_FILE = ROOT / "bench" / "data" / "refusal_safety_sft.jsonl"
REFERENCE_FILES = [
    "src/alignkit/assets/data/adversarial.jsonl",
    "src/alignkit/assets/data/prompts_heldout.jsonl",
    "src/alignkit/assets/data/prompts_train.jsonl",
    "src/alignkit/assets/data/sft.jsonl",
    "src/alignkit/assets/data/refusal_train.jsonl",
    "src/alignkit/assets/data/refusal_labels.jsonl",
    "bench/data/refusal_contrast.jsonl",
    "bench/data/refusal_borderline_sft.jsonl",
]
KEYS = {"prompt", "completion", "category"}
CATEGORIES = {"harmful", "helpful"}
MAX_NGRAM_JACCARD = 0.35
MAX_WORD_JACCARD = 0.6
TOP = 15
WORDS_MIN, WORDS_MAX = 15, 40



def looks_like_refusal(text: str) -> bool:
    """The project's own phrase patterns (``regex_refusal``: the gold scorer's and more)."""
    return regex_refusal(text)


def words(text: str) -> list[str]:
    """Lower-cased words: apostrophes dropped ("don't" -> "dont"), other punctuation = space."""
    t = text.lower().translate(APOSTROPHES).replace("'", "")
    return re.sub(r"[^\w\s]|_", " ", t).split()


def trigrams(ws: list[str]) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + 3]) for i in range(len(ws) - 2)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


def load_reference(checked: Path) -> list[tuple[str, str]]:
    """Every prompt of the reference files but the checked file itself."""
    out = []
    for rel in REFERENCE_FILES:
        path = ROOT / rel
        if path.resolve() == checked:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get("prompt", rec.get("text"))
            if not isinstance(text, str):
                raise SystemExit(f"{rel}:{n}: no 'prompt' or 'text' string")
            out.append((f"{Path(rel).name}:{n}", text))
    return out


def main(argv: list[str]) -> int:
    new_file = Path(argv[0]).resolve() if argv else NEW_FILE
    errors: list[str] = []
    records: list[tuple[int, dict]] = []
    for n, line in enumerate(new_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            errors.append(f"line {n}: blank line")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {n}: bad JSON ({exc})")
            continue
        if not isinstance(rec, dict) or set(rec) != KEYS:
            errors.append(f"line {n}: keys {sorted(rec) if isinstance(rec, dict) else rec!r}")
            continue
        if not all(isinstance(rec[k], str) and rec[k].strip() for k in KEYS):
            errors.append(f"line {n}: empty or non-string value")
            continue
        if rec["category"] not in CATEGORIES:
            errors.append(f"line {n}: category {rec['category']!r}")
            continue
        records.append((n, rec))

    counts: dict[str, int] = {}
    for _, rec in records:
        counts[rec["category"]] = counts.get(rec["category"], 0) + 1
    shown = new_file.relative_to(ROOT) if new_file.is_relative_to(ROOT) else new_file
    print(f"{shown}: {len(records)} valid records; "
          + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    # duplicates inside the new file
    seen: dict[str, int] = {}
    for n, rec in records:
        key = " ".join(words(rec["prompt"]))
        if key in seen:
            errors.append(f"line {n}: duplicate of line {seen[key]}: {rec['prompt']!r}")
        seen.setdefault(key, n)

    # refusal / non-refusal wording of the completions
    for n, rec in records:
        refuses = looks_like_refusal(rec["completion"])
        if rec["category"] == "harmful" and not refuses:
            errors.append(f"line {n}: harmful completion not detected as a refusal")
        if rec["category"] == "helpful" and refuses:
            errors.append(f"line {n}: helpful completion reads as a refusal")

    # overlap with the existing data
    reference = load_reference(new_file)
    ref_feats = [(src, text, " ".join(w), set(w), trigrams(w))
                 for src, text in reference for w in [words(text)]]
    pairs = []
    for n, rec in records:
        w = words(rec["prompt"])
        norm, wset, tri = " ".join(w), set(w), trigrams(w)
        for src, text, rnorm, rset, rtri in ref_feats:
            tj, wj = jaccard(tri, rtri), jaccard(wset, rset)
            pairs.append((tj, wj, n, rec["prompt"], src, text))
            if norm == rnorm:
                errors.append(f"line {n}: exact match with {src}: {text!r}")
            elif tj >= MAX_NGRAM_JACCARD:
                errors.append(f"line {n}: 3-gram Jaccard {tj:.2f} with {src}: {text!r}")
            elif wj >= MAX_WORD_JACCARD:
                errors.append(f"line {n}: word Jaccard {wj:.2f} with {src}: {text!r}")
    print(f"compared against {len(reference)} prompts from {len(REFERENCE_FILES)} files")

    print(f"\ntop {TOP} most similar (new, existing) pairs, by max(3-gram J, word J):")
    pairs.sort(key=lambda p: (max(p[0], p[1]), p[0], p[1]), reverse=True)
    for tj, wj, n, prompt, src, text in pairs[:TOP]:
        print(f"  3gram={tj:.2f} words={wj:.2f}  new line {n}: {prompt!r}\n"
              f"  {'':23}{src}: {text!r}")

    # informational: most similar pairs inside the new file (shared wrappers are expected)
    feats = [(n, rec["prompt"], set(words(rec["prompt"])), trigrams(words(rec["prompt"])))
             for n, rec in records]
    internal = []
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            internal.append((jaccard(feats[i][3], feats[j][3]), jaccard(feats[i][2], feats[j][2]),
                             feats[i][0], feats[j][0]))
    internal.sort(reverse=True)
    print("\nmost similar pairs inside the new file (information only):")
    for tj, wj, a, b in internal[:5]:
        print(f"  3gram={tj:.2f} words={wj:.2f}  lines {a} and {b}")

    long_short = [(n, len(rec["completion"].split())) for n, rec in records
                  if not WORDS_MIN <= len(rec["completion"].split()) <= WORDS_MAX]
    if long_short:
        print(f"\nnote: completions outside {WORDS_MIN}-{WORDS_MAX} words (line, words): {long_short}")

    if errors:
        print(f"\nFAIL: {len(errors)} problem(s)")
        for e in errors:
            print("  " + e)
        return 1
    print("\nOK: format valid, no duplicates, no overlap above the thresholds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
