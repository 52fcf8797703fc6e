"""One bad record never blocks a project: text that is not text is refused on import, and an item
the queue cannot show (stored by an older version or by hand) is skipped, kept out of every
queue and listed with its reason on the admin dashboard -- no 500 anywhere, on SQLite and
PostgreSQL, over real HTTP."""

from __future__ import annotations

import pytest
import requests
import sqlalchemy as sa

from alignkit.feedback.store import Invalid, Store
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web


def pair(prompt: str) -> dict:
    return {"kind": "pairwise", "prompt": prompt, "responses": ["a", "b"],
            "meta": {"source": f"tasks.jsonl:{prompt[-1]}"}}


def test_an_item_that_cannot_be_shown_is_skipped_and_reported(server):
    store = Store(server.db_url)
    project = store.create_project("alpha", "Be kind", ["overall"], 1)
    with pytest.raises(Invalid, match=r"lone surrogate \(\\ud800\)"):
        store.add_tasks(project, [pair("fine 1"), pair("x\ud800 2")])
    ids = store.add_tasks(project, [pair("broken 1"), pair("fine 2"), pair("fine 3")])
    with store.engine.begin() as c:  # as an older alignkit could have stored it
        c.execute(sa.text("UPDATE tasks SET responses = :bad WHERE id = :id"),
                  {"bad": '"one text, not a list"', "id": ids[0]})
    user, token = store.create_user("ann")
    store.add_member(project, user.id)
    auth = {"Authorization": f"Bearer {token}"}

    nxt = requests.get(f"{server.url}/api/projects/{project}/next", headers=auth, timeout=30)
    assert nxt.status_code == 200 and nxt.json()["task"]["id"] == ids[1]
    page = requests.get(f"{server.url}/projects/{project}", headers=auth, timeout=30)
    assert page.status_code == 200 and "fine 2" in page.text
    assert store.task(ids[0])["unrenderable"] == "task responses must be a list of texts"
    assert nxt.json()["progress"] == {"done": 0, "left": 2, "total": 2}

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    board = requests.get(f"{server.url}/admin/projects/{project}", headers=admin, timeout=30)
    assert board.status_code == 200
    assert "Items that cannot be shown (1)" in board.text
    assert "tasks.jsonl:1" in board.text and "task responses must be a list of texts" in board.text
    report = requests.get(f"{server.url}/api/admin/projects/{project}/report", headers=admin)
    assert report.status_code == 200
    store.dispose()
