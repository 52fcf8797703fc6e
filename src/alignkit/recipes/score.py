"""``alignkit score``: rewards of each record by a saved reward model.

A record may hold ``{"prompt", "response"}``, ``{"prompt", "completion"}``, a preference pair
(``chosen``/``rejected``: both scored) or ``responses`` (all scored). Output: one JSON line per
record with the combined reward, the ensemble mean and std, each member's reward and, for
multi-aspect models, each aspect.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.config import ScoreConfig
from alignkit.data.readers import read_records
from alignkit.data.schemas import RecordProblem, _text, check_responses
from alignkit.errors import DataError, UserError
from alignkit.models.loading import pick_device
from alignkit.models.reward import RewardModel
from alignkit.utils.files import write_jsonl_atomic
from alignkit.utils.logs import log

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


def read_items(spec: str) -> list[tuple]:
    """Every scorable text of every record as (record, field name, prompt, text); every problem
    is collected and raised together (file:line: field), before any model loads."""
    problems: list[str] = []
    records, items = read_records(spec, problems), []
    if not records and not problems:
        raise UserError(f"{spec}: no records")
    for rec in records:
        try:
            prompt = _text(rec.fields, "prompt")
            for name, text in responses_of(rec.fields).items():
                items.append((rec, name, prompt, text))
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    if problems:
        raise DataError(problems)
    return items


def main(cfg: ScoreConfig) -> Path:
    if not cfg.reward_model or not cfg.data:
        raise UserError("--reward-model and --data are required")
    # 1. Validate every record first (before the model loads): nothing is written for a file
    #    with mistakes.
    items = read_items(cfg.data)
    # 2. The reward model; score in batches.
    model = RewardModel.load(cfg.reward_model, pick_device(cfg.device))
    if cfg.combine:
        model.spec.combine = cfg.combine
    scores = model.score([i[2] for i in items], [i[3] for i in items], cfg.batch_size).records()
    # 3. One line per record (its fields, then the rewards of each response), atomically.
    per_record: dict[int, dict] = {}
    for (rec, name, _, _), s in zip(items, scores):
        per_record.setdefault(id(rec), {"line": rec.line, **rec.fields, "rewards": {}})
        per_record[id(rec)]["rewards"][name] = s
    # Parquet dates, bytes ... are written as text
    out = write_jsonl_atomic(per_record.values(), cfg.output, default=str)
    log.info("scored %d response(s) of %d record(s) -> %s", len(items), len(per_record), out)
    return out
