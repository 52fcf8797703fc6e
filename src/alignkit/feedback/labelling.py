"""Labels from the simulated annotator panel (``alignkit label`` and the demo's labelling stage):
every response gold-scored, then ranked or compared by panel members through Bradley-Terry /
Plackett-Luce noise (the Gao et al. 2022 protocol), written with an agreement report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignkit.data.schemas import distinct_indices
from alignkit.errors import UserError
from alignkit.utils.files import write_jsonl_atomic

log = logging.getLogger("alignkit.label")


def load_panel(panel_file: str | None, gold_scale: float, seed: int, scorer=None):
    """The panel of ``panel_file`` (YAML/JSON: annotators, gold_scale, assignment; none: the
    default panel) with ``gold_scale`` unless the file sets its own. A mistake in the file is
    reported at its line."""
    from alignkit.config import read_yaml_file
    from alignkit.feedback.simulated import PanelConfig, PanelError, SimulatedPanel

    values, lines = {}, {}
    if panel_file:
        values, lines = read_yaml_file(panel_file, "panel file")
        values = {} if values is None else values  # an empty file: the default panel
        if not isinstance(values, dict):
            raise UserError(f"{panel_file}: expected a mapping of annotators, gold_scale, "
                            "assignment")
    in_file = {str(k) for k in values}
    values = {"gold_scale": gold_scale, **values}
    try:
        return SimulatedPanel.from_config(PanelConfig.from_dict(values), seed=seed,
                                          scorer=scorer)
    except PanelError as e:
        if e.key[0] not in in_file:  # from --gold-scale, not the file
            raise
        line = lines.get(e.key) or lines.get(e.key[:1])
        raise UserError(f"{panel_file}{f':{line}' if line else ''}: {e}") from None


# aspects every candidate differs in: each label round ranks all K answers by them; the others
# (mostly ties: a refusal bonus is 0 for every answer that neither refuses nor was asked for harm)
# are asked only of the pairs that differ in them, as Anthropic's HH data asks harmlessness
# questions only where the answers differ in harm
RANKED_ASPECTS = ("overall", "helpful")


def label_items(items: list[dict], scorer, panel, labels_per_prompt: int = 1,
                fmt: str = "rankings", aspects: tuple[str, ...] = ()) -> list[dict]:
    """Gold-score every response, then let ``labels_per_prompt`` panel members label each
    prompt. Returns ranking or pair records (README.md, "Data") with annotator ids and gold.

    ``aspects`` (names of ``judges.gold.ASPECTS``): label each aspect by its own part of the
    gold score and tag each record with it (``"aspect"``), for reward heads per aspect. Aspects
    of ``RANKED_ASPECTS`` are labelled as without aspects; the others only on the pairs of
    answers to a prompt whose aspect scores differ (one pair record per such pair and round).

    A response repeated for a prompt (a policy that has converged writes the same short answer
    twice) is labelled once (``distinct_responses``), and a prompt left with one response is
    not labelled: a ranking or pair of identical answers says nothing, and the readers refuse
    it."""
    items, repeats, alone = distinct_responses(items)
    if repeats:
        log.info("%d repeated response(s) labelled once; %d prompt(s) with a single distinct "
                 "response left out", repeats, alone)
    prompts = [i["prompt"] for i in items]
    responses = [i["responses"] for i in items]
    categories = [i.get("category") for i in items]
    flags = [i.get("ended") or [None] * len(i["responses"]) for i in items]
    flat_p = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat_c = [c for c, rs in zip(categories, responses) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    flat_e = [e for fs in flags for e in fs]
    if aspects:
        per_aspect = scorer.aspect_scores(scorer.components(flat_p, flat_r, flat_c, flat_e),
                                          flat_c)
        flat = {a: [s[a] for s in per_aspect] for a in aspects}
    else:
        flat = {None: scorer.score(flat_p, flat_r, flat_c, flat_e)}
    records = []
    for aspect, flat_g in flat.items():
        golds, at = [], 0
        for rs in responses:
            golds.append(flat_g[at:at + len(rs)])
            at += len(rs)
        for _ in range(labels_per_prompt):
            if aspect is not None and aspect not in RANKED_ASPECTS:
                labelled, cats = _label_differing_pairs(panel, prompts, responses, golds,
                                                        categories)
            elif fmt == "rankings":
                labelled, cats = panel.label_rankings(prompts, responses, golds=golds), categories
            else:
                labelled = panel.label_pairs(prompts, [rs[0] for rs in responses],
                                             [rs[1] for rs in responses],
                                             gold_a=[g[0] for g in golds],
                                             gold_b=[g[1] for g in golds])
                cats = categories
            for rec, cat in zip(labelled, cats):
                if cat is not None:
                    rec["category"] = cat
                if aspect is not None:
                    rec["aspect"] = aspect
            records.extend(labelled)
    return records


def distinct_responses(items: list[dict]) -> tuple[list[dict], int, int]:
    """``items`` with each prompt's repeated responses dropped (the first kept, with its
    ``ended`` flag) and the prompts left with fewer than two responses dropped; returns (items,
    responses dropped, prompts dropped). Items without repeats are returned as they are."""
    kept, repeats, alone = [], 0, 0
    for item in items:
        responses = item["responses"]
        order = distinct_indices(responses)
        if len(order) == len(responses):
            kept.append(item)
            continue
        repeats += len(responses) - len(order)
        if len(order) < 2:
            alone += 1
            continue
        item = {**item, "responses": [responses[j] for j in order]}
        if item.get("ended"):
            item["ended"] = [item["ended"][j] for j in order]
        kept.append(item)
    return kept, repeats, alone


def without_responses(records: list[dict], left_out: dict) -> list[dict]:
    """The label records with the responses of ``left_out`` (prompt text -> the responses to
    it, strings or chat messages) taken out: a ranking keeps the order of the responses left,
    with its per-response lists (``gold``) cut alike; a pair record is dropped when either side
    is left out, and so is a ranking left with fewer than two responses. The demo's DPO learns
    from the rankings of its policy's own answers this way (the base model's answers, there
    for the reward model's sake, left out)."""
    kept = []
    for rec in records:
        gone = left_out.get(rec["prompt"], [])
        if "responses" not in rec:
            if rec["chosen"] not in gone and rec["rejected"] not in gone:
                kept.append(rec)
            continue
        responses = rec["responses"]
        keep = [j for j, r in enumerate(responses) if r not in gone]
        if len(keep) == len(responses):
            kept.append(rec)
            continue
        if len(keep) < 2:
            continue
        index = {old: new for new, old in enumerate(keep)}
        cut = {field: [value[j] for j in keep] for field, value in rec.items()
               if isinstance(value, list) and len(value) == len(responses)
               and field != "ranking"}
        kept.append({**rec, **cut,
                     "ranking": [index[j] for j in rec["ranking"] if j in index]})
    return kept


def _label_differing_pairs(panel, prompts, responses, golds, categories):
    """Pair records for every two answers to a prompt whose (aspect) gold differs; and the
    category of each record's prompt."""
    pairs = [(i, a, b) for i, gs in enumerate(golds) for a in range(len(gs))
             for b in range(a + 1, len(gs)) if abs(gs[a] - gs[b]) > 1e-6]
    labelled = panel.label_pairs([prompts[i] for i, _, _ in pairs],
                                 [responses[i][a] for i, a, _ in pairs],
                                 [responses[i][b] for i, _, b in pairs],
                                 gold_a=[golds[i][a] for i, a, _ in pairs],
                                 gold_b=[golds[i][b] for i, _, b in pairs])
    return labelled, [categories[i] for i, _, _ in pairs]


def write_labels(records: list[dict], output: str | Path, panel) -> dict:
    """Write the labels atomically and the agreement report beside them; return the report."""
    from alignkit.feedback.simulated import agreement_report

    out = write_jsonl_atomic(records, output)
    report = agreement_report(records, panel.annotators, panel.gold_scale)
    out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=1))
    return report


def print_report(report: dict, records: int, output) -> None:
    """The agreement report of ``write_labels`` as lines on stdout."""
    print(f"labelled {records} record(s) -> {output}")
    print(f"pairs {report['pairs']}: labels agree with gold {report['gold_agreement']:.3f}; "
          f"Bayes-optimal accuracy (the ceiling for any reward model) "
          f"{report['bayes_optimal']:.3f}")
    longer = report.get("longer_chosen")
    if longer and longer["pairs"]:
        print(f"of {longer['pairs']} pairs of different lengths, the labels chose the longer "
              f"answer {longer['labels']:.0%}; gold prefers it {longer['gold']:.0%}")
    for aspect, r in report.get("per_aspect", {}).items():
        print(f"  aspect {aspect:<9} pairs {r['pairs']:>5}  gold agreement "
              f"{r['gold_agreement']:.3f}  bayes-optimal {r['bayes_optimal']:.3f}")
    for ann, r in report["per_annotator"].items():
        print(f"  {ann:<16} pairs {r['pairs']:>5}  gold agreement {r['gold_agreement']:.3f}  "
              f"bayes-optimal {r['bayes_optimal']:.3f}")


def pooled_ceiling(reports: list[dict]) -> float:
    """The Bayes-optimal accuracy over the pairs of several label reports (a pair-weighted
    mean): the ceiling of an ensemble learned from all of them."""
    pairs = sum(r["pairs"] for r in reports)
    return sum(r["bayes_optimal"] * r["pairs"] for r in reports) / max(pairs, 1)
