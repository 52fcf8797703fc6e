"""Feedback from deployment: the chat page that ``alignkit serve --feedback-db URL`` mounts at
``/chat``, where a user signed in with an annotation-store account chats with the served policy
and rates its answers; everything is stored in the annotation store (``store.ChatFeedback``).

This module knows nothing of the model: ``create_chat_app`` takes ``generate``, an async
callable ``(messages, seed, policy) -> answer`` (``recipes.serve`` wires it to the serve app's
model thread), so the layers stay apart (serve and feedback do not import each other).

Pages: ``/chat/login`` (token or name + password, the annotation app's accounts, limiter and
session cookie), ``/chat/`` (the chat; it says visibly that conversations are stored, and links
the user's export and deletion), ``/chat/admin`` (admins: conversations, each with a button that
sends it to a project's queue for expert review).

API (JSON; the session cookie or ``Authorization: Bearer``, as in the annotation app):
``POST /chat/api/turns`` ``{conversation_id?, message, side_by_side?}`` (one answer, or two side
by side: two samples of the policy with different seeds, or one answer of each policy when
serve has a second one, in a random order per turn so that neither gains from its side),
``POST /chat/api/turns/{id}/pick``
``{answer_id}``, ``POST /chat/api/answers/{id}/rating`` ``{value: "up" | "down", reason?}``;
privacy: ``GET /chat/api/me/conversations`` (everything stored of one's conversations, as a
download), ``DELETE /chat/api/me/conversations`` (all of them) and ``DELETE
/chat/api/me/conversations/{id}``; admins: ``GET /chat/api/admin/conversations``, ``POST
/chat/api/admin/conversations/{id}/review`` ``{project_id}`` (each side-by-side turn becomes a
pairwise task of that project).

Security is the annotation app's, reused rather than copied (``feedback.app``): cross-origin
writes refused, cookie-signed API writes JSON only, the same security headers (scripts and
styles only from this server: the page's script and style are served as files).
"""

from __future__ import annotations

import html
import secrets
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from alignkit.errors import UserError
from alignkit.feedback.app import (COOKIE, MAX_ID, SECURITY_HEADERS, UNSAFE_METHODS, NotSignedIn,
                                   SignInLimiter, cross_origin, id_value, json_body, request_admin,
                                   request_user)
from alignkit.feedback.chat_page import CHAT_CSS, CHAT_JS
from alignkit.feedback.store import (ChatFeedback, Invalid, NotFound, Store,
                                     StoreError, User)

# (messages, seed, index of the policy in ``model_names``) -> the answer's text
Generate = Callable[[list[dict], int, int], Awaitable[str]]


class Unavailable(Exception):
    """The model cannot answer yet (still loading): a 503 to retry."""


def create_chat_app(store: Store, generate: Generate, model_names: list[str],
                    temperature: float, top_p: float, max_tokens: int, prefix: str = "/chat",
                    limiter: SignInLimiter | None = None) -> FastAPI:
    """The chat app, to be mounted at ``prefix`` (links and the cookie's path use it).
    ``model_names``: the served policy, and optionally a second one that answers beside it in
    side-by-side turns."""
    chats = ChatFeedback(store)
    limiter = limiter or SignInLimiter()
    app = FastAPI(title="alignkit chat feedback", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The annotation app's rules: cross-origin writes refused, cookie-signed API writes
        JSON only, security headers on every answer."""
        response = None
        if request.method in UNSAFE_METHODS:
            if cross_origin(request):
                response = JSONResponse({"error": "cross-origin request refused"},
                                        status_code=403)
            elif ("/api/" in request.url.path and "authorization" not in request.headers
                  and request.method != "DELETE"
                  and request.headers.get("content-type", "").split(";")[0].strip().lower()
                  != "application/json"):
                response = JSONResponse({"error": "send the request body as JSON "
                                         "(Content-Type: application/json)"}, status_code=415)
        if response is None:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable):
        return JSONResponse({"error": str(exc) or "the model is loading; retry shortly"},
                            status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn):
        if "/api/" not in request.url.path:
            return RedirectResponse(f"{prefix}/login", status_code=303)
        return JSONResponse({"error": "sign in first (token cookie or Authorization: Bearer)"},
                            status_code=401)

    def current_user(request: Request) -> User:
        return request_user(store, request)

    def admin_user(request: Request) -> User:
        return request_admin(store, request)

    def path_id(value: int, what: str) -> int:
        if not 0 < value <= MAX_ID:
            raise NotFound(f"no {what} {value}")
        return value

    def html_page(title: str, body: str, script: bool = True) -> HTMLResponse:
        tags = f'<script src="{prefix}/static/chat.js" defer></script>' if script else ""
        return HTMLResponse(
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
            f'{html.escape(title)}</title><meta name="viewport" content="width=device-width">'
            f'<link rel="stylesheet" href="{prefix}/static/chat.css">{tags}</head>'
            f'<body data-prefix="{html.escape(prefix)}">{body}</body></html>')

    # ------------------------------------------------------------------ static

    @app.get("/static/chat.js")
    def chat_js():
        return Response(CHAT_JS, media_type="text/javascript")

    @app.get("/static/chat.css")
    def chat_css():
        return Response(CHAT_CSS, media_type="text/css")

    # ------------------------------------------------------------------ sign-in

    def login_page(error: str | None, status: int = 200) -> HTMLResponse:
        shown = f'<p class="error" id="login-error">{html.escape(error)}</p>' if error else ""
        response = html_page("Sign in - alignkit chat", f"""
<main class="narrow"><h1>Sign in to chat</h1>{shown}
<p class="notice">Conversations on this page are stored, with your ratings, to improve the
model.</p>
<form method="post" action="{prefix}/login" id="token-form">
<label>Your personal token <input type="password" name="token" id="token" autocomplete="off"
autofocus></label> <button type="submit" id="sign-in">Sign in</button></form>
<form method="post" action="{prefix}/login" id="password-form">
<label>Name <input name="name" id="name"></label>
<label>Password <input type="password" name="password" id="password"></label>
<button type="submit" id="password-sign-in">Sign in</button></form></main>""", script=False)
        response.status_code = status
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form():
        return login_page(None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token") or "").strip()
        name, password = str(form.get("name") or "").strip(), str(form.get("password") or "")
        address = request.client.host if request.client else ""
        wait = limiter.retry_after(name if password else "", address)
        if wait:
            response = login_page(f"Too many failed sign-ins; try again in {wait} seconds.", 429)
            response.headers["Retry-After"] = str(wait)
            return response
        user = store.user_by_token(token) if token else None
        if user is None and name and password:
            user = store.user_by_password(name, password)
        if user is None:
            limiter.failed(name if password else "", address)
            return login_page("Unknown token, or wrong name or password.")
        limiter.succeeded(user.name)
        store.record("sign_in", user, address=address, app="chat")
        response = RedirectResponse(f"{prefix}/", status_code=303)
        response.set_cookie(COOKIE, store.open_session(user), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", max_age=14 * 24 * 3600,
                            path=prefix)
        return response

    @app.post("/logout")
    def logout(request: Request):
        store.close_session(request.cookies.get(COOKIE))
        response = RedirectResponse(f"{prefix}/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https", path=prefix)
        return response

    # ------------------------------------------------------------------ chat

    @app.get("/", response_class=HTMLResponse)
    def chat_page(request: Request):
        user = current_user(request)
        admin = f' <a href="{prefix}/admin" id="admin-link">Admin</a>' if user.is_admin else ""
        return html_page("alignkit chat", f"""
<header><strong>alignkit chat</strong> with <code id="model">{html.escape(" / ".join(model_names))}</code>
<span class="who">signed in as <b id="user">{html.escape(user.name)}</b></span>{admin}
<a href="{prefix}/api/me/conversations" id="export-mine" download>Export my conversations</a>
<button type="button" id="delete-mine">Delete my conversations</button>
<form method="post" action="{prefix}/logout" class="inline"><button type="submit">Sign out
</button></form></header>
<p class="notice" id="stored-notice">Conversations on this page are <b>stored</b> (your messages,
the answers shown, your picks and ratings, with the model and sampling settings) to improve the
model, and may be reviewed by annotators. You can export or delete yours at any time.</p>
<main id="log" aria-live="polite"></main>
<form id="send-form"><textarea id="message" rows="3" placeholder="Your message"
required></textarea>
<label><input type="checkbox" id="side-by-side"> Two answers side by side (A/B)</label>
<button type="submit" id="send">Send</button> <button type="button" id="new-chat">New
conversation</button> <span id="status" role="status"></span></form>""")

    async def answer(messages: list[dict], seed: int, policy: int) -> dict:
        content = await generate(messages, seed, policy)
        return {"content": content, "model": model_names[policy], "temperature": temperature,
                "top_p": top_p, "max_tokens": max_tokens, "seed": seed}

    @app.post("/api/turns")
    async def new_turn(request: Request):
        user = current_user(request)
        body = await json_body(request)
        conversation_id = id_value(body.get("conversation_id"), "conversation_id", optional=True)
        side_by_side = body.get("side_by_side", False)
        if not isinstance(side_by_side, bool):
            raise Invalid('field "side_by_side" must be true or false')
        conversation_id, prompt = chats.next_prompt(user, conversation_id, body.get("message"))
        seeds = [secrets.randbelow(2**31 - 1) + 1]
        if side_by_side:  # two samples of the policy: different seeds, never the same one
            seeds.append((seeds[0] + 1 + secrets.randbelow(2**30)) % (2**31 - 1) + 1)
        policies = [0, 0]  # a single answer always comes from the served policy
        if side_by_side and len(model_names) > 1:  # one of each policy, sides drawn per turn
            policies = [1, 0] if secrets.randbelow(2) else [0, 1]
        answers = [await answer(prompt, seed, policy) for seed, policy in zip(seeds, policies)]
        turn = chats.add_turn(conversation_id, prompt, answers)
        return JSONResponse(turn, status_code=201)

    @app.post("/api/turns/{turn_id}/pick")
    async def pick(request: Request, turn_id: int):
        user = current_user(request)
        body = await json_body(request)
        chats.pick(user, path_id(turn_id, "turn"), id_value(body.get("answer_id"), "answer_id"))
        return {"turn_id": turn_id, "picked_answer_id": body["answer_id"]}

    @app.post("/api/answers/{answer_id}/rating")
    async def rate(request: Request, answer_id: int):
        user = current_user(request)
        body = await json_body(request)
        chats.rate(user, path_id(answer_id, "answer"), body.get("value"), body.get("reason"))
        return {"answer_id": answer_id, "value": body["value"]}

    # ------------------------------------------------------------------ privacy

    @app.get("/api/me/conversations")
    def export_mine(request: Request):
        user = current_user(request)
        return JSONResponse({"user": user.name, "conversations": chats.conversations_of(user)},
                            headers={"Content-Disposition":
                                     'attachment; filename="my-conversations.json"'})

    @app.delete("/api/me/conversations")
    def delete_mine(request: Request):
        user = current_user(request)
        deleted = chats.delete(user)
        store.record("chat_delete", user, conversations=deleted)
        return {"deleted": deleted}

    @app.delete("/api/me/conversations/{conversation_id}")
    def delete_one(request: Request, conversation_id: int):
        user = current_user(request)
        deleted = chats.delete(user, path_id(conversation_id, "conversation"))
        store.record("chat_delete", user, conversations=deleted)
        return {"deleted": deleted}

    # ------------------------------------------------------------------ admin

    @app.get("/api/admin/conversations")
    def all_conversations(request: Request):
        admin_user(request)
        return chats.all_conversations()

    @app.post("/api/admin/conversations/{conversation_id}/review")
    async def send_to_review(request: Request, conversation_id: int):
        admin = admin_user(request)
        body = await json_body(request)
        project_id = id_value(body.get("project_id"), "project_id")
        ids = chats.send_to_review(path_id(conversation_id, "conversation"), project_id, admin)
        return JSONResponse({"project_id": project_id, "task_ids": ids}, status_code=201)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request):
        admin = admin_user(request)
        projects = "".join(f'<option value="{p["id"]}">{html.escape(p["name"])}</option>'
                           for p in store.projects_for(admin))
        rows = []
        for conv in chats.all_conversations():
            side_by_side = sum(len(t["answers"]) >= 2 for t in conv["turns"])
            first = html.escape(conv["turns"][0]["message"][:80]) if conv["turns"] else ""
            rows.append(
                f'<tr data-conversation-id="{conv["id"]}"><td>{conv["id"]}</td>'
                f'<td>{html.escape(conv["user"])}</td><td>{len(conv["turns"])}</td>'
                f'<td>{side_by_side}</td><td>{first}</td><td><button type="button" '
                f'class="review" data-conversation-id="{conv["id"]}"'
                f'{"" if side_by_side else " disabled"}>Send to review</button></td></tr>')
        return html_page("alignkit chat - admin", f"""
<header><strong>alignkit chat: conversations</strong> <a href="{prefix}/">Chat</a></header>
<main><label>Review project <select id="project">{projects}</select></label>
<span id="status" role="status"></span>
<table id="conversations"><tr><th>id</th><th>user</th><th>turns</th><th>side by side</th>
<th>first message</th><th></th></tr>{''.join(rows)}</table></main>""")

    return app
