"""A judge behind any OpenAI-compatible chat endpoint: a hosted API, vLLM, llama.cpp's server,
or ``alignkit serve``.

``HTTPJudge(base_url, model)`` sends the judge prompt (``prompting.judge_messages``) to
``{base_url}/chat/completions`` at temperature 0 and reads the verdict with
``prompting.parse_verdict``.

**Confidence from token log-probs** (``logprobs=True``, the default): each request also asks for
``"logprobs": true, "top_logprobs": k`` (k = ``top_logprobs``, default 5), and a written "A" or
"B" verdict gets the confidence the judge model's own next-token distribution gives it:

- the *verdict token* is the first answer token whose text, stripped of whitespace, brackets,
  quotes, asterisks and punctuation, is the verdict letter (case-insensitive; an upper-case
  token is preferred to an earlier lower-case one) -- the "A" of ``A``, ``[[A]]``,
  ``Assistant A``, ``{"winner": "A"}``;
- at that token, p(A) and p(B) are the summed probabilities of the ``top_logprobs``
  alternatives (and the written token itself) whose stripped text is "A" resp. "B"
  (case-insensitive; a letter outside the top k counts as 0), and the confidence is
  ``p(letter) / (p(A) + p(B))``, clamped into [0.5, 1];
- if that ratio is below 1/2 (the distribution prefers the other letter: possible at
  temperature > 0) the written verdict is kept with confidence 0.5 and counted in
  ``stats["logprob_disagreements"]``; ``stats["logprob_verdicts"]`` counts verdicts whose
  confidence came from log-probs;
- ties and unreadable answers are unchanged (below); an answer without log-probs (the endpoint
  sent ``null``, no alternatives, or no verdict token) keeps the parsed confidence (1.0, or a
  JSON ``confidence`` the judge wrote);
- an endpoint that rejects the field (HTTP 400 whose message mentions logprobs) is asked the
  same request again without it, once, and log-probs stay off for the rest of the run (one
  warning; ``stats["logprobs_rejected"]``).

Around each request:

- **cache**: an on-disk cache (one JSON file per request, written atomically) keyed by the
  SHA-256 of the request body (model, messages, temperature, max_tokens, and the log-prob
  fields when asked: asking with and without log-probs are different entries) and the endpoint's
  URL (an unnamed model is whatever that server serves; a server that swaps the model behind the
  same URL and name needs another cache folder): re-running a
  labelling job, or resuming one, costs no request for what was asked before. A file holds the
  answer text and the log-probs of its candidate verdict tokens (those whose stripped text is a
  or b -- all the confidence reads); a file from before log-probs holds text only and loads as
  an answer without log-probs;
- **transport**: the official ``openai`` client (``OpenAI(base_url=..., max_retries=retries,
  timeout=timeout)``) sends the body as it is (no ``model`` field when none is named);
- **retries**, the client's own: connection errors, timeouts, 408/409/429 and 5xx are retried up
  to ``retries`` times with exponential backoff (0.5 s doubling up to 8 s, less up to a quarter
  of random jitter), or after the wait a server's ``Retry-After`` asks for (up to two minutes; a
  longer one is not waited for); other 4xx are a ``JudgeError`` at once (a wrong model name or
  key will not fix itself), and so is an answer that is not a JSON chat completion;
- **rate limit**: at most ``rate`` HTTP attempts per second across all threads, retries
  included (0: no limit); ``stats["requests"]`` counts attempts, ``stats["retries"]`` those
  after the first;
- **unreadable answers**: text in which no verdict can be read becomes a tie with confidence
  0.5 (a coin flip) and is counted in ``stats["unparsed"]``; it is not retried, because the
  same prompt at temperature 0 gives the same text.

Both orders are asked by wrapping it in ``swap.BothOrders`` (``judges.spec.make_judge`` does by
default). The API key, when the endpoint needs one, comes from the environment variable named by
``api_key_env`` (default ``OPENAI_API_KEY``); it is never written to the cache or to logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from alignkit.errors import UserError
from alignkit.judges.base import Verdict
from alignkit.judges.prompting import judge_messages, parse_verdict

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
_STRIP = " \t\r\n()[]{}<>\"'`*_.,:;!?-#|/\\"

log = logging.getLogger("alignkit.judges")


class JudgeError(UserError):
    """The judge endpoint refused or kept failing."""


class RateLimiter:
    """At most ``rate`` acquisitions per second, spread evenly, across threads (0: no limit).
    ``clock`` and ``sleep`` are injectable so the schedule can be checked exactly."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = None
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self.clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self.sleep(wait)
        return wait


@dataclass(frozen=True)
class Answer:
    """An endpoint's answer: its text and, when log-probs were asked and given, the OpenAI
    ``logprobs.content`` entries of its candidate verdict tokens (``letter_entries``; None: the
    answer came without log-probs)."""

    text: str
    logprobs: Optional[list] = None


def letter_of(token: Any) -> Optional[str]:
    """"a" / "b" when a token's text stripped of whitespace, brackets, quotes, asterisks and
    punctuation is that letter (either case), else None."""
    if not isinstance(token, str):
        return None
    core = token.strip(_STRIP).lower()
    return core if core in ("a", "b") else None


def letter_entries(content: Any) -> Optional[list]:
    """The entries of an OpenAI ``logprobs.content`` list that could be the verdict token (their
    stripped text is a or b), in order, as ``{token, logprob, top_logprobs: [{token, logprob}]}``
    (what ``letter_probability`` reads; ``bytes`` dropped); None when ``content`` is not a list
    (no log-probs)."""
    if not isinstance(content, list):
        return None
    out = []
    for entry in content:
        if (not isinstance(entry, dict) or letter_of(entry.get("token")) is None
                or not _finite(entry.get("logprob"))):
            continue
        top = entry.get("top_logprobs")
        out.append({"token": entry["token"], "logprob": entry["logprob"],
                    "top_logprobs": [{"token": t.get("token"), "logprob": t["logprob"]}
                                     for t in (top if isinstance(top, list) else [])
                                     if isinstance(t, dict) and _finite(t.get("logprob"))]})
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def letter_probability(entries: Optional[list], winner: str) -> Optional[float]:
    """p(winner) / (p(A) + p(B)) at the verdict token (see the module doc), or None when there
    are no log-probs, no verdict token or no alternatives to compare with. ``entries``: OpenAI
    ``logprobs.content`` entries (all of them, or the ``letter_entries``)."""
    if not entries or winner not in ("a", "b"):
        return None
    found = [e for e in entries if isinstance(e, dict) and letter_of(e.get("token")) == winner
             and _finite(e.get("logprob"))]
    upper = [e for e in found if e["token"].strip(_STRIP).isupper()]
    if not found:
        return None
    entry = (upper or found)[0]
    top = entry.get("top_logprobs")
    if not isinstance(top, list) or not top:
        return None  # no alternatives were sent: nothing to compare the letter with
    probs = {}  # token text -> probability (the written token counts even outside the top k)
    for alt in [*top, entry]:
        if isinstance(alt, dict) and _finite(alt.get("logprob")):
            probs.setdefault(alt.get("token"), math.exp(alt["logprob"]))
    mass = {"a": 0.0, "b": 0.0}
    for token, p in probs.items():
        letter = letter_of(token)
        if letter:
            mass[letter] += p
    total = mass["a"] + mass["b"]
    return mass[winner] / total if total > 0 else None


# bump when what a cache file holds for the same request changes (e.g. ``letter_entries``)
CACHE_FORMAT = 2


class ResponseCache:
    """Judge answers on disk, one ``<key[:2]>/<key>.json`` file per request key: ``{"endpoint",
    "request", "text", "logprobs"}`` (``logprobs``: the ``letter_entries``, or null; files written
    before log-probs have no such field and read as null). The key is the whole request body
    (whatever is sent is in it) plus the endpoint it goes to (two servers of an unnamed model
    answer differently) and the file format; a file whose stored request or endpoint differs
    from the one asked is not an answer to it."""

    def __init__(self, folder: str | os.PathLike, endpoint: str = ""):
        self.folder = Path(folder)
        self.endpoint = endpoint

    @staticmethod
    def key(request: dict, endpoint: str = "") -> str:
        material = {"format": CACHE_FORMAT, "endpoint": endpoint, "request": request}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def path(self, request: dict) -> Path:
        """The file that holds (or would hold) the answer to ``request``."""
        return self._path(self.key(request, self.endpoint))

    def read(self, request: dict) -> Optional[Answer]:
        try:
            record = json.loads(self.path(request).read_text(encoding="utf-8"))
            text = record["text"]
            same = (record["request"] == request
                    and record.get("endpoint", self.endpoint) == self.endpoint)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or a torn file from a killed writer: ask again
        if not isinstance(text, str) or not same:
            return None
        entries = record.get("logprobs")
        return Answer(text, entries if isinstance(entries, list) else None)

    def put(self, request: dict, text: str, logprobs: Optional[list] = None) -> None:
        path = self.path(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"endpoint": self.endpoint, "request": request, "text": text,
                                   "logprobs": logprobs}), encoding="utf-8")
        tmp.replace(path)


class _LogprobsRejected(Exception):
    """The endpoint answered 400 to a request asking for log-probs, naming them."""


class HTTPJudge:
    """Pairwise judge over an OpenAI-compatible ``/chat/completions`` endpoint (one order per
    call; wrap in ``BothOrders`` to cancel position bias). Thread-safe."""

    concurrent = True  # callers may judge many pairs at once from a thread pool

    def __init__(self, base_url: str, model: str = "", cache_dir: str | None = None,
                 principle: str | None = None, max_tokens: int = 16, temperature: float = 0.0,
                 timeout: float = 60.0, retries: int = 4, rate: float = 0.0,
                 api_key_env: str = "OPENAI_API_KEY", logprobs: bool = True,
                 top_logprobs: int = 5):
        base_url = base_url.rstrip("/")
        if base_url.endswith("/chat/completions"):
            base_url = base_url[: -len("/chat/completions")]
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"judge URL {base_url!r} must start with http:// or https://")
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise UserError(f"top_logprobs must lie in [1, {MAX_TOP_LOGPROBS}], got "
                            f"{top_logprobs}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"judge retries must be a whole number >= 0, got {retries!r}")
        self.base_url, self.model = base_url, model
        self.url = f"{base_url}/chat/completions"
        self.name = f"http:{model or base_url}"
        self.principle = principle
        self.max_tokens, self.temperature = max_tokens, temperature
        self.timeout, self.retries = timeout, retries
        self.cache = ResponseCache(cache_dir, base_url) if cache_dir else None
        self.limiter = RateLimiter(rate)
        self.api_key_env = api_key_env
        self.top_logprobs = top_logprobs
        self._lock = threading.Lock()
        # shared with the with_principle clones: one client, and a 400 turns log-probs off for
        # all of them
        self._shared: dict[str, Any] = {"logprobs": bool(logprobs), "client": None}
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "unparsed": 0,
                      "logprob_verdicts": 0, "logprob_disagreements": 0, "logprobs_rejected": 0}

    @property
    def logprobs(self) -> bool:
        """Whether requests ask for log-probs (off after an endpoint rejected them)."""
        return self._shared["logprobs"]

    def with_principle(self, principle: str | None) -> "HTTPJudge":
        """The same judge (sharing client, cache, limiter and stats) asking under ``principle``."""
        import copy

        clone = copy.copy(self)
        clone.principle = principle
        return clone

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def request_body(self, prompt: Any, response_a: Any, response_b: Any,
                     principle: str | None = None) -> dict:
        body = {"messages": judge_messages(prompt, response_a, response_b,
                                           principle if principle is not None else self.principle),
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.model:
            body["model"] = self.model
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def answer(self, body: dict) -> Answer:
        """The endpoint's answer for ``body``, with the log-probs of its candidate verdict
        tokens when asked and given (cached, rate-limited, retried; a 400 naming log-probs
        retries once without them and turns them off)."""
        if self.cache is not None:
            cached = self.cache.read(body)
            if cached is not None:
                self._count("cache_hits")
                return cached
        try:
            text, content = self._post(body)
        except _LogprobsRejected as rejected:
            with self._lock:
                first = self._shared["logprobs"]
                self._shared["logprobs"] = False
                self.stats["logprobs_rejected"] += 1
            if first:
                log.warning("judge %s rejected log-probs (%s); asking without them from now on "
                            "(confidence: as the judge writes it)", self.base_url, rejected)
            plain = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
            return self.answer(plain)
        answer = Answer(text, letter_entries(content))
        if self.cache is not None:
            self.cache.put(body, answer.text, answer.logprobs)
        return answer

    def _client(self) -> tuple[Any, dict]:
        """The ``openai`` client and the headers each request adds, built on first use (the
        import costs half a second that a run answered from the cache never needs)."""
        with self._lock:
            if self._shared["client"] is None:
                import openai

                key = os.environ.get(self.api_key_env) if self.api_key_env else None
                http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_attempt]})
                # the client insists on a key; without one, no Authorization header is sent
                client = openai.OpenAI(base_url=self.base_url, api_key=key or "no-key",
                                       max_retries=self.retries, timeout=self.timeout,
                                       http_client=http)
                headers = {} if key else {"Authorization": openai.omit}
                self._shared["client"] = (client, headers)
            return self._shared["client"]

    def _on_attempt(self, request: Any) -> None:
        """Runs before every HTTP attempt the client makes, its own retries included: each
        takes a rate-limit slot and is counted."""
        self.limiter.acquire()
        with self._lock:
            self.stats["requests"] += 1
            if _attempts(request) > 1:
                self.stats["retries"] += 1

    def _post(self, body: dict) -> tuple[str, Any]:
        """(answer text, OpenAI ``logprobs.content`` or None) for ``body``, sent as it is."""
        import openai

        client, headers = self._client()
        try:
            raw = client.chat.completions.with_raw_response.create(
                **{"model": openai.omit, **body}, extra_headers=headers)
        except openai.APIStatusError as e:
            detail = _error_detail(e)
            if e.status_code == 400 and body.get("logprobs") and "logprob" in detail.lower():
                raise _LogprobsRejected(detail) from None
            raise JudgeError(self._failure(e.request, f"HTTP {e.status_code}: {detail}")) from None
        except openai.APIConnectionError as e:  # refused, reset, timed out
            raise JudgeError(self._failure(e.request, str(e.__cause__ or e))) from None
        text = raw.http_response.text
        try:
            payload = json.loads(text)
        except ValueError:
            raise JudgeError(f"judge {self.url}: the answer is not JSON ({text[:200]!r})") from None
        return _answer_text(payload, self.url), _answer_logprobs(payload)

    def _failure(self, request: Any, what: str) -> str:
        """The error message for the last attempt ``request``, which failed with ``what``."""
        attempts = _attempts(request)
        if attempts == 1:
            return f"judge {self.url}: {what}"
        return f"judge {self.url}: no answer after {attempts} attempt(s) ({what})"

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict:
        answer = self.answer(self.request_body(prompt, response_a, response_b))
        return self.verdict(answer)

    def verdict(self, answer: Answer) -> Verdict:
        """The verdict an answer carries, its confidence from log-probs when it has them (see
        the module doc); counts in ``stats``."""
        text = answer.text
        verdict = parse_verdict(text)
        if verdict is None:
            self._count("unparsed")
            return Verdict("tie", 0.5, text)
        confidence = verdict.confidence
        if verdict.winner in ("a", "b"):
            p = letter_probability(answer.logprobs, verdict.winner)
            if p is not None:
                self._count("logprob_verdicts")
                if p < 0.5:  # the distribution prefers the other letter: keep what was written
                    self._count("logprob_disagreements")
                confidence = min(max(p, 0.5), 1.0)
        return Verdict(verdict.winner, confidence, text)


def _answer_text(payload: dict, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"judge {url}: the answer is not an OpenAI chat completion "
                         f"({str(payload)[:200]})") from None
    return content if isinstance(content, str) else ""


def _answer_logprobs(payload: dict) -> Any:
    """The first choice's ``logprobs.content`` (None when the endpoint sent none)."""
    try:
        logprobs = payload["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return logprobs.get("content") if isinstance(logprobs, dict) else None


def _attempts(request: Any) -> int:
    """Which attempt an HTTP request of the ``openai`` client is (1: the first), from the retry
    count the client writes into its headers."""
    return int(request.headers.get("x-stainless-retry-count", "0")) + 1


def _error_detail(err: Any) -> str:
    """The message of an ``openai.APIStatusError``: the endpoint's ``error.message`` when it
    sent one, else its body, else the status line's reason."""
    body = err.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    if body:
        return str(body)[:200]
    return err.response.reason_phrase or ""
