"""The annotation app over real HTTP (uvicorn subprocess) on SQLite and on PostgreSQL: access
rules, inert payloads, 4xx for bad requests, agreement updating, export that alignkit's
preference readers load, and 24 annotators submitting at once."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from alignkit.feedback.store import Store
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

EVIL = "<script>window.__pwned=1</script>'); DROP TABLE labels; --"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(server):
    """Two projects; ann0..ann2 on 'alpha', 'outsider' only on 'beta'."""
    store = Store(server.db_url)
    alpha = store.create_project("alpha", "# Be kind", ["helpful", "harmless"], 2)
    beta = store.create_project("beta", "secret guidelines", ["overall"], 1)
    tasks = store.add_tasks(alpha, [
        {"kind": "pairwise", "prompt": f"P{i} {EVIL}", "responses": [f"a{i} {EVIL}", f"b{i}"]}
        for i in range(3)] + [{"kind": "ranking", "prompt": "R", "responses": ["x", "y", "z"]}])
    (beta_task,) = store.add_tasks(beta, [{"kind": "pairwise", "prompt": "beta secret prompt",
                                           "responses": ["s1", "s2"]}])
    tokens = {}
    for name in ("ann0", "ann1", "ann2", "outsider"):
        user, tokens[name] = store.create_user(name)
        store.add_member(beta if name == "outsider" else alpha, user.id)
    yield {"store": store, "alpha": alpha, "beta": beta, "tasks": tasks, "beta_task": beta_task,
           "tokens": tokens, "url": server.url}
    store.dispose()


def test_password_sign_in_sets_a_session_cookie(world):
    store, url = world["store"], world["url"]
    store.create_user("pat", password="long enough passphrase")
    s = requests.Session()
    r = s.post(f"{url}/login", data={"name": "pat", "password": "wrong"})
    assert "Unknown token" in r.text and "alignkit_token" not in s.cookies
    r = s.post(f"{url}/login", data={"name": "pat", "password": "long enough passphrase"})
    assert r.status_code == 200 and r.url.rstrip("/") == url  # redirected home
    assert s.get(f"{url}/api/me").json()["name"] == "pat"
    s.post(f"{url}/logout")
    assert s.get(f"{url}/api/me").status_code == 401


def label(w, who, task, value, reason=None, project=None):
    return requests.post(f"{w['url']}/api/projects/{project or w['alpha']}/labels",
                         headers=bearer(w["tokens"][who]),
                         json={"task_id": task, "value": value, "reason": reason}, timeout=30)


def test_annotator_cannot_reach_other_projects_labels_or_admin(world):
    w, url = world, world["url"]
    h = bearer(w["tokens"]["ann0"])
    assert [p["name"] for p in requests.get(f"{url}/api/projects", headers=h).json()] == ["alpha"]
    # another project: 404 everywhere (its existence is not revealed)
    for path in (f"/api/projects/{w['beta']}/next", f"/projects/{w['beta']}",
                 f"/api/projects/{w['beta']}/labels/mine"):
        r = requests.get(url + path, headers=h)
        assert r.status_code == 404 and "error" in r.json()
        assert "secret" not in r.text
    r = label(w, "ann0", w["beta_task"], {"choices": {"overall": "A"}}, project=w["beta"])
    assert r.status_code == 404
    r = label(w, "ann0", w["beta_task"], {"choices": {"overall": "A"}})  # via own project
    assert r.status_code == 404
    # admin endpoints: 403
    for path in (f"/api/admin/projects/{w['alpha']}/report",
                 f"/api/admin/projects/{w['alpha']}/labels",
                 f"/api/admin/projects/{w['alpha']}/export", f"/admin/projects/{w['alpha']}"):
        r = requests.get(url + path, headers=h)
        assert r.status_code == 403 and r.json() == {"error": "admins only"}
    r = requests.post(f"{url}/api/admin/tasks/{w['tasks'][0]}/resolve", headers=h,
                      json={"value": {"choices": {"helpful": "A", "harmless": "A"}}})
    assert r.status_code == 403
    # another annotator's labels are not visible: /labels/mine lists only one's own
    assert label(w, "ann1", w["tasks"][0], {"choices": {"helpful": "A", "harmless": "B"}},
                 "ann1's reason").status_code == 201
    mine = requests.get(f"{url}/api/projects/{w['alpha']}/labels/mine", headers=h).json()
    assert mine == []
    theirs = requests.get(f"{url}/api/projects/{w['alpha']}/labels/mine",
                          headers=bearer(w["tokens"]["ann1"])).json()
    assert [x["reason"] for x in theirs] == ["ann1's reason"]
    # undo never touches someone else's label
    r = requests.post(f"{url}/api/projects/{w['alpha']}/undo", headers=h)
    assert r.json() == {"undone": None}
    assert w["store"].count_labels(w["alpha"]) == 1
    # no token, a wrong token: 401 on the API, a redirect to sign-in on pages
    assert requests.get(f"{url}/api/projects").status_code == 401
    assert requests.get(f"{url}/api/projects", headers=bearer("nope")).status_code == 401
    r = requests.get(f"{url}/projects/{w['alpha']}", allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"


BAD_BODIES = [
    ("not json", 422, "must be JSON"),
    ("[1, 2]", 422, "JSON object"),
    ('{"value": {}}', 422, '"task_id" must be an integer'),
    ('{"task_id": "1; DROP TABLE labels"}', 422, '"task_id" must be an integer'),
    ('{"task_id": 999999, "value": {"choices": {}}}', 404, "no task 999999"),
    ('{"task_id": TASK, "value": {"choices": {"helpful": "A"}}}', 422, "missing harmless"),
    ('{"task_id": TASK, "value": {"choices": {"helpful": "X", "harmless": "A"}}}', 422,
     "A, B or tie"),
    ('{"task_id": TASK, "value": {"ranking": [0, 1]}}', 422, "choices"),
    ('{"task_id": TASK, "value": "A"}', 422, "JSON object"),
    ('{"task_id": TASK, "value": {"choices": {"helpful": "A", "harmless": "A"}}, "reason": 5}',
     422, "reason must be text"),
]


def test_bad_requests_get_4xx_with_a_message(world):
    for body, status, message in BAD_BODIES:
        r = requests.post(f"{world['url']}/api/projects/{world['alpha']}/labels",
                          data=body.replace("TASK", str(world["tasks"][0])),
                          headers=bearer(world["tokens"]["ann0"]), timeout=30)
        assert r.status_code == status, (body, r.text)
        assert message in r.json()["error"], body
    assert world["store"].count_labels() == 0


def test_bad_paths_and_params_get_4xx(world):
    url, h = world["url"], bearer(ADMIN_TOKEN)
    assert requests.get(f"{url}/api/projects/abc/next", headers=h).status_code == 422
    assert requests.get(f"{url}/api/projects/99999/next", headers=h).status_code == 404
    assert requests.get(f"{url}/no/such/page", headers=h).status_code == 404
    r = requests.get(f"{url}/api/admin/projects/{world['alpha']}/export?kind=evil", headers=h)
    assert r.status_code == 422 and "kind must be" in r.json()["error"]
    r = requests.post(f"{url}/api/admin/tasks/{world['tasks'][3]}/resolve", headers=h,
                      json={"value": {"ranking": [0, 0, 1]}})
    assert r.status_code == 422 and "every response index" in r.json()["error"]
    r = requests.post(f"{url}/api/admin/projects/{world['alpha']}/active", headers=h)
    assert r.status_code == 400 and "no reward model attached" in r.json()["error"]
    r = requests.post(f"{url}/login", data={"token": "wrong"})
    assert r.status_code == 200 and "Unknown token" in r.text


def test_payloads_are_stored_verbatim_and_shown_inert(world):
    w = world
    assert label(w, "ann0", w["tasks"][0], {"choices": {"helpful": "A", "harmless": "tie"}},
                 EVIL).status_code == 201
    page = requests.get(f"{w['url']}/projects/{w['alpha']}", headers=bearer(w["tokens"]["ann1"]))
    assert page.status_code == 200
    assert "<script>window.__pwned" not in page.text  # escaped in HTML and in the JSON island
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text
    labels = requests.get(f"{w['url']}/api/admin/projects/{w['alpha']}/labels",
                          headers=bearer(ADMIN_TOKEN)).json()
    assert labels[0]["reason"] == EVIL and labels[0]["annotator"] == "ann0"


def test_idempotent_submit_undo_and_agreement_update(world):
    w, url = world, world["url"]
    t0, t1, t2, rk = w["tasks"]
    both_a = {"choices": {"helpful": "A", "harmless": "A"}}
    assert label(w, "ann0", t0, both_a).status_code == 201
    assert label(w, "ann0", t0, both_a).status_code == 200  # same again: stored once
    r = label(w, "ann0", t0, {"choices": {"helpful": "B", "harmless": "A"}})
    assert r.status_code == 409 and "undo it first" in r.json()["error"]
    assert w["store"].count_labels(w["alpha"]) == 1
    r = requests.post(f"{url}/api/projects/{w['alpha']}/undo", headers=bearer(w["tokens"]["ann0"]))
    assert r.json() == {"undone": t0} and w["store"].count_labels(w["alpha"]) == 0
    # ann0 and ann1 label the three pairs and the ranking:
    #   t0: both (A, A); t1: both (B, B); t2: ann0 (A, A) vs ann1 (B, A)
    #   ranking: ann0 [0,1,2], ann1 [0,2,1]
    for who in ("ann0", "ann1"):
        assert label(w, who, t0, both_a).status_code == 201
        assert label(w, who, t1, {"choices": {"helpful": "B", "harmless": "B"}}).status_code == 201
    assert label(w, "ann0", t2, both_a).status_code == 201
    assert label(w, "ann1", t2, {"choices": {"helpful": "B", "harmless": "A"}}).status_code == 201
    assert label(w, "ann0", rk, {"ranking": [0, 1, 2]}).status_code == 201
    assert label(w, "ann1", rk, {"ranking": [0, 2, 1]}).status_code == 201
    # R = 2 reached: a third annotator may not add to t0
    assert label(w, "ann2", t0, both_a).status_code == 409
    rep = requests.get(f"{url}/api/admin/projects/{w['alpha']}/report",
                       headers=bearer(ADMIN_TOKEN)).json()
    assert rep["labels"] == 8 and rep["complete_items"] == 4
    # nominal alpha over 6 (item, aspect) units of 2 values: A A | A A | B B | B B | A B |
    # A A. o_AA = 2 * 3 = 6, o_BB = 4, o_AB = o_BA = 1; n_A = 7, n_B = 5, n = 12.
    # alpha = 1 - 11 * 2 / (2 * 7 * 5) = 1 - 22/70 = 48/70
    assert rep["alpha_pairwise_nominal"] == pytest.approx(48 / 70)
    # kappa ann0 vs ann1 over 6 pairwise units + 3 ranking pair units. Pairwise: ann0 A,A,B,B,A,A
    # ann1 A,A,B,B,B,A. Ranking pairs (0,1),(0,2),(1,2): ann0 i,i,i; ann1 i,i,j. Categories
    # over 9 units: ann0 A4 B2 i3; ann1 A3 B3 i2 j1. p_o = 7/9; p_e = (4*3 + 2*3 + 3*2)/81
    # = 24/81. kappa = (63/81 - 24/81) / (57/81) = 39/57.
    assert rep["mean_pairwise_kappa"] == pytest.approx(39 / 57)
    assert [d["id"] for d in rep["disputes"]] == [t2]  # 1-1 split on "helpful"
    # the admin resolves the dispute: the resolution becomes the aggregated label
    r = requests.post(f"{url}/api/admin/tasks/{t2}/resolve", headers=bearer(ADMIN_TOKEN),
                      json={"value": {"choices": {"helpful": "B", "harmless": "A"}},
                            "note": "B is accurate"})
    assert r.status_code == 200
    rep = requests.get(f"{url}/api/admin/projects/{w['alpha']}/report",
                       headers=bearer(ADMIN_TOKEN)).json()
    assert rep["disputes"] == [] and [d["id"] for d in rep["resolved"]] == [t2]
    # export: aggregated pairs (one per item and aspect) and rankings, (README "Data")
    pairs = [json.loads(x) for x in requests.get(
        f"{url}/api/admin/projects/{w['alpha']}/export?kind=pairs",
        headers=bearer(ADMIN_TOKEN)).text.splitlines()]
    assert len(pairs) == 6
    t2_helpful = next(p for p in pairs if p["item_id"] == t2 and p["aspect"] == "helpful")
    assert t2_helpful["chosen"] == "b2" and t2_helpful["resolved_by"] == "admin"
    assert t2_helpful["annotators"] == ["ann0", "ann1"] and t2_helpful["agreement"] == 0.5
    rankings = [json.loads(x) for x in requests.get(
        f"{url}/api/admin/projects/{w['alpha']}/export?kind=rankings",
        headers=bearer(ADMIN_TOKEN)).text.splitlines()]
    # Borda: positions x 0+0, y 1+2, z 2+1 -> tie y/z broken by index: [0, 1, 2]
    assert [r["ranking"] for r in rankings] == [[0, 1, 2]]
    assert rankings[0]["agreement"] == pytest.approx(2 / 3)
    from alignkit.data.preferences import parse_comparison
    from alignkit.data.readers import Record
    parsed = [parse_comparison(Record("export", i, r)) for i, r in enumerate(pairs + rankings)]
    assert len(parsed) == 7


def test_24_annotators_submit_at_once_nothing_lost_or_duplicated(world):
    """24 annotators, 30 pairwise items, R = 3: every thread loops next -> submit (and resends
    each label once, to exercise idempotency) until its queue is empty. Exactly 3 labels per
    item, 90 in all, none twice; every 201 is a stored label."""
    w, store = world, world["store"]
    pid = store.create_project("crowd", "", ["overall"], 3)
    store.add_tasks(pid, [{"kind": "pairwise", "prompt": f"c{i}", "responses": ["a", "b"]}
                          for i in range(30)])
    tokens = {}
    for i in range(24):
        user, tokens[i] = store.create_user(f"crowd{i}")
        store.add_member(pid, user.id)
    created, errors = [], []
    barrier = threading.Barrier(24)

    def annotator(i):
        s = requests.Session()
        s.headers.update(bearer(tokens[i]))
        barrier.wait()
        while True:
            nxt = s.get(f"{w['url']}/api/projects/{pid}/next", timeout=60).json()["task"]
            if nxt is None:
                return
            body = {"task_id": nxt["id"], "value": {"choices": {"overall": "AB"[i % 2]}}}
            r = s.post(f"{w['url']}/api/projects/{pid}/labels", json=body, timeout=60)
            if r.status_code == 201:
                created.append((i, nxt["id"]))
                again = s.post(f"{w['url']}/api/projects/{pid}/labels", json=body, timeout=60)
                if again.status_code != 200 or again.json()["created"]:
                    errors.append(("resend", again.status_code, again.text))
            elif r.status_code == 409 and "already has its 3" in r.text:
                continue  # others filled the item first: take the next
            else:
                errors.append((r.status_code, r.text))
                return

    threads = [threading.Thread(target=annotator, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    labels = store.project_labels(pid)
    assert len(labels) == 90 == len(created)
    assert len({(lab["user_id"], lab["task_id"]) for lab in labels}) == 90
    per_item: dict[int, int] = {}
    for lab in labels:
        per_item[lab["task_id"]] = per_item.get(lab["task_id"], 0) + 1
    assert sorted(per_item.values()) == [3] * 30
    assert sorted((lab["annotator"], lab["task_id"]) for lab in labels) == sorted(
        (f"crowd{i}", t) for i, t in created)


def test_rankings_are_shown_shuffled_per_annotator_and_stored_canonical(server):
    """Two annotators are shown one ranking in different orders (the same order on a reload),
    both put the same responses first by what they see, and both labels are stored in the
    task's own order; gold items stay out of the dispute queue, which shows who chose what."""
    from alignkit.feedback.store import shown_order

    store = Store(server.db_url)
    pid = store.create_project("shuffle", "", ["overall"], 2)
    rk, pq, gold = store.add_tasks(pid, [
        {"kind": "ranking", "prompt": "Rank", "responses": ["w", "x", "best", "y"]},
        {"kind": "pairwise", "prompt": "Pair", "responses": ["p0", "p1"]},
        {"kind": "pairwise", "prompt": "Gold", "responses": ["g0", "g1"],
         "gold": {"choices": {"overall": "A"}}}])
    people, tokens = {}, {}
    for name in ("ann0", "ann1"):
        people[name], tokens[name] = store.create_user(name)
        store.add_member(pid, people[name].id)
    url = server.url
    seen = {}
    for name in ("ann0", "ann1"):
        task = requests.get(f"{url}/api/projects/{pid}/next",
                            headers=bearer(tokens[name])).json()["task"]
        again = requests.get(f"{url}/api/projects/{pid}/next",
                             headers=bearer(tokens[name])).json()["task"]
        assert task["id"] == rk and again == task  # a reload: the same order
        assert task["order"] == shown_order(rk, people[name].id, 4)
        assert task["responses"] == [["w", "x", "best", "y"][i] for i in task["order"]]
        seen[name] = task
    # the ids of this fresh database give the two annotators different orders
    assert seen["ann0"]["responses"] != seen["ann1"]["responses"]
    assert seen["ann0"]["responses"][0] != seen["ann1"]["responses"][0]
    # each ranks by what they see: best, y, w, x -> canonical [2, 3, 0, 1] for both
    want = ["best", "y", "w", "x"]
    for name in ("ann0", "ann1"):
        shown, order = seen[name]["responses"], seen[name]["order"]
        ranking = [order[shown.index(text)] for text in want]
        r = requests.post(f"{url}/api/projects/{pid}/labels", headers=bearer(tokens[name]),
                          json={"task_id": rk, "value": {"ranking": ranking}})
        assert r.status_code == 201, r.text
    admin = bearer(ADMIN_TOKEN)
    labels = requests.get(f"{url}/api/admin/projects/{pid}/labels", headers=admin).json()
    assert [(lab["annotator"], lab["value"]) for lab in labels] == [
        ("ann0", {"ranking": [2, 3, 0, 1]}), ("ann1", {"ranking": [2, 3, 0, 1]})]
    assert [lab["shown_order"] for lab in labels] == [seen["ann0"]["order"],
                                                      seen["ann1"]["order"]]
    rankings = [json.loads(x) for x in requests.get(
        f"{url}/api/admin/projects/{pid}/export?kind=rankings", headers=admin).text.splitlines()]
    assert [(r["responses"], r["ranking"]) for r in rankings] == [
        (["w", "x", "best", "y"], [2, 3, 0, 1])]
    # they split on the pair and on the gold item: only the pair is a dispute, with both votes
    for name, choice in (("ann0", "A"), ("ann1", "B")):
        for tid in (pq, gold):
            r = requests.post(f"{url}/api/projects/{pid}/labels", headers=bearer(tokens[name]),
                              json={"task_id": tid, "value": {"choices": {"overall": choice}}})
            assert r.status_code == 201, r.text
    rep = requests.get(f"{url}/api/admin/projects/{pid}/report", headers=admin).json()
    assert [d["id"] for d in rep["disputes"]] == [pq]
    assert rep["disputes"][0]["votes"] == [
        {"annotator": "ann0", "value": {"choices": {"overall": "A"}}},
        {"annotator": "ann1", "value": {"choices": {"overall": "B"}}}]
    assert rep["per_annotator"]["ann1"]["gold_accuracy"] == 0.0  # the gold split still counts
    # a split ranking is a dispute too, each annotator's ranking shown in canonical indices
    rk2, = store.add_tasks(pid, [{"kind": "ranking", "prompt": "R2", "responses": ["a", "b"]}])
    for name, ranking in (("ann0", [0, 1]), ("ann1", [1, 0])):
        requests.post(f"{url}/api/projects/{pid}/labels", headers=bearer(tokens[name]),
                      json={"task_id": rk2, "value": {"ranking": ranking}})
    rep = requests.get(f"{url}/api/admin/projects/{pid}/report", headers=admin).json()
    disputes = {d["id"]: d for d in rep["disputes"]}
    assert sorted(disputes) == [pq, rk2]
    assert [(v["annotator"], v["value"]) for v in disputes[rk2]["votes"]] == [
        ("ann0", {"ranking": [0, 1]}), ("ann1", {"ranking": [1, 0]})]
    store.dispose()


def test_edit_and_undo_are_kept_in_the_label_history(server):
    store = Store(server.db_url)
    pid = store.create_project("history", "", ["overall"], 2)
    tid, = store.add_tasks(pid, [{"kind": "pairwise", "prompt": "P", "responses": ["a", "b"]}])
    user, token = store.create_user("ann0")
    store.add_member(pid, user.id)
    url, h = server.url, bearer(token)
    r = requests.post(f"{url}/api/projects/{pid}/labels", headers=h,
                      json={"task_id": tid, "value": {"choices": {"overall": "A"}}})
    label_id = r.json()["label_id"]
    r = requests.put(f"{url}/api/projects/{pid}/labels/{tid}", headers=h,
                     json={"value": {"choices": {"overall": "B"}}, "reason": "misread"})
    assert r.status_code == 200 and r.json() == {
        "label_id": label_id, "task_id": tid, "value": {"choices": {"overall": "B"}}}
    assert requests.put(f"{url}/api/projects/{pid}/labels/{tid}", headers=h,
                        json={"value": {"choices": {"overall": "C"}}}).status_code == 422
    assert requests.put(f"{url}/api/projects/{pid}/labels/{tid + 1}", headers=h,
                        json={"value": {"choices": {"overall": "A"}}}).status_code == 404
    mine = requests.get(f"{url}/api/projects/{pid}/labels/mine", headers=h).json()
    assert [(m["value"], m["reason"]) for m in mine] == [({"choices": {"overall": "B"}},
                                                          "misread")]
    assert requests.post(f"{url}/api/projects/{pid}/undo", headers=h).json() == {"undone": tid}
    admin = bearer(ADMIN_TOKEN)
    for path in (f"tasks/{tid}/history", f"labels/{label_id}/history"):
        history = requests.get(f"{url}/api/admin/projects/{pid}/{path}", headers=admin).json()
        assert [(e["action"], e["annotator"], e["by"], e["value"], e["reason"])
                for e in history] == [
            ("edit", "ann0", "ann0", {"choices": {"overall": "A"}}, None),
            ("undo", "ann0", "ann0", {"choices": {"overall": "B"}}, "misread")]
        assert all(e["at"] and e["labelled_at"] for e in history)
        # annotators do not read it
        assert requests.get(f"{url}/api/admin/projects/{pid}/{path}",
                            headers=h).status_code == 403
    log = requests.get(f"{url}/api/admin/projects/{pid}/audit", headers=admin).json()
    assert [e["action"] for e in log if e["task_id"] == tid] == ["label", "edit", "undo"]
    store.dispose()
