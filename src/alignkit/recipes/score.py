"""``alignkit score``: rewards of each record by a saved reward model.

A record may hold ``{"prompt", "response"}``, ``{"prompt", "completion"}``, a preference pair
(``chosen``/``rejected``: both scored) or ``responses`` (all scored). Output: one JSON line per
record with the combined reward, the ensemble mean and std, each member's reward and, for
multi-aspect models, each aspect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.config import ScoreConfig
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _text, check_responses
from alignkit.errors import DataError, UserError
from alignkit.models.loading import pick_device
from alignkit.models.reward import RewardModel
from alignkit.recipes.common import log

RESPONSE_FIELDS = ("response", "completion", "chosen", "rejected")


def responses_of(fields: dict) -> dict[str, object]:
    """The scorable texts of one record, by field name ('responses[i]' for lists)."""
    found = {}
    for name in RESPONSE_FIELDS:
        if name in fields:
            found[name] = _text(fields, name, allow_empty=True)
    if "responses" in fields:
        for i, r in enumerate(check_responses(fields["responses"], minimum=1)):
            found[f"responses[{i}]"] = r
    if not found:
        raise RecordProblem(None, 'nothing to score: expected "response", "completion", '
                            '"chosen"/"rejected" or "responses"')
    return found


def main(cfg: ScoreConfig) -> Path:
    if not cfg.reward_model or not cfg.data:
        raise UserError("--reward-model and --data are required")
    # 1. Validate every record first (before the model loads): nothing is written for a file
    #    with mistakes.
    problems: list[str] = []
    records, items = read_records(cfg.data, problems), []
    if not records and not problems:
        raise UserError(f"{cfg.data}: no records")
    for rec in records:
        try:
            prompt = _text(rec.fields, "prompt")
            for name, text in responses_of(rec.fields).items():
                items.append((len(items), rec, name, prompt, text))
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    if problems:
        raise DataError(problems)
    model = RewardModel.load(cfg.reward_model, pick_device(cfg.device))
    if cfg.combine:
        model.spec.combine = cfg.combine
    # 2. Score in batches; 3. write one line per record, atomically.
    scores = model.score([i[3] for i in items], [i[4] for i in items], cfg.batch_size).records()
    per_record: dict[int, dict] = {}
    for (_, rec, name, _, _), s in zip(items, scores):
        per_record.setdefault(id(rec), {"line": rec.line, **rec.fields, "rewards": {}})
        per_record[id(rec)]["rewards"][name] = s
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in per_record.values():
            fh.write(json.dumps(row, default=str) + "\n")  # Parquet dates, bytes ... as text
    tmp.replace(out)
    log.info("scored %d response(s) of %d record(s) -> %s", len(items), len(per_record), out)
    return out
