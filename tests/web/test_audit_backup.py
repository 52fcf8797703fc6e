"""The append-only audit log (who made, labelled, undid -- keeping the whole label --, resolved,
exported, when) and ``alignkit annotate backup`` / ``restore``: a project backed up from one
database and restored into another (SQLite <-> PostgreSQL) backs up again to the same file --
nothing lost -- and a damaged or clashing backup restores nothing."""

from __future__ import annotations

import json

import pytest
import requests

from alignkit.feedback.store import Store
from tests.conftest import run_cli
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web


def busy_project(store: Store) -> int:
    """A project with tasks, two annotators' labels, an undo, an edit, a reason and a
    resolution."""
    admin = store.ensure_admin(ADMIN_TOKEN)
    pid = store.create_project("alpha", "# Be kind", ["helpful", "harmless"], 2,
                               created_by=admin.id)
    ids = store.add_tasks(pid, [
        {"kind": "pairwise", "prompt": "P1 \u00e9\U0001f600", "responses": ["a", "b"],
         "meta": {"source": "t.jsonl:1"}},
        {"kind": "ranking", "prompt": [{"role": "user", "content": "R?"}],
         "responses": ["x", "y", "z"]},
        {"kind": "pairwise", "prompt": "gold", "responses": ["good", "bad"],
         "gold": {"choices": {"helpful": "A"}}}], created_by=admin.id)
    people = [store.create_user(f"ann{i}", password=f"passphrase number {i}")[0]
              for i in range(2)]
    for u in people:
        store.add_member(pid, u.id)
    both = {"choices": {"helpful": "A", "harmless": "tie"}}
    other = {"choices": {"helpful": "B", "harmless": "tie"}}
    store.submit(pid, people[0], ids[0], both, "clearer")
    store.submit(pid, people[1], ids[0], other)
    store.submit(pid, people[0], ids[1], {"ranking": [2, 0, 1]})
    store.undo_last(pid, people[0])  # the ranking, taken back
    store.submit(pid, people[0], ids[1], {"ranking": [0, 2, 1]})
    store.edit(pid, people[1], ids[0], both, "on second thought")
    store.resolve(ids[0], admin, both, "A is clearer")
    return pid


def test_the_audit_log_records_who_did_what_and_keeps_undone_labels(server):
    store = Store(server.db_url)
    pid = busy_project(store)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    export = requests.get(f"{server.url}/api/admin/projects/{pid}/export?kind=pairs",
                          headers=auth, timeout=30)
    assert export.status_code == 200
    log = requests.get(f"{server.url}/api/admin/projects/{pid}/audit", headers=auth).json()
    actions = [(e["action"], e["user"]) for e in log]
    assert actions == [("create_project", "admin"), ("add_tasks", "admin"),
                       ("add_member", None), ("add_member", None),
                       ("label", "ann0"), ("label", "ann1"), ("label", "ann0"),
                       ("undo", "ann0"), ("label", "ann0"), ("edit", "ann1"),
                       ("resolve", "admin"),
                       ("export", "admin")]
    undo = next(e for e in log if e["action"] == "undo")
    assert undo["detail"]["value"] == {"ranking": [2, 0, 1]}  # the undone label, kept
    assert undo["detail"]["labelled_at"] and undo["task_id"] is not None
    assert log[-1]["detail"] == {"kind": "pairs", "mode": "aggregated", "format": "jsonl",
                                 "records": len(export.text.splitlines())}
    # annotators do not read it
    _, token = store.create_user("nosy")
    assert requests.get(f"{server.url}/api/admin/projects/{pid}/audit",
                        headers={"Authorization": f"Bearer {token}"}).status_code == 403
    store.dispose()


def comparable(dump: dict) -> dict:
    """A backup without the entries its own backup and restore added."""
    return {**dump, "audit": [e for e in dump["audit"] if e["action"] not in ("backup",
                                                                              "restore")]}


def test_backup_restores_into_another_database_whole(postgres_cluster, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'a.db'}"
    store = Store(sqlite_url)
    store.upgrade()
    busy_project(store)
    store.dispose()
    backup = tmp_path / "alpha.json"
    proc = run_cli("annotate", "backup", "--db", sqlite_url, "--project", "alpha", "--output",
                   str(backup))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 task(s), 3 label(s), 1 resolution(s)" in proc.stdout  # 4 given, 1 undone

    pg_url = postgres_cluster.new_database()
    proc = run_cli("annotate", "restore", "--db", pg_url, "--input", str(backup))
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = tmp_path / "again.json"
    assert run_cli("annotate", "backup", "--db", pg_url, "--project", "alpha", "--output",
                   str(again)).returncode == 0
    first, second = json.loads(backup.read_text()), json.loads(again.read_text())
    assert comparable(second) == comparable(first)
    # the label history and the order a ranking was shown in travel with it
    assert [(h["action"], h["user"], h["label"], h["value"]) for h in first["label_history"]] == [
        ("undo", "ann0", None, {"ranking": [2, 0, 1]}),
        ("edit", "ann1", 1, {"choices": {"helpful": "B", "harmless": "tie"}})]
    assert [lab["shown_order"] is not None for lab in first["labels"]] == [False, False, True]
    # (a backup's own entry is written after it is taken: the next one shows it)
    assert [e["action"] for e in second["audit"]][-2:] == ["resolve", "restore"]
    # the people sign in on the restored database with their old passwords and tokens
    pg = Store(pg_url)
    assert pg.user_by_password("ann1", "passphrase number 1").name == "ann1"
    assert pg.user_by_token(ADMIN_TOKEN).name == "admin"
    restored = pg.project_by_name("alpha")["id"]
    history = pg.label_history_of(restored)
    edited = next(lab for lab in pg.project_labels(restored) if lab["annotator"] == "ann1")
    assert [(h["action"], h["by"], h["label_id"]) for h in history] == [
        ("undo", "ann0", None), ("edit", "ann1", edited["id"])]

    # restoring again under the same name clashes and writes nothing; under another, it lands
    proc = run_cli("annotate", "restore", "--db", pg_url, "--input", str(backup))
    assert proc.returncode == 2 and "project 'alpha' already exists" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("annotate", "restore", "--db", pg_url, "--input", str(backup),
                   "--project", "alpha-copy")
    assert proc.returncode == 0
    assert len(pg.tasks_of(pg.project_by_name("alpha-copy")["id"])) == 3
    # a damaged backup restores nothing
    damaged = tmp_path / "damaged.json"
    broken = json.loads(backup.read_text())
    broken["labels"][-1]["task"] = 99
    damaged.write_text(json.dumps(broken))
    proc = run_cli("annotate", "restore", "--db", pg_url, "--input", str(damaged),
                   "--project", "alpha-broken")
    assert proc.returncode == 2 and "damaged or incomplete" in proc.stderr
    with pytest.raises(Exception, match="no project named 'alpha-broken'"):
        pg.project_by_name("alpha-broken")
    pg.dispose()
