"""The annotation store on SQLite and on a real PostgreSQL server: migrations, people, queue
rules (R labels per item, gold items for everyone, active-learning order), idempotent submit,
undo, access rules, dispute resolution."""

from __future__ import annotations

import pytest

from alignkit.feedback.store import (Conflict, Forbidden, Invalid, NotFound, Store,
                                     check_password, hash_password, metadata)

pytestmark = pytest.mark.web


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.upgrade()
    yield s
    s.dispose()


def pair(prompt="Q?", a="yes", b="no", gold=None):
    return {"kind": "pairwise", "prompt": prompt, "responses": [a, b], "gold": gold}


def test_migrations_build_exactly_the_schema_and_are_idempotent(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store.upgrade()  # a second upgrade is a no-op
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_tokens_and_passwords_are_hashed(store):
    user, token = store.create_user("ann", password="correct horse")
    assert store.user_by_token(token) == user
    assert store.user_by_token(token + "x") is None and store.user_by_token("") is None
    assert store.user_by_password("ann", "correct horse") == user
    assert store.user_by_password("ann", "wrong") is None
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT token_hash, password_hash FROM users").first()
    assert token not in row[0] and len(row[0]) == 64 and "correct horse" not in row[1]
    with pytest.raises(Conflict):
        store.create_user("ann")
    new = store.new_token("ann")
    assert store.user_by_token(token) is None and store.user_by_token(new) == user
    h = hash_password("pw")
    assert check_password("pw", h) and not check_password("pw2", h) and h != hash_password("pw")


def test_queue_respects_r_gold_and_active_learning_order(store):
    pid = store.create_project("p", aspects=["helpful", "harmless"], labels_per_item=2)
    ids = store.add_tasks(pid, [pair("one"), pair("two"),
                                pair("gold", gold={"choices": {"helpful": "A"}})])
    people = [store.create_user(f"u{i}")[0] for i in range(3)]
    for u in people:
        store.add_member(pid, u.id)
    project = store.project(pid)
    label = {"choices": {"helpful": "A", "harmless": "tie"}}
    assert store.next_task(project, people[0])["id"] == ids[0]
    store.submit(pid, people[0], ids[0], label)
    store.submit(pid, people[1], ids[0], label)
    # task one now has R = 2 labels: the third annotator is served task two, and may not add a
    # third label to task one
    assert store.next_task(project, people[2])["id"] == ids[1]
    with pytest.raises(Conflict, match="already has its 2 label"):
        store.submit(pid, people[2], ids[0], label)
    # gold items are served to everyone, beyond R
    for u in people:
        store.submit(pid, u, ids[2], label)
    assert store.progress(project, people[0]) == {"done": 2, "left": 1, "total": 3}
    assert store.progress(project, people[2]) == {"done": 1, "left": 1, "total": 2}
    # active learning: the highest score is served first (to one who holds no item yet: the
    # third annotator keeps the item handed to them above)
    more = store.add_tasks(pid, [pair("three"), pair("four")])
    store.set_al_scores(pid, {more[1]: 0.9, more[0]: 0.1})
    assert store.next_task(project, people[2])["id"] == ids[1]
    newcomer = store.create_user("u3")[0]
    store.add_member(pid, newcomer.id)
    assert store.next_task(project, newcomer)["id"] == more[1]


def test_items_are_leased_so_concurrent_annotators_get_different_ones(db_url):
    import threading
    import time

    # a lease long enough that a slow, busy machine never lets one run out between two calls
    store = Store(db_url, lease_seconds=4)
    store.upgrade()
    pid = store.create_project("p", aspects=["overall"], labels_per_item=1)
    ids = store.add_tasks(pid, [pair(f"q{i}") for i in range(3)])
    people = [store.create_user(f"u{i}")[0] for i in range(4)]
    for u in people:
        store.add_member(pid, u.id)
    project = store.project(pid)
    handed = [store.next_task(project, u)["id"] for u in people[:3]]
    assert handed == ids  # three annotators, three items
    assert store.next_task(project, people[0])["id"] == ids[0]  # a reload: the same item
    # all leased to others: nothing for the fourth now, though progress counts them
    assert store.next_task(project, people[3]) is None
    assert store.progress(project, people[3])["left"] == 3
    time.sleep(4.2)  # every lease expires: the items go to whoever asks next
    assert store.next_task(project, people[3])["id"] == ids[0]
    assert store.next_task(project, people[0])["id"] == ids[1]  # u0's item went to u3
    # labelling an item ends its lease: the next one is handed out
    store.submit(pid, people[0], ids[1], {"choices": {"overall": "A"}})
    assert store.next_task(project, people[0])["id"] == ids[2]

    # 8 annotators label 24 items (R = 1) at once: no one is refused a label they were given
    store = Store(db_url, lease_seconds=60)
    pid = store.create_project("busy", aspects=["overall"], labels_per_item=1)
    ids = store.add_tasks(pid, [pair(f"b{i}") for i in range(24)])
    crowd = [store.create_user(f"busy{i}")[0] for i in range(8)]
    for u in crowd:
        store.add_member(pid, u.id)
    project = store.project(pid)
    refused, stored = [], []

    def annotate(user):
        while (task := store.next_task(project, user)) is not None:
            try:
                store.submit(pid, user, task["id"], {"choices": {"overall": "B"}})
                stored.append(task["id"])
            except Conflict:
                refused.append(task["id"])
                return

    threads = [threading.Thread(target=annotate, args=(u,)) for u in crowd]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused == [] and sorted(stored) == ids
    store.dispose()


def test_submit_is_idempotent_validates_and_undo_removes_own_last(store):
    pid = store.create_project("p", aspects=["helpful"], labels_per_item=3)
    t1, t2, rk = store.add_tasks(pid, [pair(), pair("Q2"), {
        "kind": "ranking", "prompt": "R?", "responses": ["a", "b", "c"]}])
    u, _ = store.create_user("u")
    other, _ = store.create_user("other")
    for x in (u, other):
        store.add_member(pid, x.id)
    first, created = store.submit(pid, u, t1, {"choices": {"helpful": "B"}}, "because")
    again, created_again = store.submit(pid, u, t1, {"choices": {"helpful": "B"}})
    assert created and not created_again and again["id"] == first["id"]
    assert store.count_labels(pid) == 1
    with pytest.raises(Conflict, match="undo it first"):
        store.submit(pid, u, t1, {"choices": {"helpful": "A"}})
    for bad, msg in [({"choices": {"helpful": "C"}}, "A, B or tie"),
                     ({"choices": {"nope": "A"}}, "unknown aspect"),
                     ({"choices": {}}, "choices"), ([1], "JSON object")]:
        with pytest.raises(Invalid, match=msg):
            store.submit(pid, u, t2, bad)
    with pytest.raises(Invalid, match="every response index 0..2 once"):
        store.submit(pid, u, rk, {"ranking": [0, 0, 1]})
    store.submit(pid, u, rk, {"ranking": [2, 0, 1]})
    store.submit(pid, other, t2, {"choices": {"helpful": "A"}})
    # undo takes back u's latest (the ranking), never the other annotator's label
    undone = store.undo_last(pid, u)
    assert undone["task_id"] == rk
    assert [lab["task_id"] for lab in store.labels_of_user(pid, u)] == [t1]
    assert [lab["task_id"] for lab in store.labels_of_user(pid, other)] == [t2]
    # every write is attributed and timestamped
    rows = store.project_labels(pid)
    assert {(r["annotator"], r["task_id"]) for r in rows} == {("u", t1), ("other", t2)}
    assert all(r["created_at"] is not None for r in rows)
    assert first["reason"] == "because"


def test_access_rules(store):
    mine = store.create_project("mine")
    theirs = store.create_project("theirs")
    (t_theirs,) = store.add_tasks(theirs, [pair()])
    u, _ = store.create_user("u")
    admin, _ = store.create_user("boss", role="admin")
    store.add_member(mine, u.id)
    assert [p["name"] for p in store.projects_for(u)] == ["mine"]
    assert [p["name"] for p in store.projects_for(admin)] == ["mine", "theirs"]
    with pytest.raises(NotFound):
        store.check_access(theirs, u)
    with pytest.raises(NotFound):
        store.submit(theirs, u, t_theirs, {"choices": {"overall": "A"}})
    with pytest.raises(NotFound):  # a task of another project through one's own project
        store.submit(mine, u, t_theirs, {"choices": {"overall": "A"}})
    with pytest.raises(Forbidden):
        store.resolve(t_theirs, u, {"choices": {"overall": "A"}})
    store.resolve(t_theirs, admin, {"choices": {"overall": "B"}}, "clear case")
    res = store.resolutions_of(theirs)
    assert res[t_theirs]["value"] == {"choices": {"overall": "B"}}
    assert res[t_theirs]["admin"] == "boss"


def test_injection_payloads_are_stored_verbatim(store):
    evil = "'); DROP TABLE labels; -- <script>alert(1)</script>"
    pid = store.create_project(evil, guidelines=evil)
    (tid,) = store.add_tasks(pid, [pair(evil, evil, evil + "2")])
    u, _ = store.create_user(evil)
    store.add_member(pid, u.id)
    store.submit(pid, u, tid, {"choices": {"overall": "tie"}}, evil)
    assert store.project(pid)["name"] == evil
    assert store.task(tid)["prompt"] == evil
    assert store.project_labels(pid)[0]["reason"] == evil
    assert store.user_by_name(evil).id == u.id


def test_edit_and_undo_keep_the_label_history_and_the_audit_log_agrees(store):
    from alignkit.feedback.store import shown_order

    pid = store.create_project("p", aspects=["helpful"], labels_per_item=2)
    t1, rk = store.add_tasks(pid, [pair(), {"kind": "ranking", "prompt": "R?",
                                            "responses": ["a", "b", "c", "d"]}])
    u, _ = store.create_user("u")
    other, _ = store.create_user("other")
    for x in (u, other):
        store.add_member(pid, x.id)
    first, _ = store.submit(pid, u, t1, {"choices": {"helpful": "A"}}, "first thought")
    ranked, _ = store.submit(pid, u, rk, {"ranking": [3, 1, 0, 2]})
    # a ranking label keeps the order its annotator was shown; a pair has none
    assert ranked["shown_order"] == shown_order(rk, u.id, 4)
    assert first["shown_order"] is None
    # an edit changes the label in place and keeps the label as it was
    edited = store.edit(pid, u, t1, {"choices": {"helpful": "B"}}, "second thought")
    assert edited["id"] == first["id"] and edited["value"] == {"choices": {"helpful": "B"}}
    assert store.edit(pid, u, t1, {"choices": {"helpful": "B"}}, "second thought") == edited
    assert {lab["task_id"]: lab["value"] for lab in store.labels_of_user(pid, u)}[t1] == \
        {"choices": {"helpful": "B"}}
    with pytest.raises(NotFound, match="no label of task"):  # nothing of one's own to edit
        store.edit(pid, other, t1, {"choices": {"helpful": "A"}})
    with pytest.raises(Invalid):
        store.edit(pid, u, t1, {"choices": {"helpful": "C"}})
    with pytest.raises(Invalid):  # an edited ranking is checked like a submitted one
        store.edit(pid, u, rk, {"ranking": [0, 0, 1, 2]})
    store.undo_last(pid, u)  # the ranking (the latest submitted)
    store.undo_last(pid, u)  # the edited pair
    assert store.labels_of_user(pid, u) == []
    history = store.label_history_of(pid)
    assert [(h["action"], h["task_id"], h["label_id"], h["annotator"], h["by"])
            for h in history] == [("edit", t1, first["id"], "u", "u"),
                                  ("undo", rk, ranked["id"], "u", "u"),
                                  ("undo", t1, first["id"], "u", "u")]
    assert history[0]["value"] == {"choices": {"helpful": "A"}}
    assert history[0]["reason"] == "first thought"
    assert history[1]["value"] == {"ranking": [3, 1, 0, 2]}
    assert history[1]["shown_order"] == shown_order(rk, u.id, 4)
    assert history[2]["value"] == {"choices": {"helpful": "B"}}
    assert history[2]["reason"] == "second thought"
    assert all(h["at"] is not None and h["labelled_at"] is not None for h in history)
    assert [h["action"] for h in store.label_history_of(pid, task_id=t1)] == ["edit", "undo"]
    assert [h["action"] for h in store.label_history_of(pid, label_id=ranked["id"])] == ["undo"]
    # the audit log tells the same story, in the same order
    log = [(e["action"], e["task_id"], (e["detail"] or {}).get("label_id"))
           for e in store.audit_of(pid) if e["action"] in ("edit", "undo")]
    assert log == [(h["action"], h["task_id"], h["label_id"]) for h in history]
    edit_entry = next(e for e in store.audit_of(pid) if e["action"] == "edit")
    assert edit_entry["detail"]["previous"] == {"choices": {"helpful": "A"}}
    assert edit_entry["detail"]["value"] == {"choices": {"helpful": "B"}}
    # the history is append-only history of one project: another project's is empty
    assert store.label_history_of(store.create_project("q")) == []


def test_each_annotator_sees_a_ranking_in_their_own_order(store):
    from alignkit.feedback.store import shown_order

    assert shown_order(7, 3, 5) == shown_order(7, 3, 5)  # the same on every reload
    assert sorted(shown_order(7, 3, 5)) == list(range(5))
    # over many (task, annotator) pairs, every response is shown first about equally often
    firsts = [shown_order(t, u, 4)[0] for t in range(1, 101) for u in range(1, 21)]
    assert all(350 < firsts.count(i) < 650 for i in range(4)), [firsts.count(i) for i in range(4)]


def test_an_undone_labels_id_is_never_handed_to_a_later_label(store):
    pid = store.create_project("p", aspects=["helpful"], labels_per_item=2)
    tid, = store.add_tasks(pid, [pair()])
    u, _ = store.create_user("u")
    store.add_member(pid, u.id)
    first, _ = store.submit(pid, u, tid, {"choices": {"helpful": "A"}})
    store.undo_last(pid, u)
    second, _ = store.submit(pid, u, tid, {"choices": {"helpful": "B"}})
    assert second["id"] != first["id"]  # SQLite would reuse the highest rowid otherwise
    assert [h["value"] for h in store.label_history_of(pid, label_id=first["id"])] == [
        {"choices": {"helpful": "A"}}]
    assert store.label_history_of(pid, label_id=second["id"]) == []


def test_the_0003_migration_keeps_the_labels_of_a_0002_database(db_url):
    from alembic import command
    from alembic.config import Config
    from pathlib import Path

    import alignkit.feedback.store as store_module

    old = Store(db_url)
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(Path(store_module.__file__).with_name("migrations")))
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    with old.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name, role, created_at) "
                             "VALUES (1, 'u', 'annotator', CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO projects (id, name, guidelines, aspects, "
                             "labels_per_item, al_strategy, created_at) VALUES "
                             "(1, 'p', '', '[\"helpful\"]', 2, 'std', CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO members (project_id, user_id, added_at) "
                             "VALUES (1, 1, CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO tasks (id, project_id, kind, prompt, responses, "
                             "is_gold, created_at) VALUES (1, 1, 'ranking', '\"R\"', "
                             "'[\"a\", \"b\"]', false, CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO labels (id, task_id, user_id, value, created_at) "
                             "VALUES (1, 1, 1, '{\"ranking\": [1, 0]}', CURRENT_TIMESTAMP)")
    old.dispose()
    new = Store(db_url)
    new.upgrade()
    (label,) = new.project_labels(1)
    assert label["value"] == {"ranking": [1, 0]} and label["shown_order"] is None
    u = new.user_by_name("u")
    assert new.undo_last(1, u)["id"] == 1
    assert [h["label_id"] for h in new.label_history_of(1)] == [1]
    new.dispose()
