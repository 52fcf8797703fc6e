"""The HTTP side of ``alignkit serve``: an OpenAI-compatible chat API on FastAPI.

Routes: ``POST /v1/chat/completions`` (``"stream": true`` answers with server-sent events,
``data: {chunk}`` lines then ``data: [DONE]``), ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /v1/stats`` (counters), and ``GET /health`` (also ``/v1/health``): 200 once the model is
loaded, 503 before. While the model loads, chat requests get 503 with ``Retry-After``.

Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``; an invalid request is
a 400 whose ``param`` names the field (``messages[0].role``). The body is read and checked here,
by ``parse_chat_request`` on the pydantic model ``ChatCompletionRequest``, rather than by FastAPI's
own body binding: its errors become the 400 above (not FastAPI's 422), the server's
``--max-tokens-limit`` is part of the same check, and the checks run without a server in tests.

What a request may hold:

- honoured: ``messages`` (system / user / assistant; text content or text content parts; keys of
  a message other than role and content are ignored), ``model``, ``max_tokens`` /
  ``max_completion_tokens``, ``temperature``, ``top_p``, ``n`` (1..16; 1 when streaming),
  ``stop`` (up to 4), ``seed``, ``stream``, ``logprobs`` + ``top_logprobs`` (0..20; not with
  ``stream``); ``null`` means the default;
- refused unless they ask for nothing this server would do differently (``UNSUPPORTED``): tools
  and function calling, ``response_format`` other than text, ``logit_bias``, non-zero
  frequency / presence penalties, audio, ...;
- accepted and ignored, as they do not change the answer (``IGNORED``): ``user``, ``metadata``,
  ``store``, ``stream_options`` (usage always comes in the last chunk), ...;
- anything else is refused (400 naming it), as OpenAI does: a misspelt or newer option fails
  loudly instead of being silently dropped.

With an API key (``create_app(api_key=...)``) every ``/v1`` route wants ``Authorization: Bearer
KEY`` (else 401, OpenAI's ``invalid_api_key``); health stays open.

Bounds: a body over ``max_request_bytes`` is a 413 (refused from its ``Content-Length`` before it
is read, or as soon as the bytes read pass the limit); a body not received within
``request_timeout`` seconds is a 408 (and a connection whose headers do not arrive in that time is
closed: ``utils.http``); with ``max_queue`` answers already queued or running a new
chat request is a 429 with ``Retry-After``. JSON nested past the decoder's depth and text holding
a lone surrogate (``"\\ud800"``, which no tokenizer takes) are 400s.

The model is not thread-safe, so one thread runs it (``ModelWorker``): requests queue in arrival
order while the event loop keeps serving. A stream whose client goes away stops at its next token
(``streams_stopped`` in ``/v1/stats``); ``in_flight`` there counts the answers queued or running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import queue
import threading
from functools import partial
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignkit.data.readers import lone_surrogate
from alignkit.serve.chat import ChatModel, ChatRequest, RequestError

MAX_N = 16
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20

# OpenAI fields this server cannot honour -> the values that ask for nothing it would do otherwise
UNSUPPORTED: dict[str, tuple] = {
    "tools": (None,), "functions": (None,), "tool_choice": (None, "none"),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "modalities": (None, ["text"]), "audio": (None,), "web_search_options": (None,),
    "reasoning_effort": (None,), "verbosity": (None,),
}
# OpenAI fields that do not change the answer
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
           "prediction", "prompt_cache_key", "safety_identifier"}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        if not all(isinstance(p, dict) and p.get("type") == "text"
                   and isinstance(p.get("text"), str) for p in value):
            raise ValueError('content parts must all be {"type": "text", "text": ...}')
        return "".join(p["text"] for p in value)


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat-completions request this server honours."""

    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[Message] = Field(min_length=1)
    model: str = ""
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: list[str] = []
    seed: Optional[int] = Field(None, ge=-2**63, lt=2**64)  # what torch.manual_seed takes
    stream: bool = False
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="before")
    @classmethod
    def null_means_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("stop", mode="before")
    @classmethod
    def stop_list(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if (not isinstance(value, list) or len(value) > MAX_STOP
                or not all(isinstance(s, str) and s for s in value)):
            raise ValueError(f"must be a non-empty string or a list of at most {MAX_STOP} "
                             "non-empty strings")
        return value


def validation_error(err: ValidationError) -> RequestError:
    """The first problem pydantic found, as a 400 naming the field (``messages[0].role``)."""
    first = err.errors()[0]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    if first["type"] == "extra_forbidden":
        return RequestError(f"'{param}' is not a parameter this server knows", param or None)
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] != "missing":
        message += f", got {got}"
    return RequestError(f"'{param}': {message}" if param else message, param or None)


def parse_chat_request(body: Any, max_tokens_limit: int, default_max_tokens: int) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; anything wrong is a ``RequestError`` naming the
    field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for name, allowed in UNSUPPORTED.items():
        if body.get(name) not in allowed:
            raise RequestError(f"'{name}' = {json.dumps(body[name])[:60]} is not supported by "
                               "this server (it writes plain text answers)", name)
    try:
        req = ChatCompletionRequest.model_validate(
            {k: v for k, v in body.items() if k not in UNSUPPORTED and k not in IGNORED})
    except ValidationError as e:
        raise validation_error(e) from None
    if req.stream and req.n != 1:
        raise RequestError("'stream' supports n = 1 only", "n")
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    if req.stream and req.logprobs:
        raise RequestError("'logprobs' is not supported with 'stream': true (ask without "
                           "streaming)", "logprobs")
    given = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
    if max_tokens > max_tokens_limit:
        raise RequestError(f"'{given}' must be at most {max_tokens_limit} (this server's "
                           f"limit), got {max_tokens}", given)
    return ChatRequest([m.model_dump() for m in req.messages], max_tokens, float(req.temperature),
                       float(req.top_p), req.n, req.stop, req.seed, req.stream, req.model,
                       req.logprobs, req.top_logprobs or 0)


class ModelWorker:
    """The one thread that runs the model: jobs run one at a time, in the order they come;
    ``pending`` counts the jobs queued or running."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.pending = 0
        threading.Thread(target=self._run, name="alignkit-model", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if future.set_running_or_notify_cancel():  # False: cancelled while queued
                try:
                    future.set_result(job())
                except Exception as e:
                    future.set_exception(e)
            with self._lock:
                self.pending -= 1

    def _submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self.pending += 1
        self._jobs.put((job, future))
        return future

    async def call(self, job: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._submit(job))

    async def iterate(self, make: Callable[[], Iterator[dict]]) -> AsyncIterator[dict]:
        """The items of ``make()``, made on the model thread and handed over as they come.
        Closing this iterator stops ``make()``'s iterator before its next item."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        closed = threading.Event()
        end = object()

        def produce() -> None:
            hand_over = partial(loop.call_soon_threadsafe, items.put_nowait)
            try:
                with contextlib.closing(make()) as made:
                    for item in made:
                        if closed.is_set():
                            return
                        hand_over(item)
            except Exception as e:
                hand_over(e)
            finally:
                hand_over(end)

        job = self._submit(produce)
        try:
            while (item := await items.get()) is not end:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            closed.set()
            job.cancel()  # skipped if it has not started


class ServerState:
    """The served model once loaded, its limits, and the counters of ``/v1/stats``."""

    def __init__(self, name: str, max_tokens_limit: int, default_max_tokens: int,
                 max_request_bytes: int = 4 * 2**20, request_timeout: float = 30.0,
                 max_queue: int = 32):
        self.name = name
        self.max_request_bytes, self.request_timeout = max_request_bytes, request_timeout
        self.max_queue = max_queue
        self.chat: ChatModel | None = None
        self.load_error: str | None = None
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "chat_completions": 0, "streams_stopped": 0, "errors": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}

    def count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.stats)

    def count_usage(self, usage: dict) -> None:
        self.count(chat_completions=1, prompt_tokens=usage["prompt_tokens"],
                   completion_tokens=usage["completion_tokens"])


def create_app(state: ServerState, api_key: str = "") -> FastAPI:
    """The API app; ``app.state.worker`` is its model thread (``ModelWorker``)."""
    worker = ModelWorker()

    def count_request() -> None:
        state.count(requests=1)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 api_key.encode()):
            raise RequestError("missing or wrong API key: send 'Authorization: Bearer KEY' with "
                               "the key the server was started with", status=401,
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="alignkit serve", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(count_request)])
    app.state.worker = worker  # the chat page of --feedback-db runs its answers on it too
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        state.count(errors=1)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404
                   else str(exc.detail))
        return await _request_error(request, RequestError(message, status=exc.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: uvicorn logs its traceback
        return await _request_error(request, RequestError(
            "internal error (logged on the server)", status=500, kind="server_error"))

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        loaded = state.chat is not None
        return JSONResponse({"status": "ok" if loaded else "loading"},
                            status_code=200 if loaded else 503)

    def model_card() -> dict:
        return {"id": state.name, "object": "model", "created": 0, "owned_by": "alignkit"}

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != state.name:
            raise RequestError(f"model {model_id!r} is not served here (this server serves "
                               f"{state.name!r})", "model", status=404, kind="not_found_error")
        return model_card()

    @v1.get("/stats")
    async def stats():
        return {**state.snapshot(), "in_flight": worker.pending}

    def loaded_model() -> ChatModel:
        if state.chat is not None:
            return state.chat
        if state.load_error:
            raise RequestError(f"model failed to load: {state.load_error}", status=500,
                               kind="server_error")
        raise RequestError("the model is still loading; retry shortly", status=503,
                           kind="server_error", headers={"Retry-After": "1"})

    async def read_body(request: Request) -> bytes:
        """The body, at most ``max_request_bytes`` (413 past it), within ``request_timeout``
        seconds (408 after)."""
        limit = state.max_request_bytes
        too_big = RequestError(f"the request body is larger than this server's limit of "
                               f"{limit} bytes", status=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big

        async def chunks() -> bytes:
            parts, size = [], 0
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise too_big
                parts.append(part)
            return b"".join(parts)

        try:
            return await asyncio.wait_for(chunks(), state.request_timeout)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within {state.request_timeout:g} "
                               "seconds", status=408) from None

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        if worker.pending >= state.max_queue:
            raise RequestError(f"{worker.pending} answers are queued or running (this server's "
                               f"limit is {state.max_queue}); retry shortly", status=429,
                               kind="rate_limit_error", headers={"Retry-After": "1"})
        try:
            body = json.loads(await read_body(request) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise RequestError("the request body is not valid JSON (nested too deeply)") from None
        bad = lone_surrogate(body)
        if bad is not None:
            raise RequestError(f"the request holds a lone surrogate ({bad}), which is not text")
        chat = loaded_model()
        req = parse_chat_request(body, state.max_tokens_limit, state.default_max_tokens)
        if req.model and req.model != state.name:
            raise RequestError(f"model {req.model!r} is not served here (this server serves "
                               f"{state.name!r})", "model", status=404, kind="not_found_error")
        # answers are counted on the model thread, before in_flight drops: a client that reads
        # in_flight == 0 sees every finished answer in the counters
        if not req.stream:
            def counted_answer() -> dict:
                out = chat.complete(req)
                state.count_usage(out["usage"])
                return out

            return JSONResponse(await worker.call(counted_answer))

        def counted_stream() -> Iterator[dict]:
            with contextlib.closing(chat.stream(req)) as chunks:
                try:
                    for chunk in chunks:
                        yield chunk
                except GeneratorExit:  # the client went away
                    state.count(streams_stopped=1)
                    raise
            state.count_usage(chunk["usage"])

        chunks = worker.iterate(counted_stream)
        first = await anext(chunks)  # a bad request fails here, before the response starts

        async def events() -> AsyncIterator[dict]:
            try:
                yield {"data": json.dumps(first)}
                async for chunk in chunks:
                    yield {"data": json.dumps(chunk)}
                yield {"data": "[DONE]"}
            finally:
                await chunks.aclose()

        return EventSourceResponse(events(), sep="\n")

    app.include_router(v1)
    return app
