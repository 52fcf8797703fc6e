"""A reward model (or ensemble) as a pairwise judge: the response with the higher combined
reward wins, with the Bradley-Terry probability ``sigmoid(r_a - r_b)`` -- the very model the
reward stage fits -- as its confidence. A gap of at most ``tie_margin`` is a tie. It scores each
response on its own, so it has no position bias by construction."""

from __future__ import annotations

import math
from typing import Any, Sequence

from alignkit.judges.base import Verdict
from alignkit.judges.swap import verdict_from_prob


class RewardModelJudge:
    def __init__(self, reward_fn, tie_margin: float = 0.0, name: str = "reward"):
        """``reward_fn``: ``models.reward.RewardFunction`` (or anything mapping (prompts,
        responses) to {"combined": tensor})."""
        self.reward_fn = reward_fn
        self.tie_margin = tie_margin
        self.name = name

    @classmethod
    def load(cls, path: str, device: str = "cpu", **kwargs) -> "RewardModelJudge":
        from alignkit.models.reward import RewardFunction

        return cls(RewardFunction(path, device), name=f"reward:{path}", **kwargs)

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict:
        return self.judge_many([prompt], [response_a], [response_b])[0]

    def judge_many(self, prompts: Sequence[Any], responses_a: Sequence[Any],
                   responses_b: Sequence[Any]) -> list[Verdict]:
        n = len(prompts)
        if n == 0:
            return []
        scores = self.reward_fn(list(prompts) * 2,
                                list(responses_a) + list(responses_b))["combined"].tolist()
        out = []
        for ra, rb in zip(scores[:n], scores[n:]):
            gap = ra - rb
            reason = f"reward {ra:.4f} vs {rb:.4f}"
            if abs(gap) <= self.tie_margin:
                out.append(Verdict("tie", 0.5, reason))
            else:
                out.append(verdict_from_prob(1.0 / (1.0 + math.exp(-gap)), reason))
        return out
