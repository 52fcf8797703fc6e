"""A judge behind any OpenAI-compatible chat endpoint: a hosted API, vLLM, llama.cpp's server,
or ``alignkit serve``.

``HTTPJudge(base_url, model)`` sends the judge prompt (``prompting.judge_messages``) to
``{base_url}/chat/completions`` at temperature 0 and reads the verdict with
``prompting.parse_verdict``. Around each request:

- **cache**: an on-disk cache (one JSON file per request, written atomically) keyed by the
  SHA-256 of (model, messages, temperature, max_tokens): re-running a labelling job, or resuming
  one, costs no request for what was asked before;
- **rate limit**: at most ``rate`` requests per second across all threads (0: no limit);
- **retries**: connection errors, timeouts, 408/409/429 and 5xx are retried up to ``retries``
  times with exponential backoff (``backoff * 2**k``, capped at ``max_backoff``; a server's
  ``Retry-After`` is honoured); other 4xx are a ``JudgeError`` at once (a wrong model name or
  key will not fix itself);
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
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from alignkit.errors import UserError
from alignkit.judges.base import Verdict
from alignkit.judges.prompting import judge_messages, parse_verdict

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


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


class ResponseCache:
    """Judge answers on disk, one ``<key[:2]>/<key>.json`` file per request key."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, request: dict) -> Optional[str]:
        path = self._path(self.key(request))
        try:
            return json.loads(path.read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError):
            return None  # absent, or a torn file from a killed writer: ask again

    def put(self, request: dict, text: str) -> None:
        path = self._path(self.key(request))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"request": request, "text": text}), encoding="utf-8")
        tmp.replace(path)


class HTTPJudge:
    """Pairwise judge over an OpenAI-compatible ``/chat/completions`` endpoint (one order per
    call; wrap in ``BothOrders`` to cancel position bias). Thread-safe."""

    concurrent = True  # callers may judge many pairs at once from a thread pool

    def __init__(self, base_url: str, model: str = "", cache_dir: str | None = None,
                 principle: str | None = None, max_tokens: int = 16, temperature: float = 0.0,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 0.5,
                 max_backoff: float = 8.0, rate: float = 0.0,
                 api_key_env: str = "OPENAI_API_KEY"):
        base_url = base_url.rstrip("/")
        if base_url.endswith("/chat/completions"):
            base_url = base_url[: -len("/chat/completions")]
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"judge URL {base_url!r} must start with http:// or https://")
        self.base_url, self.model = base_url, model
        self.name = f"http:{model or base_url}"
        self.principle = principle
        self.max_tokens, self.temperature = max_tokens, temperature
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.limiter = RateLimiter(rate)
        self.api_key_env = api_key_env
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "unparsed": 0}

    def with_principle(self, principle: str | None) -> "HTTPJudge":
        """The same judge (sharing cache, limiter and stats) asking under ``principle``."""
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
        return body

    def complete(self, body: dict) -> str:
        """The endpoint's answer text for ``body`` (cached, rate-limited, retried)."""
        if self.cache is not None:
            cached = self.cache.get(body)
            if cached is not None:
                self._count("cache_hits")
                return cached
        text = self._post(body)
        if self.cache is not None:
            self.cache.put(body, text)
        return text

    def _post(self, body: dict) -> str:
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
            self.limiter.acquire()
            self._count("requests")
            wait = min(self.backoff * 2 ** attempt, self.max_backoff)
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return _answer_text(payload, url)
            except urllib.error.HTTPError as e:
                detail = _error_message(e)
                if e.code not in RETRY_STATUS:
                    raise JudgeError(f"judge {url}: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                after = e.headers.get("Retry-After") if e.headers else None
                if after and after.replace(".", "", 1).isdigit():
                    wait = min(max(wait, float(after)), self.max_backoff)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                last = f"answer is not JSON ({e})"
            if attempt < self.retries:
                time.sleep(wait)
        raise JudgeError(f"judge {url}: no answer after {self.retries + 1} attempt(s) ({last})")

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict:
        text = self.complete(self.request_body(prompt, response_a, response_b))
        verdict = parse_verdict(text)
        if verdict is None:
            self._count("unparsed")
            return Verdict("tie", 0.5, text)
        return Verdict(verdict.winner, verdict.confidence, text)


def _answer_text(payload: dict, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"judge {url}: the answer is not an OpenAI chat completion "
                         f"({str(payload)[:200]})") from None
    return content if isinstance(content, str) else ""


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode("utf-8"))
        return str(body.get("error", {}).get("message", body))
    except Exception:  # any body at all: the status line says enough
        return err.reason or ""
