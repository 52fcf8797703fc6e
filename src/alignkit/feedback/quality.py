"""Quality control of a project: per-item aggregation, agreement and disputes, per-annotator
gold accuracy and agreement, project-level Krippendorff's alpha and mean pairwise Cohen's kappa.

Alpha: nominal over (item, aspect) units for pairwise tasks, ordinal over (item, response)
positions for rankings (see ``agreement``). Kappa: Cohen's kappa of every pair of annotators on
the units they share (pairwise choices, and the pairwise preferences a ranking implies); the
project figure is their mean (Light's kappa). Per annotator: gold accuracy on hidden gold items,
mean kappa with each other annotator, alpha with this annotator left out (if alpha rises without
someone, their labels lower agreement), and agreement with the aggregated label of others.
Disputes (no strict majority) list each annotator's choice; gold items are never disputes (their
answer is known: a split on one is counted as gold accuracy).

Quality control (a project's ``calibration_items``, ``calibration_accuracy``, ``attention_rate``):
an annotator's first N gold labels are their calibration, later ones attention checks. Only the
labels of annotators who passed (or whose project has no calibration) count in aggregation,
agreement and export: labels from someone who turned out to answer at random would otherwise
move majorities and alpha before anyone noticed. Each annotator gets a quality score (right
answers pooled over gold items and agreement with the others' majority) and from it a loss
weight for the reward model (``annotator_weight``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from alignkit.feedback import agreement as ag

# an annotator's labels count (aggregation, agreement, export) in these states only
COUNTED = ("not_required", "passed")


def quality_control(project: dict) -> bool:
    """Whether the project gates annotators by calibration or mixes in attention checks (without
    either, gold items are served to everyone in queue order, as before these settings)."""
    return (project.get("calibration_items") or 0) > 0 or (project.get("attention_rate") or 0) > 0


def gold_score(kind: str, value: dict, gold: dict) -> Optional[float]:
    """How well one label matches a gold item's known answer (share of aspects, or of response
    pairs, it gets right)."""
    if kind == "pairwise":
        return ag.gold_score_pairwise(value["choices"], gold["choices"])
    return ag.gold_score_ranking(value["ranking"], gold["ranking"])


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def calibration_state(project: dict, scores: Sequence[Optional[float]]) -> dict:
    """An annotator's quality-control state from their gold scores in the order they gave the
    labels: the first ``calibration_items`` are their calibration (``calibrating`` until all are
    answered, then ``passed`` or ``failed_calibration`` against ``calibration_accuracy``), the
    rest are attention checks. Derived from the labels, so it needs no state of its own; the
    store refuses to change a calibration label once the calibration is decided, so a decision
    stands."""
    n = project.get("calibration_items") or 0
    scored = [s for s in scores if s is not None]
    calibration, attention = scored[:n], scored[n:]
    accuracy = _mean(calibration)
    if n == 0:
        status = "not_required"
    elif len(calibration) < n:
        status = "calibrating"
    elif accuracy + 1e-9 >= project.get("calibration_accuracy", 0.8):
        status = "passed"
    else:
        status = "failed_calibration"
    return {"status": status, "calibration_items": n, "calibration_done": len(calibration),
            "calibration_accuracy": accuracy if n else None,
            "attention_checks": len(attention), "attention_accuracy": _mean(attention)}


def annotator_weight(quality: Optional[float]) -> float:
    """A reward-model loss weight from a quality score q (the chance the annotator's label is
    right): 2q - 1, how far their labels are from a coin flip. Under label noise a label right
    with probability q carries (2q - 1) of the signal of a perfect one in expectation, so a
    careless annotator's pairs pull the model that much less. No evidence: 1 (as an annotator
    absent from ``--annotator-weights``)."""
    if quality is None or math.isnan(quality):
        return 1.0
    return max(0.0, min(1.0, 2.0 * quality - 1.0))


def agreement_with_others(tasks: dict[int, dict], by_task: dict[int, list[dict]], name: str,
                          task_ids: Sequence[int], aspects: list[str]) -> tuple[float, int]:
    """(summed agreement, units) of ``name``'s labels (of the items ``task_ids``) on non-gold
    items with the strict-majority label of the other annotators of each item (``by_task``: the
    labels that count, per item): per aspect for pairs, the share of response pairs ordered
    alike for rankings."""
    total, units = 0.0, 0
    for tid in task_ids:
        item = by_task.get(tid, [])
        task = tasks[tid]
        mine = [lab for lab in item if lab["annotator"] == name]
        others = [lab for lab in item if lab["annotator"] != name]
        if task["is_gold"] or not mine or not others:
            continue
        if task["kind"] == "pairwise":
            choices, _ = ag.aggregate_pairwise([o["value"]["choices"] for o in others], aspects)
            for aspect, choice in choices.items():
                if choice is not None and aspect in mine[0]["value"]["choices"]:
                    total += float(mine[0]["value"]["choices"][aspect] == choice)
                    units += 1
        else:
            order, _ = ag.aggregate_ranking([o["value"]["ranking"] for o in others])
            total += ag.gold_score_ranking(mine[0]["value"]["ranking"], order)
            units += 1
    return total, units


def annotator_states(project: dict, tasks: dict[int, dict], labels: list[dict]
                     ) -> dict[str, dict]:
    """Per annotator (by name): calibration state, attention-check accuracy, agreement with the
    others (on the labels that count) and the quality score and loss weight they give.

    Quality: the share of right answers pooled over gold items (calibration and attention
    checks) and agreement units with the others' majority; weight: ``annotator_weight`` of it,
    scaled so that the best counted annotator weighs 1 (the loss keeps its scale); 0 for an
    annotator whose labels do not count."""
    gold_scores: dict[str, list[Optional[float]]] = {}
    for lab in sorted(labels, key=lambda x: x["id"]):
        task = tasks[lab["task_id"]]
        gold_scores.setdefault(lab["annotator"], [])
        if task["is_gold"]:
            gold_scores[lab["annotator"]].append(gold_score(task["kind"], lab["value"],
                                                            task["gold"]))
    states = {name: calibration_state(project, scores) for name, scores in gold_scores.items()}
    by_task: dict[int, list[dict]] = {}
    labelled: dict[str, list[int]] = {}
    for lab in labels:
        labelled.setdefault(lab["annotator"], []).append(lab["task_id"])
        if states[lab["annotator"]]["status"] in COUNTED:
            by_task.setdefault(lab["task_id"], []).append(lab)
    for name, state in states.items():
        gold = [s for s in gold_scores[name] if s is not None]
        agree, units = agreement_with_others(tasks, by_task, name, labelled[name],
                                             project["aspects"])
        state["counted"] = state["status"] in COUNTED
        state["agreement_with_others"] = agree / units if units else None
        state["agreement_units"] = units
        n = len(gold) + units
        state["quality"] = (sum(gold) + agree) / n if n else None
        state["raw_weight"] = annotator_weight(state["quality"]) if state["counted"] else 0.0
    top = max((s["raw_weight"] for s in states.values()), default=0.0)
    for state in states.values():
        state["weight"] = round(state.pop("raw_weight") / top, 4) if top > 0 else (
            1.0 if state["counted"] else 0.0)
    return states


def counted_labels(project: dict, tasks: dict[int, dict], labels: list[dict]) -> list[dict]:
    """The labels that count: those of annotators who passed calibration (or need none)."""
    if not quality_control(project):
        return labels
    states = annotator_states(project, tasks, labels)
    return [lab for lab in labels if states[lab["annotator"]]["counted"]]


def item_summary(task: dict, item_labels: list[dict], aspects: list[str],
                 resolution: dict | None) -> dict:
    """Aggregated label, agreement and dispute state of one item."""
    if task["kind"] == "pairwise":
        values = [lab["value"]["choices"] for lab in item_labels]
        choices, disputed = ag.aggregate_pairwise(values, aspects)
        per_aspect = [ag.item_agreement_nominal([v[a] for v in values if a in v])
                      for a in aspects]
        agreement = ag.mean_defined(per_aspect)
        aggregated = {"choices": choices}
    else:
        rankings = [lab["value"]["ranking"] for lab in item_labels]
        order, disputed = ag.aggregate_ranking(rankings)
        agreement = ag.item_agreement_ranking(rankings)
        aggregated = {"ranking": order}
    # a gold item has a known answer: disagreement on it is a quality signal, not a dispute
    disputed = disputed and len(item_labels) >= 2 and not task["is_gold"]
    if resolution is not None:
        aggregated = resolution["value"]
    return {"id": task["id"], "kind": task["kind"], "labels": len(item_labels),
            "annotators": [lab["annotator"] for lab in item_labels],
            # who chose what (rankings as canonical indices, best first), for the dispute queue
            "votes": [{"annotator": lab["annotator"], "value": lab["value"]}
                      for lab in item_labels], "agreement": agreement,
            "aggregated": aggregated if item_labels or resolution else None,
            "disputed": disputed, "resolved": resolution is not None,
            "resolved_by": resolution.get("admin") if resolution else None,
            "is_gold": task["is_gold"]}


def assist_report(project: dict, tasks: dict[int, dict], labels: list[dict],
                  suggestions: dict[int, dict]) -> dict:
    """Human-AI agreement with the judge's suggestions (``alignkit annotate create-project
    --judge``): overall, and per annotator on the labels given without the suggestion shown
    (the control: under ``assist = before`` a seeded half of each annotator's items, every item
    otherwise) and with it shown. ``anchoring`` is agreement shown minus agreement not shown:
    about zero when the suggestion does not move the annotator, positive when they follow it.
    Agreement of one label is scored as against a gold answer (share of aspects, or of response
    pairs, that match); gold items are left out (their answer is known, not judged)."""
    per: dict[str, dict[str, list[float]]] = {}
    every: list[float] = []
    for lab in labels:
        sug, task = suggestions.get(lab["task_id"]), tasks[lab["task_id"]]
        if sug is None or task["is_gold"]:
            continue
        score = gold_score(task["kind"], lab["value"], sug["value"])
        if score is None:
            continue
        every.append(score)
        side = "shown" if lab.get("assisted") else "not_shown"
        per.setdefault(lab["annotator"], {"shown": [], "not_shown": []})[side].append(score)
    annotators = {}
    for name, sides in sorted(per.items()):
        shown, control = _mean(sides["shown"]), _mean(sides["not_shown"])
        annotators[name] = {
            "labels_shown": len(sides["shown"]), "agreement_shown": shown,
            "labels_not_shown": len(sides["not_shown"]), "agreement_not_shown": control,
            "anchoring": shown - control if shown is not None and control is not None else None,
        }
    return {"mode": project.get("assist") or "off", "suggested_items": len(suggestions),
            "judges": sorted({s["judge"] for s in suggestions.values()}),
            "labels": len(every), "agreement": _mean(every), "per_annotator": annotators}


def project_report(store, project_id: int) -> dict:
    project = store.project(project_id)
    aspects = project["aspects"]
    tasks = {t["id"]: t for t in store.tasks_of(project_id)}
    every_label = store.project_labels(project_id)
    states = annotator_states(project, tasks, every_label)
    # labels of annotators still calibrating or who failed it count nowhere below
    labels = [lab for lab in every_label if states[lab["annotator"]]["counted"]]
    resolutions = store.resolutions_of(project_id)
    by_task: dict[int, list[dict]] = {}
    for lab in labels:
        by_task.setdefault(lab["task_id"], []).append(lab)
    items = [item_summary(t, by_task.get(tid, []), aspects, resolutions.get(tid))
             for tid, t in tasks.items()]

    pair_labels = [(lab["task_id"], lab["annotator"], lab["value"]["choices"]) for lab in labels
                   if tasks[lab["task_id"]]["kind"] == "pairwise"]
    rank_labels = [(lab["task_id"], lab["annotator"], lab["value"]["ranking"]) for lab in labels
                   if tasks[lab["task_id"]]["kind"] == "ranking"]
    nominal_units = ag.pairwise_units(pair_labels)
    ordinal_units = ag.ranking_position_units(rank_labels)
    kappa_units = {**nominal_units, **ag.ranking_pair_units(rank_labels)}
    kappas = ag.pairwise_kappas(kappa_units)

    names = sorted(states)
    per_annotator = {}
    for name in names:
        mine = [lab for lab in every_label if lab["annotator"] == name]
        gold_scores = []
        for lab in mine:
            task = tasks[lab["task_id"]]
            if not task["is_gold"]:
                continue
            if task["kind"] == "pairwise":
                s = ag.gold_score_pairwise(lab["value"]["choices"], task["gold"]["choices"])
            else:
                s = ag.gold_score_ranking(lab["value"]["ranking"], task["gold"]["ranking"])
            if s is not None:
                gold_scores.append(s)
        with_others = [v["kappa"] for pair, v in kappas.items() if name in pair]
        per_annotator[name] = {
            "labels": len(mine),
            "gold_items": len(gold_scores),
            "gold_accuracy": sum(gold_scores) / len(gold_scores) if gold_scores else None,
            "mean_kappa": ag.mean_defined(with_others),
            "alpha_pairwise_without": ag.alpha_of_units(nominal_units, "nominal", without=name),
            "alpha_ranking_without": ag.alpha_of_units(ordinal_units, "ordinal", without=name),
            **states[name],
        }
    labelled = [i for i in items if i["labels"]]
    return {
        "project": {"id": project["id"], "name": project["name"], "aspects": aspects,
                    "labels_per_item": project["labels_per_item"],
                    "calibration_items": project.get("calibration_items", 0),
                    "calibration_accuracy": project.get("calibration_accuracy", 0.8),
                    "attention_rate": project.get("attention_rate", 0.0)},
        "items": len(items), "labels": len(labels),
        "labels_not_counted": len(every_label) - len(labels),
        "annotator_weights": {name: s["weight"] for name, s in states.items()},
        "complete_items": sum(i["labels"] >= project["labels_per_item"] for i in items
                              if not i["is_gold"]),
        "alpha_pairwise_nominal": ag.alpha_of_units(nominal_units, "nominal"),
        "alpha_ranking_ordinal": ag.alpha_of_units(ordinal_units, "ordinal"),
        "mean_pairwise_kappa": ag.mean_defined(v["kappa"] for v in kappas.values()),
        "kappa_pairs": [{"a": a, "b": b, **v} for (a, b), v in kappas.items()],
        "per_annotator": per_annotator,
        "mean_item_agreement": ag.mean_defined(i["agreement"] for i in labelled),
        "disputes": [i for i in items if i["disputed"] and not i["resolved"]],
        "resolved": [i for i in items if i["resolved"]],
        "item_details": items,
        "assist": assist_report(project, tasks, labels, store.suggestions_of(project_id)),
    }
