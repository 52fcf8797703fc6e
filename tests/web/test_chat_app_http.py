"""The chat app of ``alignkit serve --feedback-db`` over HTTP, without a model (``generate`` is a
stand-in): sign-in and sessions, the annotation app's security rules, bad input answered with
4xx (never a 500), a model still loading answered with 503, the admin page's review button."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alignkit.feedback.chat_app import Unavailable, create_chat_app
from alignkit.feedback.store import Store

pytestmark = pytest.mark.web


@pytest.fixture
def setup(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'chat.db'}")
    store.upgrade()
    loaded = {"yes": True}

    async def generate(messages: list[dict], seed: int, policy: int) -> str:
        if not loaded["yes"]:
            raise Unavailable()
        return f"echo {messages[-1]['content']} #{seed}"

    app = FastAPI()
    app.mount("/chat", create_chat_app(store, generate, ["stand-in"], 0.8, 0.95, 16))
    yield store, TestClient(app, base_url="http://testserver"), loaded
    store.dispose()


def test_sign_in_security_rules_and_bad_input(setup):
    store, client, loaded = setup
    store.create_user("erin", password="a long password")
    _, other_token = store.create_user("frank")

    assert client.get("/chat", follow_redirects=False).headers["location"].endswith("/chat/")
    page = client.get("/chat/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/chat/login"
    login = client.get("/chat/login")
    assert "stored" in login.text and "script-src 'self'" in login.headers[
        "content-security-policy"]
    wrong = client.post("/chat/login", data={"name": "erin", "password": "nope"})
    assert "wrong name or password" in wrong.text
    evil = client.post("/chat/login", data={"name": "erin", "password": "a long password"},
                       headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    ok = client.post("/chat/login", data={"name": "erin", "password": "a long password"},
                     follow_redirects=False)
    assert ok.status_code == 303 and "path=/chat" in ok.headers["set-cookie"].lower()
    assert "httponly" in ok.headers["set-cookie"].lower()
    page = client.get("/chat/")
    assert page.status_code == 200 and "stored" in page.text and "admin-link" not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert client.get("/chat/static/chat.js").headers["content-type"].startswith(
        "text/javascript")

    turn = client.post("/chat/api/turns", json={"message": "<script>x</script>",
                                                "side_by_side": True})
    assert turn.status_code == 201
    body = turn.json()
    a, b = body["answers"]
    assert a["seed"] != b["seed"] and a["model"] == "stand-in" and a["max_tokens"] == 16

    for bad in ({"message": ""}, {"message": 5}, {"message": "x", "side_by_side": "yes"},
                {"message": "x", "conversation_id": "1"}):
        assert client.post("/chat/api/turns", json=bad).status_code == 422, bad
    for raw in (b"{not json", b'{"message": "\\ud800"}', b"[1]", b"\xff"):
        assert client.post("/chat/api/turns", content=raw, headers={
            "Content-Type": "application/json"}).status_code == 422, raw
    assert client.post("/chat/api/turns", json={"message": "x",
                                                "conversation_id": 2**40}).status_code == 404
    assert client.post("/chat/api/turns", data={"message": "x"}).status_code == 415
    assert client.post(f"/chat/api/turns/{2**40}/pick", json={"answer_id": 1}).status_code == 404
    assert client.post(f"/chat/api/turns/{body['turn_id']}/pick",
                       json={"answer_id": True}).status_code == 422
    assert client.post(f"/chat/api/answers/{a['id']}/rating",
                       json={"value": "up", "reason": ["no"]}).status_code == 422
    assert client.post(f"/chat/api/answers/{a['id']}/rating",
                       json={"value": "down", "reason": "dull"}).status_code == 200

    # another user sees none of it, and is no admin
    other = {"Authorization": f"Bearer {other_token}"}
    assert client.post(f"/chat/api/turns/{body['turn_id']}/pick", headers=other,
                       json={"answer_id": a["id"]}).status_code == 404
    assert client.post(f"/chat/api/answers/{a['id']}/rating", headers=other,
                       json={"value": "up"}).status_code == 404
    assert client.get("/chat/api/me/conversations",
                      headers=other).json()["conversations"] == []
    assert client.get("/chat/api/admin/conversations", headers=other).status_code == 403
    assert client.delete(f"/chat/api/me/conversations/{body['conversation_id']}",
                         headers=other).status_code == 404

    # the model still loading: 503 with Retry-After, nothing stored
    loaded["yes"] = False
    busy = client.post("/chat/api/turns", json={"message": "later"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    loaded["yes"] = True

    # signing out ends the session
    client.post("/chat/logout")
    assert client.get("/chat/api/me/conversations").status_code == 401


def test_admin_page_sends_a_conversation_to_review(setup):
    store, client, _ = setup
    _, admin_token = store.create_user("boss", role="admin")
    pid = store.create_project("chat review", "Compare", ["helpful"], 1)
    client.post("/chat/login", data={"token": admin_token})
    turn = client.post("/chat/api/turns", json={"message": "Hi", "side_by_side": True}).json()
    single = client.post("/chat/api/turns", json={"message": "Hi"}).json()
    admin_page = client.get("/chat/admin")
    assert admin_page.status_code == 200 and "chat review" in admin_page.text
    assert f'data-conversation-id="{turn["conversation_id"]}"' in admin_page.text
    review = client.post(f"/chat/api/admin/conversations/{turn['conversation_id']}/review",
                         json={"project_id": pid})
    assert review.status_code == 201
    (task,) = store.tasks_of(pid)
    assert task["kind"] == "pairwise" and task["prompt"] == [{"role": "user", "content": "Hi"}]
    nothing = client.post(f"/chat/api/admin/conversations/{single['conversation_id']}/review",
                          json={"project_id": pid})
    assert nothing.status_code == 422 and "no turn with two answers" in nothing.json()["error"]
    assert client.post(f"/chat/api/admin/conversations/{turn['conversation_id']}/review",
                       json={"project_id": 999}).status_code == 404
