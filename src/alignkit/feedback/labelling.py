"""Labels from the simulated annotator panel (``alignkit label`` and the demo's labelling stage):
every response gold-scored, then ranked or compared by panel members through Bradley-Terry /
Plackett-Luce noise (the Gao et al. 2022 protocol), written with an agreement report."""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.errors import UserError
from alignkit.utils.files import write_jsonl_atomic


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


def label_items(items: list[dict], scorer, panel, labels_per_prompt: int = 1,
                fmt: str = "rankings") -> list[dict]:
    """Gold-score every response, then let ``labels_per_prompt`` panel members label each
    prompt. Returns ranking or pair records (README.md, "Data") with annotator ids and gold."""
    prompts = [i["prompt"] for i in items]
    responses = [i["responses"] for i in items]
    categories = [i.get("category") for i in items]
    flags = [i.get("ended") or [None] * len(i["responses"]) for i in items]
    flat_p = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat_c = [c for c, rs in zip(categories, responses) for _ in rs]
    flat_g = scorer.score(flat_p, [r for rs in responses for r in rs], flat_c,
                          [e for fs in flags for e in fs])
    golds, at = [], 0
    for rs in responses:
        golds.append(flat_g[at:at + len(rs)])
        at += len(rs)
    records = []
    for _ in range(labels_per_prompt):
        if fmt == "rankings":
            labelled = panel.label_rankings(prompts, responses, golds=golds)
        else:
            labelled = panel.label_pairs(prompts, [rs[0] for rs in responses],
                                         [rs[1] for rs in responses],
                                         gold_a=[g[0] for g in golds], gold_b=[g[1] for g in golds])
        for rec, cat in zip(labelled, categories):
            if cat is not None:
                rec["category"] = cat
        records.extend(labelled)
    return records


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
    for ann, r in report["per_annotator"].items():
        print(f"  {ann:<16} pairs {r['pairs']:>5}  gold agreement {r['gold_agreement']:.3f}  "
              f"bayes-optimal {r['bayes_optimal']:.3f}")
