"""Prompt files: the prompts a policy answers (sampling, PPO, online DPO, best-of-n, evaluation,
labelling), read and checked, then rendered and tokenised for a model.

A record is ``{"prompt"[, "category"][, "responses"]}``: ``prompt`` a string or chat messages,
``category`` a tag the gold scorer reads (harmful / helpful / uncertain), ``responses`` answers
already written (labelling uses them instead of sampling). Every problem is reported as
``file:line: field``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from alignkit.data.mixture import Draw
from alignkit.data.readers import Record, read_records
from alignkit.data.schemas import (RecordProblem, _optional_str, _text, checked_rows,
                                   check_responses, problem_of)
from alignkit.data.tokenize import render_prompt
from alignkit.errors import DataError, UserError

log = logging.getLogger("alignkit.data")


def _prompt_row(rec: Record) -> dict:
    prompt = _text(rec.fields, "prompt")
    responses = rec.fields.get("responses")
    if responses is not None:
        check_responses(responses)
    return {"prompt": prompt, "category": _optional_str(rec.fields, "category"),
            "responses": responses, "where": rec.where}


def read_prompts(spec: str, limit: int, draw: Draw | None = None) -> list[dict]:
    """Prompts file -> ``{"prompt", "category", "responses", "where"}`` per record (the first
    ``limit`` when ``limit`` > 0); a ``DataError`` lists every bad record. ``draw``: the run's
    seed, oversampling and mixture size (``data.mixture``)."""
    problems: list[str] = []
    records, out = read_records(spec, problems, draw, check=problem_of(_prompt_row)), []
    for rec in records:
        try:
            out.append(_prompt_row(rec))
        except RecordProblem as p:
            problems.append(f"{rec.where}: {p}")
    return checked_rows(out, problems, spec, "prompts", limit)


@dataclass
class Prompts:
    texts: list  # as written in the file (string or messages)
    ids: list[list[int]]  # rendered with the chat template, tokenised
    categories: list
    drawn: dict = field(default_factory=dict)  # a mixture's or --oversample's draw (Draw.report)


def load_prompt_sets(cfg, tokenizer) -> tuple[Prompts, Prompts | None]:
    """A sampling stage's ``--data`` prompts (drawn with the run's seed, ``--oversample`` and
    ``--mixture-size``) and its ``--eval-data`` prompts (None without them)."""
    draw = Draw.of(cfg)
    train = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length, cfg.skip_invalid,
                         draw)
    heldout = (load_prompts(cfg.eval_data, tokenizer, cfg.chat, cfg.max_prompt_length,
                            cfg.skip_invalid, draw.for_eval()) if cfg.eval_data else None)
    return train, heldout


def load_prompts(spec: str, tokenizer, chat: str = "auto", max_prompt_length: int = 256,
                 skip_invalid: bool = False, draw: Draw | None = None) -> Prompts:
    """Prompts file -> rendered, tokenised prompts (what a policy continues); problems reported
    as file:line: field, an error unless ``skip_invalid``."""
    rows = read_prompts(spec, 0, draw)
    if not rows:
        raise UserError(f"{spec}: no prompts")
    texts, ids, cats, problems = [], [], [], []
    bos = not getattr(tokenizer, "chat_template", None)
    for row in rows:
        rendered = render_prompt(tokenizer, row["prompt"], chat, row["where"])
        toks = tokenizer(rendered, add_special_tokens=bos)["input_ids"]
        if len(toks) > max_prompt_length:
            problems.append(f"{row['where']}: field \"prompt\" is {len(toks)} tokens, longer than "
                            f"--max-prompt-length {max_prompt_length}")
            continue
        texts.append(row["prompt"])
        ids.append(toks)
        cats.append(row.get("category"))
    problems = list(dict.fromkeys(problems))  # a prompt drawn several times is reported once
    if problems and not skip_invalid:
        raise DataError(problems)
    if problems:
        log.warning("skipped %d prompt(s):\n  %s", len(problems), "\n  ".join(problems[:20]))
    return Prompts(texts, ids, cats, dict(draw.report) if draw is not None else {})
