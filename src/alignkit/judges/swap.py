"""Position bias: ask a judge both orders and cancel what the order alone decides.

LLM judges prefer whichever answer they read first (or second) far more often than chance
(Zheng et al. 2023, "Judging LLM-as-a-judge"). ``BothOrders`` asks ``judge(p, a, b)`` and
``judge(p, b, a)`` and averages the two probabilities that ``a`` is better:

    P(a) = (P_ab(a) + 1 - P_ba(b first)) / 2

so a judge that always picks the first answer gets P(a) = (1 + 0) / 2 = 1/2 -- a tie, as it
should, since it said nothing about the answers. Agreeing orders keep their verdict; orders that
contradict each other cancel towards a tie.

The *position-bias rate* is the share of pairs whose two verdicts picked the same *position*
(A then A, or B then B) -- i.e. the verdict followed the order, not the answers: 0 for a judge
that reads content only, 1 for one that always picks the same slot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

from alignkit.judges.base import Judge, Verdict, judge_many

TIE_TOLERANCE = 1e-9


def verdict_from_prob(prob_a: float, reason: str = "") -> Verdict:
    """A verdict for a probability that ``a`` is the better response (1/2: a tie, confidence
    1/2: nothing is known)."""
    if abs(prob_a - 0.5) <= TIE_TOLERANCE:
        return Verdict("tie", 0.5, reason)
    return Verdict("a" if prob_a > 0.5 else "b", max(prob_a, 1.0 - prob_a), reason)


def combine_orders(forward: Verdict, backward: Verdict) -> Verdict:
    """``forward`` judged (a, b), ``backward`` judged (b, a): one order-free verdict."""
    prob_a = (forward.prob_a + (1.0 - backward.prob_a)) / 2.0
    reason = " | ".join(r for r in (forward.reason, backward.reason) if r)
    return verdict_from_prob(prob_a, reason)


@dataclass
class PositionTally:
    """Counts over pairs judged in both orders."""

    pairs: int = 0
    same_position: int = 0  # both orders picked the same slot: the order decided
    first_votes: int = 0  # decisive single-order verdicts for the first slot
    decisive_votes: int = 0  # single-order verdicts that were not ties

    def add(self, forward: Verdict, backward: Verdict) -> None:
        self.pairs += 1
        if forward.winner != "tie" and forward.winner == backward.winner:
            self.same_position += 1
        for v in (forward, backward):
            if v.winner != "tie":
                self.decisive_votes += 1
                self.first_votes += v.winner == "a"

    @property
    def position_bias_rate(self) -> float:
        return self.same_position / self.pairs if self.pairs else 0.0

    @property
    def first_position_share(self) -> float:
        """Share of decisive single-order verdicts that chose the first slot (1/2: balanced)."""
        return self.first_votes / self.decisive_votes if self.decisive_votes else 0.5

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "position_bias_rate": self.position_bias_rate,
                "first_position_share": self.first_position_share,
                "same_position": self.same_position}


class BothOrders:
    """Wrap any judge: every pair is judged in both orders and the orders are combined
    (``combine_orders``); ``tally`` measures the inner judge's position bias as it goes.
    Thread-safe when the inner judge is (the HTTP judge is)."""

    def __init__(self, judge: Judge):
        self.inner = judge
        self.tally = PositionTally()
        self._lock = threading.Lock()
        self.concurrent = bool(getattr(judge, "concurrent", False))
        self.name = getattr(judge, "name", type(judge).__name__)

    def _record(self, forward: Verdict, backward: Verdict) -> Verdict:
        with self._lock:
            self.tally.add(forward, backward)
        return combine_orders(forward, backward)

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict:
        return self.judge_both(prompt, response_a, response_b)[0]

    def judge_many(self, prompts: Sequence[Any], responses_a: Sequence[Any],
                   responses_b: Sequence[Any]) -> list[Verdict]:
        return [v for v, _, _ in self.judge_many_both(prompts, responses_a, responses_b)]

    def judge_both(self, prompt: Any, response_a: Any,
                   response_b: Any) -> tuple[Verdict, Verdict, Verdict]:
        """(combined, forward (a, b), backward (b, a)) verdicts of one pair."""
        forward = self.inner.judge(prompt, response_a, response_b)
        backward = self.inner.judge(prompt, response_b, response_a)
        return self._record(forward, backward), forward, backward

    def judge_many_both(self, prompts: Sequence[Any], responses_a: Sequence[Any],
                        responses_b: Sequence[Any]) -> list[tuple[Verdict, Verdict, Verdict]]:
        n = len(prompts)
        both = judge_many(self.inner, list(prompts) * 2, list(responses_a) + list(responses_b),
                          list(responses_b) + list(responses_a))
        return [(self._record(both[i], both[n + i]), both[i], both[n + i]) for i in range(n)]


def position_bias(judge: Judge, prompts: Sequence[Any], responses_a: Sequence[Any],
                  responses_b: Sequence[Any]) -> dict:
    """Measure a single-order judge's position bias on these pairs (asks both orders)."""
    wrapped = BothOrders(judge)
    wrapped.judge_many(prompts, responses_a, responses_b)
    return wrapped.tally.as_dict()
