"""The annotation web app (FastAPI): server-rendered pages plus a small JSON API.

Pages: ``/login``, ``/`` (my projects), ``/projects/{id}`` (the next task of my queue, guidelines
beside it, keyboard shortcuts, progress, undo), ``/admin/projects/{id}`` (agreement dashboard,
per-annotator quality, dispute queue -- a disputed ranking is resolved by dragging its responses
--, task upload, active-learning order, export links), ``/admin`` (projects; forms that create a
project and add a user, whose token is shown once). Admin forms post to ``/admin/projects``,
``/admin/users`` and ``/admin/projects/{id}/tasks`` (a file upload); a bad form shows the page
again with the problem.

API (JSON; auth by the ``alignkit_token`` cookie set at sign-in, or ``Authorization: Bearer``):
``GET /api/projects``, ``GET /api/projects/{id}/next``, ``POST /api/projects/{id}/labels``,
``PUT /api/projects/{id}/labels/{task_id}`` (edit one's own label),
``POST /api/projects/{id}/undo``, ``GET /api/projects/{id}/labels/mine``; admin only:
``GET /api/admin/projects/{id}/report``, ``GET /api/admin/projects/{id}/labels``,
``GET /api/admin/projects/{id}/export?kind=pairs|rankings&mode=aggregated|labels
&format=jsonl|parquet|datasets`` (``datasets``: a zip of a ``Dataset.save_to_disk`` folder;
``kind=weights``: each annotator's reward-model loss weight, ``annotator_weights.json``),
``POST /api/admin/projects`` (``{name, aspects, labels_per_item, guidelines, ...}``),
``POST /api/admin/users`` (``{name, role, password?, projects?}``; answers the token once),
``POST /api/admin/projects/{id}/tasks`` (``{filename, content}`` or ``{filename,
content_base64}``: a JSONL, JSON, CSV, TSV or Parquet file read by the CLI's readers; any bad
record imports nothing and every one is listed as ``file:line: problem`` in ``problems``),
``GET /api/admin/projects/{id}/audit`` (the project's append-only audit log: who labelled,
undid -- with the whole label --, edited, resolved, exported, when),
``GET /api/admin/projects/{id}/tasks/{task_id}/history`` and
``GET /api/admin/projects/{id}/labels/{label_id}/history`` (the label history: every label as it
was before an edit or an undo, who changed it, when),
``POST /api/admin/tasks/{id}/resolve``, ``POST /api/admin/projects/{id}/active``.

Sign-in: ``POST /login`` with a name and password, or with a personal token, opens a server-side
session (its own token in the ``alignkit_token`` cookie: HttpOnly, SameSite=Strict, Secure when
served over HTTPS); ``POST /logout`` ends that session only (the personal token and other
sessions stay valid). Failed sign-ins are limited per name and per client address (429 with
``Retry-After``).

Cross-site requests: every state-changing request whose ``Origin`` (or, without it, ``Referer``)
names another origin -- another site, or another port of this host -- is refused (403), sign-in
included; a browser always sends one of them on such a request. API writes must be JSON
(``Content-Type: application/json``, else 415) when signed by the cookie, which a cross-site
HTML form cannot send. Pages carry ``Content-Security-Policy`` (scripts and styles from this
server only, no framing), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and a
same-origin referrer policy.

Rankings: each annotator is shown a task's responses in their own order (``store.shown_order``,
seeded by task and annotator: no response gains from always coming first); ``next`` gives the
shown ``responses`` with ``order`` (the canonical index of each), and a ranking label is sent and
stored in canonical indices (the task's responses as imported), best first.

Quality control (a project's ``calibration_items``, ``calibration_accuracy``,
``attention_rate``): ``next`` hands a new annotator gold items first, nothing after a failed
calibration, and real work with hidden gold items at the attention rate after a passed one;
``progress`` carries the annotator's ``calibration`` state (never the attention checks); a
label outside the calibration while it is under way, or any label after a failed one, is
refused (403). The report lists each annotator's state, attention-check accuracy, quality and
weight.

AI assist (a project's ``assist``; suggestions stored by ``create-project --judge``): under
``before`` the page and ``next`` carry the task's ``suggestion`` for a seeded half of the
(task, annotator) pairs (``store.assist_shown``; the other half is the anchoring control) and the
label records that it was shown; under ``after`` the answer to a new label carries it instead, as
feedback once the annotator has committed. A suggestion names responses as the annotator sees
them (A/B, or the shown positions best first), never canonical indices.

Rules: an annotator sees only projects they are on (others answer 404) and only their own
labels; admin routes answer 403 to annotators; bad requests answer 4xx with ``{"error": ...}``.
All text is rendered by Jinja2 with autoescaping, so prompts, responses, reasons and names stay
inert.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignkit.errors import DataError, UserError
from alignkit.feedback.markdown import render_markdown, render_text
from alignkit.feedback.store import (ROLES, Forbidden, Invalid, NotFound, Store, StoreError,
                                     User, assist_shown, shown_order, text_of, unrenderable)

log = logging.getLogger("alignkit.annotate")
HERE = Path(__file__).parent
COOKIE = "alignkit_token"
# ids are ``INTEGER`` columns: 32-bit on PostgreSQL, so a larger number names no row anywhere
MAX_ID = 2**31 - 1
# task uploads: the formats the CLI's readers take from a file, and the largest file taken
UPLOAD_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet")
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class NotSignedIn(Exception):
    pass


class SignInLimiter:
    """Failed sign-ins per name and per client address in a sliding window: past ``per_name``
    (or ``per_address``) failures within ``window`` seconds, sign-in is refused until the oldest
    of them leaves the window, right password or not."""

    def __init__(self, per_name: int = 10, per_address: int = 30, window: float = 300.0):
        self.limits = {"name": per_name, "address": per_address}
        self.window = window
        self._failures: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], at: float) -> deque:
        times = self._failures[key]
        while times and times[0] <= at - self.window:
            times.popleft()
        return times

    def retry_after(self, name: str, address: str) -> int:
        """Seconds until a sign-in as ``name`` from ``address`` is allowed again (0: now)."""
        at = time.monotonic()
        with self._lock:
            waits = [self._recent((kind, value), at)[0] + self.window - at
                     for kind, value in (("name", name), ("address", address))
                     if value and len(self._recent((kind, value), at)) >= self.limits[kind]]
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, name: str, address: str) -> None:
        at = time.monotonic()
        with self._lock:
            for key in (("name", name), ("address", address)):
                if key[1]:
                    self._recent(key, at).append(at)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("name", name), None)


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def cross_origin(request: Request) -> bool:
    """Whether a request comes from a page of another origin: its ``Origin`` header, or without
    one its ``Referer``, names another scheme, host or port (neither: a non-browser client)."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return False
        parts = referer.split("/")
        origin = "/".join(parts[:3]) if len(parts) >= 3 else referer
    return origin.lower() != own_origin(request)


def request_user(store: Store, request: Request) -> User:
    """The user of the request: ``Authorization: Bearer`` (a personal token or a session's),
    else the session cookie; ``NotSignedIn`` without either."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
        user = store.user_by_token(token) or store.user_by_session(token)
    else:
        user = store.user_by_session(request.cookies.get(COOKIE))
    if user is None:
        raise NotSignedIn()
    return user


def request_admin(store: Store, request: Request) -> User:
    """``request_user``, who must be an admin."""
    user = request_user(store, request)
    if not user.is_admin:
        raise Forbidden("admins only")
    return user


def id_value(value: Any, name: str, optional: bool = False) -> int | None:
    """An id field of a JSON body: an integer (``Invalid`` otherwise) naming a possible row
    (``NotFound`` past ``MAX_ID``); None when ``optional`` and absent."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f'field "{name}" must be an integer')
    if not 0 < value <= MAX_ID:
        raise NotFound(f'no {name.removesuffix("_id")} {value}')
    return value


async def json_body(request: Request) -> dict:
    """The request's JSON object body (``Invalid`` for anything else)."""
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Invalid("request body must be JSON") from None
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    return body


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def public_task(task: dict, aspects: list[str], user_id: int | None = None) -> dict:
    """What an annotator may see of a task (never whether it is gold, nor its answer). With
    ``user_id``, a ranking's responses come in that annotator's shown order; ``order`` gives the
    canonical index of each shown response."""
    order = list(range(len(task["responses"])))
    if user_id is not None and task["kind"] == "ranking":
        order = shown_order(task["id"], user_id, len(order))
    return {"id": task["id"], "kind": task["kind"], "prompt": text_of(task["prompt"]),
            "responses": [text_of(task["responses"][i]) for i in order], "order": order,
            "aspects": aspects}


def public_suggestion(suggestion: Optional[dict], task: dict, user_id: int) -> Optional[dict]:
    """A stored suggestion as annotator ``user_id`` sees the task: a pair's choice (A, B or
    tie, the judge's verdict on the first aspect) or a ranking as the 1-based positions of the
    responses as shown to them, best first; with the judge's confidence."""
    if suggestion is None:
        return None
    value, out = suggestion["value"], {"confidence": suggestion["confidence"]}
    if task["kind"] == "pairwise":
        choices = value.get("choices") or {}
        out["choice"] = next(iter(choices.values()), None)
    else:
        order = shown_order(task["id"], user_id, len(task["responses"]))
        out["ranking"] = [order.index(i) + 1 for i in value["ranking"]]
    return out


def suggestion_before(store: Store, project: dict, task: Optional[dict],
                      user: User) -> Optional[dict]:
    """The suggestion to show with ``task`` before the annotator answers, if any."""
    if task is None or not assist_shown(project, task["id"], user.id):
        return None
    return public_suggestion(store.suggestion(task["id"]), task, user.id)


def upload_tasks(store: Store, project: dict, filename: str, raw: bytes, user: User) -> dict:
    """Import an uploaded task file into ``project`` with the readers and validation of
    ``alignkit annotate add-tasks``, all or nothing: ``DataError`` lists every bad record as
    ``file:line: problem`` under the uploaded file's own name. Records with only a prompt are
    refused here (sampling candidates from a policy is the CLI's ``--model``)."""
    from alignkit.feedback.tasks import read_task_records, to_store_tasks

    name = Path(str(filename or "").replace("\\", "/")).name.strip()
    if Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
        raise Invalid(f"upload a {', '.join(UPLOAD_SUFFIXES)} file, got {name or 'no file'!r}")
    if not raw:
        raise Invalid(f"{name}: the file is empty")
    if len(raw) > MAX_UPLOAD_BYTES:
        raise Invalid(f"{name}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB; use "
                      "alignkit annotate add-tasks")
    with tempfile.TemporaryDirectory(prefix="alignkit-upload-") as tmp:
        # the readers pick the format by suffix and name records by path: a safe name of the
        # upload's own, shown back as the name the admin chose
        path = Path(tmp) / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        path.write_bytes(raw)
        try:
            records = read_task_records(str(path))
        except DataError as e:
            raise DataError([q.replace(str(path), name) for q in e.problems]) from None
        except UserError as e:
            raise UserError(str(e).replace(str(path), name)) from None
    for r in records:
        r["meta"]["source"] = r["meta"]["source"].replace(str(path), name)
    prompt_only = [f"{r['meta']['source']}: responses: only a prompt; give \"responses\" (or "
                   "\"chosen\" and \"rejected\"), or sample candidates with alignkit annotate "
                   "add-tasks --model" for r in records if r["responses"] is None]
    if prompt_only:
        raise DataError(prompt_only)
    tasks = to_store_tasks(records, project["aspects"])
    ids = store.add_tasks(project["id"], tasks, created_by=user.id)
    if project["reward_model"]:
        from alignkit.feedback.active import refresh_priorities

        refresh_priorities(store, project["id"])
    return {"added": len(ids), "pairwise": sum(t["kind"] == "pairwise" for t in tasks),
            "ranking": sum(t["kind"] == "ranking" for t in tasks),
            "gold": sum(t["gold"] is not None for t in tasks), "file": name}


def number(value: Any, name: str, kind: type = int, default: Any = None) -> Any:
    """A form or JSON number (``default`` when absent or blank); ``Invalid`` naming the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise Invalid(f'field "{name}" must be a number')
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise Invalid(f'field "{name}" must be {"an integer" if kind is int else "a number"}, '
                      f"got {value!r}") from None


def aspect_list(value: Any) -> list[str]:
    """Aspects as a list, or as one comma-separated text (a form field)."""
    if value is None or value == "":
        return ["overall"]
    if isinstance(value, str):
        return [a.strip() for a in value.split(",")]
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return value
    raise Invalid('field "aspects" must be a list of names or one comma-separated text')


def new_project(store: Store, fields: dict, user: User) -> int:
    """A project from an admin form or JSON body (the fields of ``create-project``)."""
    guidelines = fields.get("guidelines") or ""
    if not isinstance(guidelines, str):
        raise Invalid('field "guidelines" must be text (Markdown)')
    name = fields.get("name")
    if not isinstance(name, str):
        raise Invalid('field "name" must be text')
    return store.create_project(
        name, guidelines.replace("\r\n", "\n"), aspect_list(fields.get("aspects")),
        number(fields.get("labels_per_item"), "labels_per_item", int, 2), created_by=user.id,
        calibration_items=number(fields.get("calibration_items"), "calibration_items", int, 0),
        calibration_accuracy=number(fields.get("calibration_accuracy"), "calibration_accuracy",
                                    float, 0.8),
        attention_rate=number(fields.get("attention_rate"), "attention_rate", float, 0.0),
        assist=fields.get("assist") or "off")


def new_user(store: Store, fields: dict, project_ids: list[Any]) -> tuple[User, str, list[str]]:
    """A user (and their projects) from an admin form or JSON body; (user, token, projects)."""
    name, role = fields.get("name"), fields.get("role") or "annotator"
    password = fields.get("password") or None
    if not isinstance(name, str) or not isinstance(role, str):
        raise Invalid('fields "name" and "role" must be text')
    if password is not None and (not isinstance(password, str) or len(password) < 8):
        raise Invalid("a password must be text of at least 8 characters")
    ids = [number(pid, "projects", int) for pid in project_ids]
    for pid in ids:
        if pid is None or not 0 < pid <= MAX_ID:
            raise NotFound(f"no project {pid}")
    projects = [store.project(pid) for pid in ids]
    user, token = store.create_user(name, role, password)
    for project in projects:
        store.add_member(project["id"], user.id)
    return user, token, [p["name"] for p in projects]


def create_app(store: Store, limiter: SignInLimiter | None = None) -> FastAPI:
    def ids_in_range(request: Request) -> None:
        """Every ``..._id`` in the path names a row or nothing: one past the database's integer
        range is a 404 like any other unknown id, never an overflow inside the driver."""
        for name, value in request.path_params.items():
            try:
                number = int(value)
            except (TypeError, ValueError):
                continue  # not a number: the route's own validation answers
            if name.endswith("_id") and not 0 < number <= MAX_ID:
                raise NotFound(f"no {name.removesuffix('_id')} {value}")

    app = FastAPI(title="alignkit annotate", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(ids_in_range)])
    limiter = limiter or SignInLimiter()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Cross-origin writes refused; API writes JSON only; security headers on answers."""
        if request.method in UNSAFE_METHODS:
            if cross_origin(request):
                response = JSONResponse({"error": "cross-origin request refused"},
                                        status_code=403)
            elif (request.url.path.startswith("/api/") and "authorization" not in request.headers
                  and request.headers.get("content-type", "").split(";")[0].strip().lower()
                  != "application/json"):
                # cookie-signed (a browser's): JSON only, which no cross-site form can send; a
                # cross-site page cannot add an Authorization header without CORS
                response = JSONResponse({"error": "send the request body as JSON "
                                         "(Content-Type: application/json)"}, status_code=415)
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True  # every template, whatever its file name
    templates.env.filters["fmt"] = fmt
    templates.env.filters["markdown"] = render_markdown
    templates.env.filters["text_html"] = render_text
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store = store

    # ------------------------------------------------------------------ errors

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api/")

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError):
        return JSONResponse({"error": str(exc), "problems": exc.problems}, status_code=400)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn):
        if wants_html(request):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"error": "sign in first (token cookie or Authorization: Bearer)"},
                            status_code=401)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                          for e in exc.errors())
        return JSONResponse({"error": f"bad request: {where}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(request: Request, exc: Exception):
        """The database restarting or unreachable: a 503 to retry, not an error of the app
        (the connection pool reconnects on a later request)."""
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0][:200])
        return JSONResponse({"error": "the database is unavailable; retry shortly"},
                            status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: logged, never a traceback
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error (logged on the server)"},
                            status_code=500)

    # ------------------------------------------------------------------ helpers

    def current_user(request: Request) -> User:
        return request_user(store, request)

    def admin_user(request: Request) -> User:
        return request_admin(store, request)

    def int_field(body: dict, name: str) -> int:
        return id_value(body.get(name), name)

    def page(request: Request, name: str, user: Optional[User], status_code: int = 200, **ctx):
        return templates.TemplateResponse(request, name, {"user": user, **ctx},
                                          status_code=status_code)

    # ------------------------------------------------------------------ sign-in

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html", None, error=None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token") or "").strip()
        name, password = str(form.get("name") or "").strip(), str(form.get("password") or "")
        address = request.client.host if request.client else ""
        wait = limiter.retry_after(name if password else "", address)
        if wait:
            response = page(request, "login.html", None, error="Too many failed sign-ins; "
                            f"try again in {wait} seconds.")
            response.status_code = 429
            response.headers["Retry-After"] = str(wait)
            return response
        user = store.user_by_token(token) if token else None
        if user is None and name and password:
            user = store.user_by_password(name, password)
        if user is None:
            limiter.failed(name if password else "", address)
            return page(request, "login.html", None,
                        error="Unknown token, or wrong name or password.")
        limiter.succeeded(user.name)
        store.record("sign_in", user, address=address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, store.open_session(user), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", max_age=14 * 24 * 3600)
        return response

    @app.post("/logout")
    def logout(request: Request):
        store.close_session(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    # ------------------------------------------------------------------ annotator pages

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        user = current_user(request)
        projects = store.projects_for(user)
        rows = [{"project": p, "progress": store.progress(p, user)} for p in projects]
        return page(request, "projects.html", user, rows=rows)

    @app.get("/projects/{project_id}", response_class=HTMLResponse)
    def annotate(request: Request, project_id: int):
        user = current_user(request)
        project = store.check_access(project_id, user)
        task = store.next_task(project, user)
        return page(request, "annotate.html", user, project=project,
                    task=public_task(task, project["aspects"], user.id) if task else None,
                    suggestion=suggestion_before(store, project, task, user),
                    progress=store.progress(project, user))

    # ------------------------------------------------------------------ annotator API

    @app.get("/api/me")
    def me(request: Request):
        user = current_user(request)
        return {"id": user.id, "name": user.name, "role": user.role}

    @app.get("/api/projects")
    def my_projects(request: Request):
        user = current_user(request)
        return [{"id": p["id"], "name": p["name"], "aspects": p["aspects"]}
                for p in store.projects_for(user)]

    @app.get("/api/projects/{project_id}/next")
    def next_task(request: Request, project_id: int):
        user = current_user(request)
        project = store.check_access(project_id, user)
        task = store.next_task(project, user)
        return {"task": public_task(task, project["aspects"], user.id) if task else None,
                "suggestion": suggestion_before(store, project, task, user),
                "progress": store.progress(project, user)}

    @app.post("/api/projects/{project_id}/labels")
    async def submit(request: Request, project_id: int):
        user = current_user(request)
        body = await json_body(request)
        label, created = store.submit(project_id, user, int_field(body, "task_id"),
                                      body.get("value"), body.get("reason"))
        answer = {"label_id": label["id"], "task_id": label["task_id"], "created": created}
        project = store.project(project_id)
        if project["assist"] == "after":
            answer["suggestion"] = public_suggestion(store.suggestion(label["task_id"]),
                                                     store.task(label["task_id"]), user.id)
        return JSONResponse(answer, status_code=201 if created else 200)

    @app.put("/api/projects/{project_id}/labels/{task_id}")
    async def edit(request: Request, project_id: int, task_id: int):
        user = current_user(request)
        body = await json_body(request)
        label = store.edit(project_id, user, task_id, body.get("value"), body.get("reason"))
        return {"label_id": label["id"], "task_id": label["task_id"], "value": label["value"]}

    @app.post("/api/projects/{project_id}/undo")
    def undo(request: Request, project_id: int):
        user = current_user(request)
        undone = store.undo_last(project_id, user)
        return {"undone": undone["task_id"] if undone else None}

    @app.get("/api/projects/{project_id}/labels/mine")
    def my_labels(request: Request, project_id: int):
        user = current_user(request)
        return [{"task_id": lab["task_id"], "value": lab["value"], "reason": lab["reason"],
                 "created_at": lab["created_at"].isoformat()}
                for lab in store.labels_of_user(project_id, user)]

    # ------------------------------------------------------------------ admin

    def dashboard_page(request: Request, user: User, project_id: int, status: int = 200,
                       **extra):
        from alignkit.feedback.active import queue_change
        from alignkit.feedback.quality import project_report

        project = store.project(project_id)
        report = project_report(store, project_id)
        tasks = {t["id"]: t for t in store.tasks_of(project_id)}
        # items that cannot be shown are listed with the reason, never rendered
        broken = [{"id": tid, "source": (t.get("meta") or {}).get("source", ""), "why": why}
                  for tid, t in tasks.items() if (why := unrenderable(t, project["aspects"]))]
        for item in broken:
            del tasks[item["id"]]
        report["disputes"] = [d for d in report["disputes"] if d["id"] in tasks]
        return page(request, "admin.html", user, project=project, report=report,
                    tasks={tid: public_task(t, project["aspects"]) for tid, t in tasks.items()},
                    queue=queue_change(list(tasks.values()))[:50], broken=broken,
                    members=store.member_names(project_id), status_code=status, **extra)

    @app.get("/admin/projects/{project_id}", response_class=HTMLResponse)
    def dashboard(request: Request, project_id: int):
        return dashboard_page(request, admin_user(request), project_id)

    @app.post("/admin/projects/{project_id}/tasks", response_class=HTMLResponse)
    async def upload_form(request: Request, project_id: int):
        user = admin_user(request)
        project = store.project(project_id)
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return dashboard_page(request, user, project_id, 400,
                                  upload_error="choose a file to upload")
        raw = await upload.read()
        try:
            added = upload_tasks(store, project, upload.filename or "", raw, user)
        except DataError as e:
            return dashboard_page(request, user, project_id, 400,
                                  upload_error=f"{len(e.problems)} bad record(s); nothing "
                                  "was imported:", upload_problems=e.problems)
        except UserError as e:
            return dashboard_page(request, user, project_id, 400, upload_error=str(e))
        return dashboard_page(request, user, project_id, uploaded=added)

    @app.post("/admin/projects/{project_id}/assist", response_class=HTMLResponse)
    async def assist_form(request: Request, project_id: int):
        """The dashboard's AI-suggestions form: change when annotators see the suggestion."""
        user = admin_user(request)
        store.project(project_id)
        form = await request.form()
        mode = form.get("assist")
        try:
            store.update_project(project_id, assist=mode if isinstance(mode, str) else "")
        except UserError as e:
            return dashboard_page(request, user, project_id, getattr(e, "status", 400),
                                  assist_error=str(e))
        store.record("set_assist", user, project_id, assist=mode)
        return RedirectResponse(f"/admin/projects/{project_id}", status_code=303)

    def admin_home(request: Request, user: User, status: int = 200, **extra):
        return page(request, "admin_home.html", user, projects=store.projects_for(user),
                    roles=ROLES, status_code=status, **extra)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_index(request: Request):
        return admin_home(request, admin_user(request))

    @app.post("/admin/projects", response_class=HTMLResponse)
    async def create_project_form(request: Request):
        user = admin_user(request)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            pid = new_project(store, fields, user)
        except UserError as e:
            return admin_home(request, user, getattr(e, "status", 400), project_error=str(e),
                              project_form=fields)
        return RedirectResponse(f"/admin/projects/{pid}", status_code=303)

    @app.post("/admin/users", response_class=HTMLResponse)
    async def add_user_form(request: Request):
        user = admin_user(request)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str) and k != "projects"}
        try:
            created, token, names = new_user(store, fields, form.getlist("projects"))
        except UserError as e:
            fields.pop("password", None)
            return admin_home(request, user, getattr(e, "status", 400), user_error=str(e),
                              user_form=fields)
        store.record("admin_add_user", user, name=created.name, role=created.role)
        response = admin_home(request, user, created={
            "name": created.name, "role": created.role, "token": token, "projects": names,
            "password": bool(fields.get("password"))})
        response.headers["Cache-Control"] = "no-store"  # the token is shown once, never cached
        return response

    @app.post("/api/admin/projects")
    async def create_project_api(request: Request):
        user = admin_user(request)
        pid = new_project(store, await json_body(request), user)
        project = store.project(pid)
        return JSONResponse({"id": pid, "name": project["name"], "aspects": project["aspects"],
                             "labels_per_item": project["labels_per_item"]}, status_code=201)

    @app.post("/api/admin/users")
    async def add_user_api(request: Request):
        admin = admin_user(request)
        body = await json_body(request)
        projects = body.get("projects") or []
        if not isinstance(projects, list):
            raise Invalid('field "projects" must be a list of project ids')
        created, token, names = new_user(store, body, projects)
        store.record("admin_add_user", admin, name=created.name, role=created.role)
        return JSONResponse({"id": created.id, "name": created.name, "role": created.role,
                             "token": token, "projects": names}, status_code=201,
                            headers={"Cache-Control": "no-store"})

    @app.post("/api/admin/projects/{project_id}/tasks")
    async def upload_api(request: Request, project_id: int):
        user = admin_user(request)
        project = store.project(project_id)
        body = await json_body(request)
        if isinstance(body.get("content"), str):
            raw = body["content"].encode("utf-8")
        elif isinstance(body.get("content_base64"), str):
            try:
                raw = base64.b64decode(body["content_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise Invalid('field "content_base64" is not base64') from None
        else:
            raise Invalid('give the file as "content" (text) or "content_base64"')
        filename = body.get("filename")
        if not isinstance(filename, str):
            raise Invalid('field "filename" must be text (its suffix names the format)')
        return JSONResponse(upload_tasks(store, project, filename, raw, user), status_code=201)

    @app.get("/api/admin/projects/{project_id}/report")
    def report(request: Request, project_id: int):
        from alignkit.feedback.quality import project_report

        admin_user(request)
        rep = project_report(store, project_id)
        rep.pop("item_details")
        return rep

    @app.get("/api/admin/projects/{project_id}/labels")
    def all_labels(request: Request, project_id: int):
        admin_user(request)
        store.project(project_id)
        return [{"label_id": lab["id"], "task_id": lab["task_id"],
                 "annotator": lab["annotator"], "value": lab["value"], "reason": lab["reason"],
                 "shown_order": lab["shown_order"],
                 "created_at": lab["created_at"].isoformat()}
                for lab in store.project_labels(project_id)]

    @app.get("/api/admin/projects/{project_id}/export")
    def export(request: Request, project_id: int, kind: str = "pairs",
               mode: str = "aggregated", format: str = "jsonl"):
        from alignkit.feedback.export import (FORMATS, annotator_weights, export_bytes,
                                              export_records)

        admin = admin_user(request)
        if kind not in ("pairs", "rankings", "weights") or mode not in ("aggregated", "labels"):
            raise Invalid("kind must be pairs, rankings or weights; mode aggregated or labels")
        if format not in FORMATS:
            raise Invalid(f"format must be one of {', '.join(FORMATS)}")
        if kind == "weights":
            store.project(project_id)
            weights = annotator_weights(store, project_id)
            store.record("export", admin, project_id, kind=kind, annotators=len(weights))
            return JSONResponse(weights, headers={
                "Content-Disposition": 'attachment; filename="annotator_weights.json"'})
        pairs, rankings, _ = export_records(store, project_id, mode)
        records = pairs if kind == "pairs" else rankings
        body, media, name = export_bytes(records, kind, format)
        store.record("export", admin, project_id, kind=kind, mode=mode, format=format,
                     records=len(records))
        return Response(body, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="project-{project_id}-{name}"'})

    @app.get("/api/admin/projects/{project_id}/audit")
    def audit_log(request: Request, project_id: int):
        admin_user(request)
        store.project(project_id)
        return [{**{k: v for k, v in entry.items() if k != "at"}, "at": entry["at"].isoformat()}
                for entry in store.audit_of(project_id)]

    def history_json(entries: list[dict]) -> list[dict]:
        return [{k: v.isoformat() if k in ("at", "labelled_at") else v for k, v in e.items()}
                for e in entries]

    @app.get("/api/admin/projects/{project_id}/tasks/{task_id}/history")
    def task_history(request: Request, project_id: int, task_id: int):
        admin_user(request)
        store.project(project_id)
        return history_json(store.label_history_of(project_id, task_id=task_id))

    @app.get("/api/admin/projects/{project_id}/labels/{label_id}/history")
    def label_history(request: Request, project_id: int, label_id: int):
        admin_user(request)
        store.project(project_id)
        return history_json(store.label_history_of(project_id, label_id=label_id))

    @app.post("/api/admin/tasks/{task_id}/resolve")
    async def resolve(request: Request, task_id: int):
        user = admin_user(request)
        body = await json_body(request)
        row = store.resolve(task_id, user, body.get("value"), body.get("note"))
        return {"task_id": task_id, "value": row["value"]}

    @app.post("/api/admin/projects/{project_id}/active")
    def refresh_active(request: Request, project_id: int):
        from alignkit.feedback.active import refresh_priorities

        admin_user(request)
        changed = refresh_priorities(store, project_id)
        return {"scored": changed}

    return app
