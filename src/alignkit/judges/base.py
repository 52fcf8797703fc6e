"""The one interface every pairwise judge implements (AI judges, reward models, gold scorers).

A judge compares two responses to one prompt and says which is better, how sure it is, and (when
it has one) why. Everything that consumes judgements — RLAIF labelling, win rates in evaluation,
judge-vs-gold agreement — takes any object with this ``judge`` method, so judges compose (a
position-bias-cancelling wrapper, a cache) without a class hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

Winner = Literal["a", "b", "tie"]


@dataclass(frozen=True)
class Verdict:
    """One pairwise judgement.

    winner: "a" (the first response), "b" (the second) or "tie".
    confidence: probability the judge gives to ``winner`` being right, in [0.5, 1] for "a"/"b"
        (0.5 means a coin flip); for "tie" it is how sure the judge is that neither is better.
    reason: the judge's explanation, when it gave one (an LLM judge's text), else "".
    """

    winner: Winner
    confidence: float = 1.0
    reason: str = ""

    def __post_init__(self) -> None:
        if self.winner not in ("a", "b", "tie"):
            raise ValueError(f"winner must be 'a', 'b' or 'tie', not {self.winner!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must lie in [0, 1], not {self.confidence}")

    @property
    def prob_a(self) -> float:
        """Probability that response A is the better one (a tie counts as 1/2)."""
        if self.winner == "tie":
            return 0.5
        return self.confidence if self.winner == "a" else 1.0 - self.confidence


@runtime_checkable
class Judge(Protocol):
    """Anything that judges pairs: ``judge(prompt, response_a, response_b) -> Verdict``.

    ``prompt`` and the responses are strings or chat message lists (README.md, "Data").
    """

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict: ...


def judge_many(judge: Judge, prompts: Sequence[Any], responses_a: Sequence[Any],
               responses_b: Sequence[Any]) -> list[Verdict]:
    """Judge aligned lists of pairs; uses the judge's own ``judge_many`` when it batches."""
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(f"prompts, responses_a and responses_b differ in length "
                         f"({len(prompts)}, {len(responses_a)}, {len(responses_b)})")
    batched = getattr(judge, "judge_many", None)
    if callable(batched):
        return list(batched(prompts, responses_a, responses_b))
    return [judge.judge(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
