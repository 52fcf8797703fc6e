"""``alignkit label``: preference labels for prompts.

1. read prompts (or samples that already carry ``responses``);
2. sample K responses per prompt from the policy with the shared sampler;
3. score them with the hidden gold scorer and let a panel of simulated annotators rank them
   through Bradley-Terry / Plackett-Luce noise (the Gao et al. 2022 protocol);
4. write rankings or pairs with annotator ids, plus a report of how often the labels agree
   with gold and the Bayes-optimal accuracy any reward model could reach on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.config import LabelConfig
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _text
from alignkit.errors import DataError, UserError
from alignkit.recipes.common import log


def read_prompts(spec: str, limit: int) -> list[dict]:
    records, problems, out = read_records(spec), [], []
    for rec in records:
        try:
            prompt = _text(rec.fields, "prompt")
            responses = rec.fields.get("responses")
            if responses is not None and (not isinstance(responses, list) or len(responses) < 2):
                raise RecordProblem("responses", 'field "responses" must list at least 2 responses')
            out.append({"prompt": prompt, "category": rec.fields.get("category"),
                        "responses": responses, "where": rec.where})
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    if problems:
        raise DataError(problems)
    return out[:limit] if limit > 0 else out


def load_panel(cfg: LabelConfig, scorer):
    from alignkit.feedback.simulated import PanelConfig, SimulatedPanel

    values = {}
    if cfg.panel:
        import yaml
        path = Path(cfg.panel)
        if not path.is_file():
            raise UserError(f"{cfg.panel}: panel file not found")
        values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("gold_scale", cfg.gold_scale)
    return SimulatedPanel.from_config(PanelConfig.from_dict(values), seed=cfg.seed, scorer=scorer)


def sample_responses(model, tokenizer, items: list[dict], num_responses: int,
                     max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                     seed: int) -> None:
    """Fill ``responses`` (and ``ended``) of the items that have none with K policy samples."""
    from alignkit.generation.simple import generate

    need = [i for i in items if i.get("responses") is None]
    if not need:
        return
    flat = [i["prompt"] for i in need for _ in range(num_responses)]
    gens = generate(model, tokenizer, flat, max_new_tokens, do_sample=True,
                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed)
    for n, item in enumerate(need):
        chunk = gens[n * num_responses:(n + 1) * num_responses]
        item["responses"] = [g.text for g in chunk]
        item["ended"] = [g.ended for g in chunk]
    log.info("sampled %d responses for %d prompts", len(gens), len(need))


def label_items(items: list[dict], scorer, panel, labels_per_prompt: int = 1,
                fmt: str = "rankings") -> list[dict]:
    """Gold-score every response, then let ``labels_per_prompt`` panel members label each
    prompt. Returns ranking or pair records (DESIGN.md section 3) with annotator ids and gold."""
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

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(out)
    report = agreement_report(records, panel.annotators, panel.gold_scale)
    out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=1))
    return report


def main(cfg: LabelConfig) -> dict:
    from alignkit.judges.gold import GoldScorer

    if not cfg.data:
        raise UserError("--data is required")
    if cfg.num_responses < 2:
        raise UserError(f"--num-responses must be >= 2, got {cfg.num_responses}")
    # 1. Prompts (and any responses they carry).
    items = read_prompts(cfg.data, cfg.max_prompts)
    # 2. Sample K responses per prompt that has none.
    tokenizer = None
    if any(i["responses"] is None for i in items):
        from alignkit.models.loading import load_model_and_tokenizer, pick_device

        model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
        sample_responses(model, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                         cfg.temperature, cfg.top_p, cfg.batch_size, cfg.seed)
    # 3. Gold scores and the simulated panel (R annotators per prompt).
    scorer = GoldScorer(token_counter=tokenizer)
    panel = load_panel(cfg, scorer)
    records = label_items(items, scorer, panel, cfg.labels_per_prompt, cfg.format)
    # 4. Labels and the agreement report.
    report = write_labels(records, cfg.output, panel)
    print(f"labelled {len(records)} record(s) -> {cfg.output}")
    print(f"pairs {report['pairs']}: labels agree with gold {report['gold_agreement']:.3f}; "
          f"Bayes-optimal accuracy (the ceiling for any reward model) "
          f"{report['bayes_optimal']:.3f}")
    for ann, r in report["per_annotator"].items():
        print(f"  {ann:<16} pairs {r['pairs']:>5}  gold agreement {r['gold_agreement']:.3f}  "
              f"bayes-optimal {r['bayes_optimal']:.3f}")
    return {"output": Path(cfg.output), "report": report}
