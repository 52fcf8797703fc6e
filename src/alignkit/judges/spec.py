"""``--judge SPEC`` -> a judge.

==============================  ==========================================================
``http://host:port/v1#model``   OpenAI-compatible endpoint (``judges.http.HTTPJudge``); the
                                part after ``#`` is the model name sent (optional)
``https://api.example.com/v1``  the same, over TLS (key from ``$OPENAI_API_KEY``)
``local:PATH``                  a causal LM's verdict-token log-probs (``judges.local``)
``reward:PATH``                 a reward model or ensemble (``judges.reward``)
``gold``                        the gold scorer (simulated experiments; ``judges.gold``)
==============================  ==========================================================

By default the judge is wrapped in ``swap.BothOrders``: both orders asked, position bias
cancelled and measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignkit.errors import UserError
from alignkit.judges.swap import BothOrders

SPEC_HELP = ("http(s)://HOST:PORT/v1#MODEL (any OpenAI-compatible endpoint), local:PATH (a causal "
             "LM's verdict-token log-probs), reward:PATH (a reward model) or gold")


@dataclass
class JudgeOptions:
    cache_dir: str | None = None
    both_orders: bool = True
    max_tokens: int = 16
    retries: int = 4
    rate: float = 0.0
    timeout: float = 60.0
    device: str = "cpu"
    batch_size: int = 8
    logprobs: bool = True  # HTTP judges: confidence from the verdict token's log-probs


def check_spec(spec: str) -> str:
    """``spec`` stripped, or a ``UserError`` when it names no judge kind (a check that loads
    nothing, for recipes to fail before any sampling)."""
    spec = (spec or "").strip()
    if not (spec == "gold" or spec.startswith(("http://", "https://", "local:", "reward:"))):
        raise UserError(f"--judge {spec!r}: expected {SPEC_HELP}")
    return spec


def make_judge(spec: str, options: JudgeOptions | None = None, categories: dict | None = None,
               token_counter: Any = None):
    """Build the judge a spec names (see the module doc)."""
    opts = options or JudgeOptions()
    spec = check_spec(spec)
    if spec.startswith(("http://", "https://")):
        from alignkit.judges.http import HTTPJudge

        url, _, model = spec.partition("#")
        judge = HTTPJudge(url, model, cache_dir=opts.cache_dir, max_tokens=opts.max_tokens,
                          retries=opts.retries, rate=opts.rate, timeout=opts.timeout,
                          logprobs=opts.logprobs)
    elif spec.startswith("local:"):
        from alignkit.judges.local import LocalJudge

        judge = LocalJudge.load(_path(spec), opts.device, batch_size=opts.batch_size)
    elif spec.startswith("reward:"):
        from alignkit.judges.reward import RewardModelJudge

        judge = RewardModelJudge.load(_path(spec), opts.device)
    else:  # gold
        from alignkit.judges.gold import GoldScoreJudge, GoldScorer

        judge = GoldScoreJudge(GoldScorer(token_counter=token_counter), categories)
        judge.name = "gold"
    return BothOrders(judge) if opts.both_orders else judge


def _path(spec: str) -> str:
    path = spec.split(":", 1)[1]
    if not path:
        raise UserError(f"--judge {spec!r}: a path is missing after the colon")
    return path


def with_principle(judge, principle: str | None):
    """The same judge asking under ``principle`` (judges that read text: HTTP, local); judges
    that score responses (reward, gold) ignore principles and are returned as they are."""
    if isinstance(judge, BothOrders):
        inner = with_principle(judge.inner, principle)
        if inner is judge.inner:
            return judge
        clone = BothOrders(inner)
        clone.tally, clone._lock = judge.tally, judge._lock  # one tally for the whole run
        return clone
    maker = getattr(judge, "with_principle", None)
    return maker(principle) if callable(maker) else judge
