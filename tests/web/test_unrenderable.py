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


def test_ids_past_the_integer_range_are_404s(server):
    store = Store(server.db_url)
    project = store.create_project("alpha", "Be kind", ["overall"], 1)
    user, token = store.create_user("ann")
    store.add_member(project, user.id)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in (f"/api/projects/{2**63}/next", f"/projects/{10**30}",
                 f"/api/admin/projects/{-2**63 - 1}/report", f"/admin/projects/{2**64}",
                 f"/admin/projects/{2**31}",
                 f"/api/admin/projects/{project}/tasks/{2**40}/history"):
        r = requests.get(server.url + path, headers=auth, timeout=30)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
    r = requests.post(f"{server.url}/api/admin/tasks/{2**63}/resolve", headers=auth,
                      json={"value": {}}, timeout=30)
    assert r.status_code == 404
    r = requests.post(f"{server.url}/api/projects/{project}/labels",
                      headers={"Authorization": f"Bearer {token}"},
                      json={"task_id": 2**70, "value": {}}, timeout=30)
    assert r.status_code == 404 and "no task" in r.json()["error"]
    store.dispose()


def test_a_postgresql_restart_is_a_503_then_service_resumes(postgres_cluster, tmp_path):
    import time

    from tests.web.conftest import Server

    url = postgres_cluster.new_database()
    srv = Server(url, tmp_path / "server.log")
    try:
        store = Store(url)
        _, token = store.create_user("ann")
        store.dispose()
        me = f"{srv.url}/api/me"
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(me, headers=auth, timeout=30).status_code == 200
        postgres_cluster.pause()
        try:
            r = requests.get(me, headers=auth, timeout=60)
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert "database is unavailable" in r.json()["error"]
        finally:
            postgres_cluster.resume()
        deadline = time.time() + 30
        while (status := requests.get(me, headers=auth, timeout=30).status_code) == 503:
            assert time.time() < deadline
            time.sleep(0.2)
        assert status == 200
    finally:
        log = srv.stop()
    assert "unexpected error" not in log, log
