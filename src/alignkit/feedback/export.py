"""Labels -> preference data in the formats of README.md "Data", which ``alignkit reward`` and
``alignkit dpo`` read directly.

- pairs (pairwise tasks): ``{"prompt", "chosen", "rejected", "aspect"}`` (+ ``"tie": true`` for a
  tie, chosen = response A then);
- rankings (ranking tasks): ``{"prompt", "responses", "ranking"}`` (best first).

``mode="aggregated"`` (default): one record per item (and aspect) with the aggregated label
(majority per aspect / Borda ranking, or an admin's resolution of a dispute), plus
``annotators`` (ids of who labelled it), ``agreement`` (per-item agreement, see
``agreement.item_agreement_*``), ``labels`` (how many) and ``item_id``. Unresolved disputes have
no aggregated label and are left out (counted). ``mode="labels"``: one record per annotator label
with ``"annotator"`` (for annotator-aware reward training). Hidden gold items are left out
unless ``include_gold``.

Quality control: only the labels of annotators who passed calibration (or whose project needs
none) are exported. ``annotator_weights`` gives each annotator's loss weight from their quality
score (``quality.annotator_states``); the CLI writes it as ``annotator_weights.json`` beside
``pairs.jsonl``, where ``alignkit reward`` picks it up for records that name their
``annotator`` (``mode="labels"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.feedback.quality import annotator_states, counted_labels, item_summary

WEIGHTS_FILE = "annotator_weights.json"


def _pair_record(task: dict, choice: str, aspect: str) -> dict:
    a, b = task["responses"]
    if choice == "B":
        a, b = b, a
    rec = {"prompt": task["prompt"], "chosen": a, "rejected": b, "aspect": aspect}
    if choice == "tie":
        rec["tie"] = True
    return rec


def export_records(store, project_id: int, mode: str = "aggregated",
                   include_gold: bool = False) -> tuple[list[dict], list[dict], dict]:
    """(pairs, rankings, counts) of a project."""
    project = store.project(project_id)
    aspects = project["aspects"]
    every_task = store.tasks_of(project_id)
    every_label = store.project_labels(project_id)
    labels = counted_labels(project, {t["id"]: t for t in every_task}, every_label)
    resolutions = store.resolutions_of(project_id)
    by_task: dict[int, list[dict]] = {}
    for lab in labels:
        by_task.setdefault(lab["task_id"], []).append(lab)
    pairs, rankings = [], []
    counts = {"items": 0, "skipped_disputed": 0, "skipped_unlabelled": 0, "skipped_gold": 0,
              "labels_not_counted": len(every_label) - len(labels)}
    for task in every_task:
        item_labels = by_task.get(task["id"], [])
        if task["is_gold"] and not include_gold:
            counts["skipped_gold"] += 1
            continue
        if not item_labels and task["id"] not in resolutions:
            counts["skipped_unlabelled"] += 1
            continue
        summary = item_summary(task, item_labels, aspects, resolutions.get(task["id"]))
        extra = {"item_id": task["id"], "annotators": summary["annotators"],
                 "agreement": summary["agreement"], "labels": summary["labels"]}
        if summary["resolved"]:
            extra["resolved_by"] = summary["resolved_by"]
        if mode == "labels":
            for lab in item_labels:
                one = {"item_id": task["id"], "annotator": lab["annotator"],
                       "agreement": summary["agreement"]}
                if lab.get("reason"):
                    one["reason"] = lab["reason"]
                if task["kind"] == "pairwise":
                    for aspect, choice in lab["value"]["choices"].items():
                        pairs.append({**_pair_record(task, choice, aspect), **one})
                else:
                    rankings.append({"prompt": task["prompt"], "responses": task["responses"],
                                     "ranking": lab["value"]["ranking"], **one})
            counts["items"] += 1
            continue
        if summary["disputed"] and not summary["resolved"]:
            counts["skipped_disputed"] += 1
            continue
        counts["items"] += 1
        value = summary["aggregated"]
        if task["kind"] == "pairwise":
            for aspect, choice in value["choices"].items():
                if choice is not None:
                    pairs.append({**_pair_record(task, choice, aspect), **extra})
        else:
            rankings.append({"prompt": task["prompt"], "responses": task["responses"],
                             "ranking": value["ranking"], **extra})
    counts["pairs"], counts["rankings"] = len(pairs), len(rankings)
    return pairs, rankings, counts


def annotator_weights(store, project_id: int) -> dict[str, float]:
    """Each annotator's reward-model loss weight (0 for one whose labels do not count)."""
    project = store.project(project_id)
    tasks = {t["id"]: t for t in store.tasks_of(project_id)}
    states = annotator_states(project, tasks, store.project_labels(project_id))
    return {name: state["weight"] for name, state in sorted(states.items())}


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Atomic write (temp file + rename): an interrupted export never leaves half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(jsonl(records), encoding="utf-8")
    tmp.replace(out)
    return out
