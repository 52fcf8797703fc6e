"""The pairwise judge prompt (optionally under a constitutional principle) and the parser that
turns whatever a judge model wrote into a verdict.

Parsing is deliberately forgiving, because real judges answer in many shapes ("A", "**B**",
"[[A]]", "Response B is better.", ``{"winner": "a"}``, a paragraph of reasoning that ends in
"Final verdict: B") -- and deliberately strict about what it will not guess: a text in which no
rule below finds a verdict is *unknown* (``parse_verdict`` returns None), which the judges turn
into a tie with confidence 0.5 (a coin flip) and count, rather than reading an article "a" as a
vote. Rules, first match wins:

1. a JSON object with ``winner`` / ``verdict`` / ``choice`` / ``better`` / ``preferred`` (and an
   optional ``confidence`` in [0.5, 1]);
2. MT-Bench brackets ``[[A]]``, ``[[B]]``, ``[[C]]`` / ``[[tie]]``;
3. the whole answer is the verdict: ``A``, ``b.``, ``**Response B**``, ``(A)``, ``tie``;
4. otherwise the *last* verdict phrase in the text (reasoning comes first, conclusions last):
   "Response A is better" / "B is worse", "winner: A", "final verdict: B", "I prefer A",
   "the better response is B", "it's a tie", "both are equally good".

A lower-case letter counts in a phrase only where it cannot be the article "a" (followed by the
end, punctuation or "is"); a capital letter counts before any non-word character.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from alignkit.judges.base import Verdict

SYSTEM_PROMPT = ("You are a careful, impartial judge of AI assistant answers. You compare two "
                 "responses to the same user request and say which one is better.")

INSTRUCTION = ("Which response is better{criterion}? Ignore the order in which they are shown "
               "and their length as such. Answer with a single letter: A if Response A is "
               "better, B if Response B is better, or tie if neither is better.")


def as_text(value: Any, role: str = "assistant") -> str:
    """A prompt or response (string or chat messages) as plain text for a judge prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" if role == "all"
                         else str(m.get("content", ""))
                         for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def judge_messages(prompt: Any, response_a: Any, response_b: Any,
                   principle: Optional[str] = None) -> list[dict]:
    """Chat messages asking which of two responses is better; ``principle`` (a constitution's
    critique text or any criterion) narrows "better" to it (constitutional AI feedback)."""
    criterion = f" according to this principle: {principle.strip()}" if principle else ""
    user = (f"[User request]\n{as_text(prompt, 'all')}\n\n"
            f"[Response A]\n{as_text(response_a)}\n\n"
            f"[Response B]\n{as_text(response_b)}\n\n"
            + INSTRUCTION.format(criterion=criterion))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_TIE_WORDS = {"tie", "c", "draw", "equal", "neither", "both", "same", "none", "tied"}
_WINNER_KEYS = ("winner", "verdict", "choice", "better", "preferred", "preference", "answer")
_BRACKET = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]", re.I)
_BARE = re.compile(r"^(?:the\s+)?(?:(?:response|assistant|answer|output|option|candidate)\s*)?"
                   r"\(?([ab])\)?$", re.I)
_NOUN = r"(?:response|assistant|answer|output|option|candidate|model)"
_LETTER = r"\(?([ab])\)?"
_PHRASES = [
    # "Response A is (clearly) better", "B is worse"
    (re.compile(rf"(?:{_NOUN}\s*)?{_LETTER}\s+(?:is|was|seems|looks|would be)\s+"
                r"(?:clearly\s+|much\s+|slightly\s+|significantly\s+|somewhat\s+|far\s+|the\s+)?"
                r"(better|superior|preferred|preferable|more helpful|stronger|best|winner|"
                r"worse|inferior|weaker|less helpful)", re.I), "polar"),
    # "winner: A", "final verdict - B", "the better response is A", "my choice: (B)"
    (re.compile(r"(?:winner|verdict|choice|decision|preferred response|preference|"
                r"better (?:response|answer|one)|final answer|answer)"
                rf"\s*(?:is|:|=|-)?\s*(?:{_NOUN}\s*)?{_LETTER}", re.I), "letter"),
    # "I prefer A", "I would choose response B"
    (re.compile(rf"\bi(?:\s+would|'d)?\s+(?:prefer|choose|pick|select|go with)\s+"
                rf"(?:{_NOUN}\s*)?{_LETTER}", re.I), "letter"),
    # ties
    (re.compile(r"\b(?:it'?s a tie|a tie|tie\b|equally (?:good|bad|helpful|strong|weak)|"
                r"(?:both|the two)(?: responses| answers)? are (?:equally|about the same|equal)|"
                r"neither (?:response |answer |one )?is (?:clearly )?better|no (?:clear )?winner)",
                re.I), "tie"),
]
_WORSE = ("worse", "inferior", "weaker", "less helpful")


def _letter_counts(text: str, match: re.Match) -> bool:
    """A captured letter is a vote unless a lower-case 'a'/'b' could be an ordinary word."""
    letter = match.group(1)
    if letter.isupper():
        return True
    rest = text[match.end(1):]
    rest = rest.lstrip(")").lstrip()
    return rest == "" or rest[0] in ".,;:!?*\"'\n" or rest.lower().startswith(("is ", "was "))


def _from_json(text: str) -> Optional[Verdict]:
    for found in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(found.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        value = next((lowered[k] for k in _WINNER_KEYS if k in lowered), None)
        if not isinstance(value, str):
            continue
        value = re.sub(rf"^{_NOUN}\s*", "", value.strip().lower()).strip("() .")
        conf = lowered.get("confidence")
        conf = float(conf) if isinstance(conf, (int, float)) and not isinstance(conf, bool) \
            else 1.0
        conf = min(max(conf, 0.5), 1.0)
        reason = str(lowered.get("reason", lowered.get("explanation", "")))
        if value in ("a", "b"):
            return Verdict(value, conf, reason)
        if value in _TIE_WORDS:
            return Verdict("tie", conf, reason)
    return None


def parse_verdict(text: str) -> Optional[Verdict]:
    """The verdict a judge model wrote, or None when none can be read (see the module doc)."""
    if not isinstance(text, str) or not text.strip():
        return None
    raw = text.strip()
    verdict = _from_json(raw)
    if verdict is not None:
        return verdict
    brackets = _BRACKET.findall(raw)
    if brackets:
        last = brackets[-1].lower()
        return Verdict(last if last in ("a", "b") else "tie", 1.0, raw)
    plain = re.sub(r"[*_`#>\"']", "", raw).strip().rstrip(".!").strip()
    bare = _BARE.match(plain)
    if bare:
        return Verdict(bare.group(1).lower(), 1.0, raw)
    if plain.lower() in _TIE_WORDS - {"c", "none"} or plain.lower() in ("it's a tie", "a tie"):
        return Verdict("tie", 1.0, raw)
    best: tuple[int, Verdict] | None = None
    for pattern, kind in _PHRASES:
        for m in pattern.finditer(plain):
            if kind == "tie":
                found = Verdict("tie", 1.0, raw)
            elif not _letter_counts(plain, m):
                continue
            else:
                letter = m.group(1).lower()
                if kind == "polar" and m.group(2).lower() in _WORSE:
                    letter = "b" if letter == "a" else "a"
                found = Verdict(letter, 1.0, raw)
            if best is None or m.start() >= best[0]:
                best = (m.start(), found)
    return best[1] if best else None
