"""Task records for ``alignkit annotate add-tasks``: read and validate a data file (every problem
reported as ``file:line: message``), and turn each record into a store task.

Accepted records (README.md, "Data"):
- ``{"prompt"}``: candidates are sampled from a policy (``--model``); K = 2 gives a pairwise
  task, K > 2 a ranking;
- ``{"prompt", "chosen", "rejected"}``: a pairwise task (A/B order shuffled, seeded);
- ``{"prompt", "responses": [...]}``: a pairwise task (2 responses) or a ranking (more);
- ``"gold": true`` on a pair or on a ranking with ``"ranking"``: a hidden gold item whose known
  answer is chosen-better (every aspect) or the given ranking.
"""

from __future__ import annotations

import random

from alignkit.data.preferences import parse_pair, parse_ranked
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _optional_str, _text, checked_rows


def _gold_flag(fields: dict) -> bool:
    value = fields.get("gold", False)
    if not isinstance(value, bool):
        raise RecordProblem("gold", 'field "gold" must be true or false')
    return value


def read_task_records(spec: str, limit: int = 0) -> list[dict]:
    """Records -> ``{"prompt", "responses" | None, "gold", "meta", ...}`` (responses None: to be
    sampled). Raises ``DataError`` listing every bad record."""
    out, problems = [], []
    for rec in read_records(spec, problems):
        f = rec.fields
        try:
            gold = _gold_flag(f)
            meta = {"source": rec.where}
            if f.get("category") is not None:
                meta["category"] = _optional_str(f, "category")
            if ("chosen" in f or "rejected" in f) and "responses" in f:
                raise RecordProblem("responses", 'a ranking ("responses") and a pair ("chosen", '
                                    '"rejected") in one record: keep one')
            if "chosen" in f or "rejected" in f:
                ex = parse_pair(rec)
                out.append({"prompt": ex.prompt, "responses": [ex.chosen, ex.rejected],
                            "best_first": [0, 1] if gold else None, "pair": True, "gold": gold,
                            "meta": meta})
            elif "responses" in f:
                if gold and "ranking" not in f:
                    raise RecordProblem("ranking", 'a gold item needs its "ranking"')
                if gold or "ranking" in f:
                    ex = parse_ranked(rec)
                    ranking = ex.ranking
                else:
                    ex = parse_ranked(rec.__class__(rec.source, rec.line, {
                        **f, "ranking": list(range(len(f["responses"])))
                        if isinstance(f["responses"], list) else None}))
                    ranking = None
                out.append({"prompt": ex.prompt, "responses": ex.responses,
                            "best_first": ranking if gold else None, "pair": False,
                            "gold": gold, "meta": meta})
            else:
                if gold:
                    raise RecordProblem("gold", "a gold item needs its responses and answer")
                out.append({"prompt": _text(f, "prompt"), "responses": None, "gold": False,
                            "best_first": None, "pair": False, "meta": meta})
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    return checked_rows(out, problems, spec, "records", limit)


def to_store_tasks(records: list[dict], aspects: list[str], shuffle_pairs: bool = True,
                   seed: int = 0) -> list[dict]:
    """Store tasks from read (and sampled) records. Two responses make a pairwise task, shown in
    a seeded random order; a gold pair's known answer follows the shuffle."""
    rng = random.Random(seed)
    tasks = []
    for r in records:
        responses = list(r["responses"])
        if len(responses) == 2:
            swap = shuffle_pairs and rng.random() < 0.5
            if swap:
                responses.reverse()
            gold = None
            if r["gold"]:
                better = r["best_first"][0]
                if swap:
                    better = 1 - better
                gold = {"choices": {a: "A" if better == 0 else "B" for a in aspects}}
            tasks.append({"kind": "pairwise", "prompt": r["prompt"], "responses": responses,
                          "gold": gold, "meta": r["meta"]})
        else:
            gold = {"ranking": list(r["best_first"])} if r["gold"] else None
            tasks.append({"kind": "ranking", "prompt": r["prompt"], "responses": responses,
                          "gold": gold, "meta": r["meta"]})
    return tasks
