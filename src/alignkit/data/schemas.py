"""Record schemas of README.md "Data", validated with messages that name file, line and field.

A text field is either a string or a list of chat messages ``{"role", "content"}``. Validation
returns normalised examples; every problem is collected (not just the first) so a user fixes a
file in one pass.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from alignkit.data.readers import SURROGATE, Record
from alignkit.errors import DataError, UserError, in_file_order

ROLES = ("system", "user", "assistant", "tool")
Text = Union[str, list]  # a string or a list of {"role", "content"} messages


class RecordProblem(Exception):
    def __init__(self, field_name: str | None, message: str):
        self.field_name = field_name
        super().__init__(message)


@dataclass
class SFTExample:
    """One demonstration. ``kind`` is ``prompt_completion``, ``messages`` or ``text``."""

    kind: str
    prompt: Text | None = None
    completion: Text | None = None
    messages: list | None = None
    text: str | None = None
    where: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float = 0.0
    annotator: str | None = None
    aspect: str | None = None
    where: str = ""


@dataclass
class RankingExample:
    prompt: Text
    responses: list
    ranking: list[int]  # indices into responses, best first
    annotator: str | None = None
    aspect: str | None = None
    where: str = ""


@dataclass
class PromptExample:
    prompt: Text
    where: str = ""
    extra: dict = field(default_factory=dict)




def _no_surrogate(text: str, name: str, label: str) -> str:
    """JSON may escape half of a UTF-16 pair (``"\\ud83d"``, text cut inside an emoji); that is
    not text, and a tokenizer cannot encode it."""
    m = SURROGATE.search(text)
    if m:
        raise RecordProblem(name, f"field {label} holds a lone surrogate escape "
                            f"(\\u{ord(m.group()):04x}), not text")
    return text


def _messages(value: Any, name: str, label: str | None = None) -> list:
    """Check a chat message list; ``label`` is how the field is named in messages."""
    label = label or f'"{name}"'
    if not value:
        raise RecordProblem(name, f"field {label} is an empty message list")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RecordProblem(name, f'field {label}[{i}] must be an object with "role" and '
                                f'"content", got {type(msg).__name__}')
        if msg.get("role") not in ROLES:
            raise RecordProblem(name, f"field {label}[{i}].role must be one of "
                                f'{", ".join(ROLES)}, got {msg.get("role")!r}')
        if not isinstance(msg.get("content"), str):
            raise RecordProblem(name, f"field {label}[{i}].content must be a string")
        _no_surrogate(msg["content"], name, f"{label}[{i}].content")
    return value


def check_responses(value: Any, name: str = "responses", minimum: int = 2) -> list:
    """A list of at least ``minimum`` responses, each a string or a list of chat messages."""
    if not isinstance(value, list) or len(value) < minimum:
        raise RecordProblem(name, f'field "{name}" must be a list of at least {minimum} '
                            f"response{'s' if minimum > 1 else ''}")
    for i, r in enumerate(value):
        if isinstance(r, list):
            _messages(r, name, label=f'"{name}"[{i}]')
        elif isinstance(r, str):
            _no_surrogate(r, name, f'"{name}"[{i}]')
        else:
            raise RecordProblem(name, f'field "{name}"[{i}] must be a string or messages')
    return value


def distinct_indices(responses: list) -> list[int]:
    """The index of each distinct response's first occurrence, in order (a response is a string
    or a list of chat messages; two are the same when their JSON is): a comparison needs two
    different responses, so labelling ranks a repeat once."""
    first: dict[str, int] = {}
    for i, response in enumerate(responses):
        first.setdefault(json.dumps(response, sort_keys=True, ensure_ascii=False), i)
    return list(first.values())


def _text(fields: dict, name: str, allow_empty: bool = False) -> Text:
    if name not in fields:
        raise RecordProblem(name, f'field "{name}" is missing')
    value = fields[name]
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise RecordProblem(name, f'field "{name}" is empty')
        return _no_surrogate(value, name, f'"{name}"')
    if isinstance(value, list):
        return _messages(value, name)
    raise RecordProblem(name, f'field "{name}" must be a string or a list of chat messages, got '
                        f"{type(value).__name__}")


def _optional_str(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RecordProblem(name, f'field "{name}" must be a string')
    return str(value)


def parse_sft(rec: Record) -> SFTExample:
    f = rec.fields
    extra = {k: v for k, v in f.items() if k not in ("prompt", "completion", "messages", "text")}
    if "messages" in f:
        msgs = _messages(f["messages"], "messages") if isinstance(f["messages"], list) else None
        if msgs is None:
            raise RecordProblem("messages", 'field "messages" must be a list of chat messages')
        if not any(m["role"] == "assistant" for m in msgs):
            raise RecordProblem("messages", 'field "messages" has no assistant message to learn')
        return SFTExample("messages", messages=msgs, where=rec.where, extra=extra)
    if "text" in f and "completion" not in f:
        value = f["text"]
        if not isinstance(value, str):
            raise RecordProblem("text", 'field "text" must be a string')
        if not value.strip():
            raise RecordProblem("text", 'field "text" is empty')
        _no_surrogate(value, "text", '"text"')
        return SFTExample("text", text=value, where=rec.where, extra=extra)
    if "prompt" not in f and "completion" not in f:
        raise RecordProblem(None, 'no training fields: expected "prompt" and "completion", '
                            '"messages", or "text"')
    prompt = _text(f, "prompt")
    completion = _text(f, "completion")
    if isinstance(completion, list) and any(m["role"] != "assistant" for m in completion):
        raise RecordProblem("completion", 'field "completion" may only hold assistant messages')
    return SFTExample("prompt_completion", prompt=prompt, completion=completion, where=rec.where,
                      extra=extra)


def parse_prompt(rec: Record) -> PromptExample:
    extra = {k: v for k, v in rec.fields.items() if k != "prompt"}
    return PromptExample(_text(rec.fields, "prompt"), where=rec.where, extra=extra)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_turns(text: str) -> list | None:
    """Anthropic HH-RLHF's text form, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, as chat
    messages (Human -> user, Assistant -> assistant, each turn's text stripped); None when
    ``text`` is not in that form."""
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        return None
    return [{"role": _HH_ROLES[role], "content": content.strip()}
            for role, content in zip(pieces[1::2], pieces[2::2])]


def implicit_prompt(fields: dict) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) of a pair written without ``prompt`` (TRL's implicit-prompt
    layout, Anthropic HH-RLHF's): ``chosen`` and ``rejected`` are whole conversations, as chat
    message lists or in HH's text form; the prompt is the longest run of whole messages they
    begin with, and what follows it in each must be assistant turns only. The result equals the
    explicit record ``{"prompt": <shared turns>, "chosen": <the rest>, "rejected": <the rest>}``.
    """
    chosen, rejected = fields["chosen"], fields["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        chosen, rejected = hh_turns(chosen), hh_turns(rejected)
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise RecordProblem("prompt", 'field "prompt" is missing (without it, "chosen" and '
                            '"rejected" must both be whole conversations: chat message lists, '
                            'or "\\n\\nHuman: ... \\n\\nAssistant: ..." text)')
    _messages(chosen, "chosen")
    _messages(rejected, "rejected")
    if chosen == rejected:
        raise RecordProblem("rejected", 'field "rejected": chosen and rejected are identical (a '
                            "comparison needs two different responses)")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise RecordProblem("rejected", 'field "rejected" shares no leading turn with "chosen" '
                            '(with no "prompt" field, the prompt is the turns both begin with)')
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if k == len(turns):
            other = "rejected" if name == "chosen" else "chosen"
            raise RecordProblem(name, f'field "{name}" has no turn after the prompt it shares '
                                f'with "{other}" (with no "prompt" field, the prompt is the '
                                "turns both begin with)")
        bad = next((i for i in range(k, len(turns)) if turns[i]["role"] != "assistant"), None)
        if bad is not None:
            raise RecordProblem(name, f'field "{name}"[{bad}] is a {turns[bad]["role"]} turn '
                                'after the prompt (with no "prompt" field, chosen and rejected '
                                "must differ only in their final assistant turns)")
    return chosen[:k], chosen[k:], rejected[k:]


def parse_preference(rec: Record) -> PreferenceExample:
    f = rec.fields
    if "prompt" not in f and "chosen" in f and "rejected" in f:
        prompt, chosen, rejected = implicit_prompt(f)
    else:
        prompt = _text(f, "prompt")
        chosen = _text(f, "chosen", allow_empty=True)
        rejected = _text(f, "rejected", allow_empty=True)
    margin = f.get("margin", 0.0)
    if isinstance(margin, str):  # CSV cells are text
        try:
            margin = float(margin)
        except ValueError:
            pass
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise RecordProblem("margin", 'field "margin" must be a number')
    try:
        margin = float(margin)
    except OverflowError:  # an integer past the float range
        margin = math.inf
    if not math.isfinite(margin):  # JSON as Python writes it may hold NaN and Infinity
        raise RecordProblem("margin", f'field "margin" must be a finite number, got {margin}')
    return PreferenceExample(prompt, chosen, rejected, float(margin), _optional_str(f, "annotator"),
                             _optional_str(f, "aspect"), where=rec.where)


def parse_ranking(rec: Record) -> RankingExample:
    f = rec.fields
    prompt = _text(f, "prompt")
    responses = check_responses(f.get("responses"))
    ranking = f.get("ranking")
    if (not isinstance(ranking, list) or any(isinstance(x, bool) or not isinstance(x, int)
                                             for x in ranking)
            or sorted(ranking) != list(range(len(responses)))):
        raise RecordProblem("ranking", 'field "ranking" must list every response index once, best '
                            f"first (a permutation of 0..{len(responses) - 1})")
    return RankingExample(prompt, responses, ranking, _optional_str(f, "annotator"),
                          _optional_str(f, "aspect"), where=rec.where)


def problem_of(parse) -> Callable[[Record], str | None]:
    """``record -> why parse rejects it`` (None: it parses), for ``read_records(check=...)``."""
    def check(rec: Record) -> str | None:
        try:
            parse(rec)
        except RecordProblem as p:
            return str(p)
        return None
    return check


def validate(records: list[Record], parse, skip_invalid: bool = False,
             problems: list[str] | None = None) -> tuple[list, list[str]]:
    """Parse every record; return (examples, problems). ``problems``: those the reader already
    found in the same file (lines that are not records, see ``read_records``); they join the
    report, everything in file order. Raises ``DataError`` listing all problems unless
    ``skip_invalid`` (then the bad records are dropped and reported)."""
    examples, found = [], list(problems or [])
    for rec in records:
        try:
            examples.append(parse(rec))
        except RecordProblem as p:
            found.append(f"{rec.where}: {p}")
    found = in_file_order(found)
    if found and not skip_invalid:
        raise DataError(found)
    return examples, found


def checked_rows(rows: list, problems: list[str], spec: str, what: str, limit: int = 0) -> list:
    """The rows read from ``spec``: every problem at once as a ``DataError`` (file:line: field),
    none at all as a ``UserError``, else the first ``limit`` rows (0: all)."""
    if problems:
        raise DataError(problems)
    if not rows:
        raise UserError(f"{spec}: no {what}")
    return rows[:limit] if limit > 0 else rows
