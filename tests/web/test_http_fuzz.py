"""Fuzzing both HTTP servers over real HTTP (hypothesis, seeded): every route of the annotation
app and of ``alignkit serve`` gets generated paths, query strings, headers and bodies -- random
JSON near the real schema, random bytes, huge and negative ids -- as an admin, an annotator or
nobody; not one answer is a 5xx and neither server logs an unexpected error."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.feedback.store import Store
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

FUZZ = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
TEXT = st.text(max_size=30)
IDS = st.sampled_from([1, 2, 3]) | st.integers() | TEXT
KEYS = st.sampled_from(["task_id", "value", "reason", "choices", "ranking", "note", "helpful",
                        "messages", "role", "content", "max_tokens", "temperature", "top_p", "n",
                        "stop", "seed", "stream", "logprobs", "top_logprobs", "model", "tools",
                        "response_format", "user"]) | TEXT
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT
    | st.sampled_from(["A", "B", "tie", "user", "assistant", "system"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=15)
BODY = (JSON.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=60)
        | st.just(b""))


def send(url: str, method: str, headers: dict, body: bytes) -> requests.Response:
    return requests.request(method, url, headers=headers, data=body if method == "POST" else None,
                            timeout=60, allow_redirects=False)


def test_the_annotation_app_never_answers_5xx(server):
    store = Store(server.db_url)
    pid = store.create_project("alpha", "g", ["helpful", "harmless"], 2)
    store.add_tasks(pid, [{"kind": "pairwise", "prompt": "P", "responses": ["a", "b"]},
                          {"kind": "ranking", "prompt": "R", "responses": ["x", "y", "z"]}])
    user, token = store.create_user("ann", password="a long passphrase")
    store.add_member(pid, user.id)
    store.dispose()
    routes = [("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/"),
              ("GET", "/projects/{id}"), ("GET", "/api/me"), ("GET", "/api/projects"),
              ("GET", "/api/projects/{id}/next"), ("POST", "/api/projects/{id}/labels"),
              ("POST", "/api/projects/{id}/undo"), ("GET", "/api/projects/{id}/labels/mine"),
              ("GET", "/admin/projects/{id}"), ("GET", "/api/admin/projects/{id}/report"),
              ("GET", "/api/admin/projects/{id}/labels"), ("GET", "/api/admin/projects/{id}/audit"),
              ("GET", "/api/admin/projects/{id}/export"), ("POST", "/api/admin/tasks/{id}/resolve"),
              ("POST", "/api/admin/projects/{id}/active"),
              ("PUT", "/api/projects/{id}/labels/{id}"),
              ("GET", "/api/admin/projects/{id}/tasks/{id}/history"),
              ("GET", "/api/admin/projects/{id}/labels/{id}/history")]
    seen = []

    @FUZZ
    @given(st.sampled_from(routes), IDS, st.sampled_from([ADMIN_TOKEN, token, None, "x" * 600]),
           st.sampled_from(["application/json", "text/plain",
                            "application/x-www-form-urlencoded"]),
           st.dictionaries(st.sampled_from(["kind", "mode", "x"]), TEXT, max_size=2), BODY)
    def check(route, some_id, who, content_type, query, body):
        method, path = route
        headers = {"Content-Type": content_type}
        if who:
            headers["Authorization"] = f"Bearer {who}"
        url = server.url + path.replace("{id}", requests.utils.quote(str(some_id), safe=""))
        answer = requests.request(method, url, headers=headers, params=query,
                                  data=body if method in ("POST", "PUT") else None, timeout=60,
                                  allow_redirects=False)
        seen.append(answer.status_code)
        assert answer.status_code < 500, (method, url, body[:200], answer.text[:300])

    check()
    assert len(seen) == 400 and {200, 404}.issubset(seen)  # it reached real answers too


def test_serve_never_answers_5xx(tiny_model_dir):
    from tests.smoke.serve_process import serve_process

    with serve_process(tiny_model_dir, "--max-tokens-limit", "4",
                       "--default-max-tokens", "2") as url:
        seen = []

        @FUZZ
        @given(st.sampled_from([("POST", "/chat/completions"), ("GET", "/models"),
                                ("GET", "/models/{id}"), ("GET", "/stats"), ("GET", "/health")]),
               IDS, st.booleans(),
               JSON.map(lambda v: v if not isinstance(v, dict) else {
                   "messages": [{"role": "user", "content": "hi"}], **v})
               .map(lambda v: json.dumps(v).encode()) | BODY)
        def check(route, some_id, valid_message, body):
            method, path = route
            if valid_message and method == "POST":
                body = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 2, "seed": some_id if isinstance(
                                       some_id, int) else 0}).encode()
            base = url.removesuffix("/v1") if path == "/health" else url
            target = base + path.replace("{id}", requests.utils.quote(str(some_id), safe=""))
            answer = send(target, method, {"Content-Type": "application/json"}, body)
            seen.append(answer.status_code)
            assert answer.status_code < 500, (method, target, body[:200], answer.text[:300])

        check()
    assert len(seen) == 400 and {200, 400}.issubset(seen)
