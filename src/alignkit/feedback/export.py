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

Formats (``FORMATS``): JSONL, Parquet (``pairs.parquet``) or a Hugging Face ``datasets`` folder
(``Dataset.save_to_disk``: ``pairs/``); ``alignkit reward --data`` and ``alignkit dpo --data``
read all three through ``data.readers``. Arrow needs one column set, so every record carries every
column of the export (``None`` where a record has no value), which the readers drop again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from alignkit.errors import UserError

from alignkit.feedback.quality import annotator_states, counted_labels, item_summary

WEIGHTS_FILE = "annotator_weights.json"
FORMATS = ("jsonl", "parquet", "datasets")


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


def export_name(kind: str, fmt: str) -> str:
    """The file (or folder) name of an export: ``pairs.jsonl``, ``pairs.parquet``, ``pairs``."""
    return {"jsonl": f"{kind}.jsonl", "parquet": f"{kind}.parquet", "datasets": kind}[fmt]


def _table(records: list[dict]):
    import pyarrow as pa

    columns = list(dict.fromkeys(k for r in records for k in r))
    try:
        return pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in records])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. text and chat prompts mixed
        raise UserError(f"these records cannot share one Arrow table ({e}); export as "
                        "JSONL") from None


def write_records(records: list[dict], path: str | Path, fmt: str = "jsonl") -> Path:
    """``records`` written as ``fmt`` at ``path``, atomically (a temp name, then a rename): an
    interrupted export never leaves half a file or folder under the name."""
    if fmt not in FORMATS:
        raise UserError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "jsonl":
        return write_jsonl(records, path)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(_table(records), tmp)
        tmp.replace(out)
        return out
    from datasets import Dataset

    shutil.rmtree(tmp, ignore_errors=True)
    Dataset(_table(records)).save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.replace(out)
    return out


def export_bytes(records: list[dict], kind: str, fmt: str) -> tuple[bytes, str, str]:
    """(body, media type, file name) of a download: JSONL or Parquet as is, a ``datasets``
    folder as a zip of that folder (unzip it and pass the folder to ``--data``)."""
    if fmt == "jsonl":
        return jsonl(records).encode("utf-8"), "application/x-ndjson", export_name(kind, fmt)
    with tempfile.TemporaryDirectory(prefix="alignkit-export-") as tmp:
        path = write_records(records, Path(tmp) / export_name(kind, fmt), fmt)
        if fmt == "parquet":
            return path.read_bytes(), "application/vnd.apache.parquet", path.name
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(path.parent).as_posix())
        return buf.getvalue(), "application/zip", f"{kind}.zip"


def _provenance(answer: dict) -> dict:
    from alignkit.feedback.store import PROVENANCE

    return {**{k: answer[k] for k in PROVENANCE}, "created_at": answer["created_at"]}


def deployment_records(store) -> tuple[list[dict], list[dict], dict]:
    """(pairs, ratings, counts) of the feedback from deployment (``alignkit serve
    --feedback-db``), in the README "Data" preference format that ``alignkit reward`` and
    ``alignkit dpo`` train on.

    Pairs ``{"prompt" (chat messages: the conversation up to the answer), "chosen", "rejected",
    "source": "deployment", "kind", "reason", "chosen_provenance", "rejected_provenance",
    "conversation_id", "turn_id"}``, where a provenance is the answer's model, temperature,
    top_p, max_tokens, seed and time:

    - ``kind="pick"``: a side-by-side pick (the picked answer over each other one shown);
    - ``kind="thumbs"``: within one turn (the same prompt), each thumbs-up answer over each
      thumbs-down one not already ordered by the pick; ``reason`` is the thumbs-down's.

    A rated answer in no pair (a thumbs-up or -down alone on its prompt) is a ratings record
    ``{"prompt", "completion", "rating": "up" | "down", "reason", "provenance", ...}``: there is
    nothing to compare it with, so reward and DPO do not train on it; it is written apart for
    review or for methods that learn from single ratings. Answers identical to the other side
    are left out (no preference to learn)."""
    from alignkit.feedback.store import ChatFeedback

    pairs, ratings = [], []
    counts = {"pairs": 0, "pick_pairs": 0, "thumbs_pairs": 0, "ratings": 0,
              "skipped_identical": 0}

    def pair(turn: dict, conv: dict, chosen: dict, rejected: dict, kind: str) -> None:
        if chosen["content"] == rejected["content"]:
            counts["skipped_identical"] += 1
            return
        reason = next((r["reason"] for r in rejected["ratings"] if r["value"] == "down"), None)
        pairs.append({"prompt": turn["prompt"], "chosen": chosen["content"],
                      "rejected": rejected["content"], "source": "deployment", "kind": kind,
                      "reason": reason, "chosen_provenance": _provenance(chosen),
                      "rejected_provenance": _provenance(rejected),
                      "conversation_id": conv["id"], "turn_id": turn["id"]})
        counts[f"{kind}_pairs"] += 1

    for conv in ChatFeedback(store).all_conversations():
        for turn in conv["turns"]:
            answers = turn["answers"]
            paired: set[int] = set()
            done: set[tuple[int, int]] = set()
            picked = next((a for a in answers if a["id"] == turn["picked_answer_id"]), None)
            if picked is not None:
                for other in answers:
                    if other is not picked:
                        pair(turn, conv, picked, other, "pick")
                        done.add((picked["id"], other["id"]))
                        paired.update((picked["id"], other["id"]))

            def rating(a: dict) -> str | None:
                return a["ratings"][-1]["value"] if a["ratings"] else None

            for up in (a for a in answers if rating(a) == "up"):
                for down in (a for a in answers if rating(a) == "down"):
                    if (up["id"], down["id"]) not in done:
                        pair(turn, conv, up, down, "thumbs")
                    paired.update((up["id"], down["id"]))
            for a in answers:
                if a["ratings"] and a["id"] not in paired:
                    ratings.append({"prompt": turn["prompt"], "completion": a["content"],
                                    "rating": rating(a), "reason": a["ratings"][-1]["reason"],
                                    "source": "deployment", "provenance": _provenance(a),
                                    "conversation_id": conv["id"], "turn_id": turn["id"]})
    counts["pairs"], counts["ratings"] = len(pairs), len(ratings)
    return pairs, ratings, counts
