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
"""

from __future__ import annotations

from alignkit.feedback import agreement as ag


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


def project_report(store, project_id: int) -> dict:
    project = store.project(project_id)
    aspects = project["aspects"]
    tasks = {t["id"]: t for t in store.tasks_of(project_id)}
    labels = store.project_labels(project_id)
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

    names = sorted({lab["annotator"] for lab in labels})
    per_annotator = {}
    for name in names:
        mine = [lab for lab in labels if lab["annotator"] == name]
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
        }
    labelled = [i for i in items if i["labels"]]
    return {
        "project": {"id": project["id"], "name": project["name"], "aspects": aspects,
                    "labels_per_item": project["labels_per_item"]},
        "items": len(items), "labels": len(labels),
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
    }
