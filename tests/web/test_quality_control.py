"""Annotator quality control over real HTTP (uvicorn subprocess) on SQLite and on PostgreSQL:
simulated annotators (``alignkit.feedback.simulated``) answer from the gold scores of the items
they are handed, one of them careless. The calibration gate keeps the careless one's labels out
of agreement and export, attention checks arrive hidden among the work at the project's rate,
and the quality scores become the loss weights ``alignkit reward`` picks up beside the export."""

from __future__ import annotations

import json
import random

import pytest
import requests

from alignkit.feedback.simulated import Annotator, SimulatedPanel
from alignkit.feedback.store import Store
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

CALIBRATION, THRESHOLD, RATE = 10, 0.8, 0.15
N_GOLD, N_WORK = 26, 48


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def qc(server):
    """A quality-controlled project of pairwise items with hidden gold scores per response;
    five annotators: three careful, one sloppy (30 % random), one careless (all random)."""
    store = Store(server.db_url)
    pid = store.create_project("qc", "Pick the better answer.", ["overall"], 2,
                               calibration_items=CALIBRATION, calibration_accuracy=THRESHOLD,
                               attention_rate=RATE)
    rng = random.Random(7)
    scores: dict[str, tuple[float, float]] = {}
    items = []
    for i in range(N_GOLD + N_WORK):
        gold = i < N_GOLD
        if gold:  # a clear answer: a careful annotator gets it right
            ga = rng.uniform(-1, 1)
            gb = ga + rng.choice([-1, 1]) * rng.uniform(1.5, 2.5)
        else:
            ga, gb = rng.gauss(0, 1), rng.gauss(0, 1)
        prompt = f"question {i}"
        scores[prompt] = (ga, gb)
        item = {"kind": "pairwise", "prompt": prompt, "responses": [f"answer {i}a",
                                                                    f"answer {i}b"]}
        if gold:
            item["gold"] = {"choices": {"overall": "A" if ga > gb else "B"}}
        items.append(item)
    rng.shuffle(items)  # gold items spread through the ids, as an upload would have them
    ids = store.add_tasks(pid, items)
    panel = SimulatedPanel([Annotator("careful-0", 0.3), Annotator("careful-1", 0.3),
                            Annotator("careful-2", 0.3),
                            Annotator("sloppy", 0.3, careless_rate=0.3),
                            Annotator("careless", 0.3, careless_rate=1.0)],
                           seed=3, gold_scale=2.0)
    tokens = {}
    for a in panel.annotators:
        user, tokens[a.id] = store.create_user(a.id)
        store.add_member(pid, user.id)
    gold_ids = {tid for tid, item in zip(ids, items) if "gold" in item}
    yield {"store": store, "pid": pid, "panel": panel, "scores": scores, "tokens": tokens,
           "gold_ids": gold_ids, "work_ids": set(ids) - gold_ids, "url": server.url}
    store.dispose()


def answer(w, who: str, task: dict) -> dict:
    """The simulated annotator's label of a task as the API showed it (prompt text only)."""
    ga, gb = w["scores"][task["prompt"]]
    a_wins, _ = w["panel"].compare(ga, gb, who)
    return {"choices": {aspect: "A" if a_wins else "B" for aspect in task["aspects"]}}


def test_calibration_gates_the_careless_annotator_and_weights_feed_the_reward(
        qc, tmp_path, tiny_model_dir):
    w, url = qc, qc["url"]
    api = f"{url}/api/projects/{w['pid']}"
    admin = bearer(ADMIN_TOKEN)
    names = [a.id for a in w["panel"].annotators]
    # before calibration: real work is refused, and the queue holds gold items only
    some_work = min(w["work_ids"])
    r = requests.post(f"{api}/labels", headers=bearer(w["tokens"]["careful-0"]),
                      json={"task_id": some_work, "value": {"choices": {"overall": "A"}}})
    assert r.status_code == 403 and "calibration" in r.json()["error"]
    first = requests.get(f"{api}/next", headers=bearer(w["tokens"]["careful-0"])).json()
    assert first["progress"]["calibration"] == {"status": "calibrating", "calibration_done": 0,
                                                "calibration_items": CALIBRATION}

    handed: dict[str, list[int]] = {n: [] for n in names}
    shown_keys = set()
    active = list(names)
    while active:  # round robin: every annotator takes their next item in turn
        for who in list(active):
            h = bearer(w["tokens"][who])
            body = requests.get(f"{api}/next", headers=h, timeout=30).json()
            task = body["task"]
            if task is None:
                active.remove(who)
                continue
            shown_keys.add(tuple(sorted(task)))
            # nothing in the progress tells an attention check from work
            assert set(body["progress"]) == {"done", "left", "total", "calibration"}
            handed[who].append(task["id"])
            r = requests.post(f"{api}/labels", headers=h, timeout=30,
                              json={"task_id": task["id"], "value": answer(w, who, task)})
            assert r.status_code == 201, r.text

    # a gold item looks like any other: the same fields
    assert shown_keys == {("aspects", "id", "kind", "order", "prompt", "responses")}
    report = requests.get(f"{url}/api/admin/projects/{w['pid']}/report", headers=admin).json()
    per = report["per_annotator"]
    print("\nper annotator:", json.dumps({n: {k: per[n][k] for k in (
        "status", "calibration_accuracy", "attention_checks", "attention_accuracy",
        "agreement_with_others", "quality", "weight")} for n in names}, indent=1))
    for who in names:
        # the first N items anyone is handed are gold: the calibration
        assert set(handed[who][:CALIBRATION]) <= w["gold_ids"], who
    assert per["careless"]["status"] == "failed_calibration"
    assert per["careless"]["counted"] is False and per["careless"]["weight"] == 0
    assert len(handed["careless"]) == CALIBRATION  # nothing after the failed calibration
    r = requests.post(f"{api}/labels", headers=bearer(w["tokens"]["careless"]),
                      json={"task_id": some_work, "value": {"choices": {"overall": "A"}}})
    assert r.status_code == 403
    passed = [n for n in names if n != "careless"]
    for who in passed:
        assert per[who]["status"] == "passed", (who, per[who])
        after = handed[who][CALIBRATION:]
        checks = [t for t in after if t in w["gold_ids"]]
        assert per[who]["attention_checks"] == len(checks)
        # attention checks come mixed into the work at about the rate, not in a block
        assert 1 <= len(checks) <= 3 * RATE * len(after) + 1, (who, len(checks), len(after))
        work_at = [i for i, t in enumerate(after) if t not in w["gold_ids"]]
        assert min(after.index(t) for t in checks) < max(work_at), (who, after)
        assert per[who]["attention_accuracy"] is not None
    # every work item got its R labels from the annotators who passed
    assert report["complete_items"] == N_WORK
    assert report["labels_not_counted"] == CALIBRATION
    # the sloppy annotator's labels count, at a lower weight than every careful one
    assert per["sloppy"]["quality"] < min(per[f"careful-{i}"]["quality"] for i in range(3))
    assert 0 < per["sloppy"]["weight"] < min(per[f"careful-{i}"]["weight"] for i in range(3))
    assert max(per[n]["weight"] for n in passed) == 1.0
    weights = requests.get(f"{url}/api/admin/projects/{w['pid']}/export?kind=weights",
                           headers=admin).json()
    assert weights == {n: per[n]["weight"] for n in sorted(names)}
    pairs = [json.loads(x) for x in requests.get(
        f"{url}/api/admin/projects/{w['pid']}/export?kind=pairs&mode=labels",
        headers=admin).text.splitlines()]
    assert len(pairs) == 2 * N_WORK and "careless" not in {p["annotator"] for p in pairs}
    # the dashboard shows each annotator's calibration state
    page = requests.get(f"{url}/admin/projects/{w['pid']}", headers=admin).text
    assert 'data-status="failed_calibration"' in page and "failed calibration" in page

    # the CLI export writes the weights beside the labels; alignkit reward reads them from
    # there with no flag, and they reach each comparison's loss weight
    from alignkit.cli import run
    from alignkit.config import AnnotateExportConfig
    from alignkit.data.preferences import annotator_weights_beside, load_preference_groups

    out = tmp_path / "export"
    counts = run(AnnotateExportConfig(db=w["store"].url.replace("+psycopg", ""),
                                      project="qc", output=str(out), mode="labels"))
    assert counts["pairs"] == 2 * N_WORK and counts["labels_not_counted"] == CALIBRATION
    assert json.loads((out / "annotator_weights.json").read_text()) == weights
    got = annotator_weights_beside(str(out / "pairs.jsonl"))
    assert got == weights

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    groups, _ = load_preference_groups(str(out / "pairs.jsonl"), tokenizer, "causal",
                                       annotator_weights=got)
    seen = {(c.annotator, c.weight) for g in groups for c in g.pairs}
    assert seen == {(n, weights[n]) for n in passed}


def test_the_0004_migration_gives_existing_projects_no_gate(db_url):
    """A project made before quality control keeps serving gold to everyone, every label
    counting; the settings can be set on it afterwards (not N: that would re-sort labels)."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import alignkit.feedback.store as store_module
    from alignkit.feedback.store import Invalid

    old = Store(db_url)
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(Path(store_module.__file__).with_name("migrations")))
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    with old.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO projects (id, name, guidelines, aspects, "
                             "labels_per_item, al_strategy, created_at) VALUES "
                             "(1, 'p', '', '[\"overall\"]', 2, 'std', CURRENT_TIMESTAMP)")
    old.dispose()
    new = Store(db_url)
    new.upgrade()
    project = new.project(1)
    assert (project["calibration_items"], project["calibration_accuracy"],
            project["attention_rate"]) == (0, 0.8, 0.0)
    new.add_tasks(1, [{"kind": "pairwise", "prompt": "g", "responses": ["a", "b"],
                       "gold": {"choices": {"overall": "A"}}}])
    user, _ = new.create_user("u")
    new.add_member(1, user.id)
    assert new.next_task(new.project(1), user)["is_gold"]  # gold served as before
    assert "calibration" not in new.progress(new.project(1), user)
    new.update_project(1, attention_rate=0.2, calibration_accuracy=0.9)
    assert new.project(1)["attention_rate"] == 0.2
    with pytest.raises(Invalid):
        new.update_project(1, calibration_items=3)
    with pytest.raises(Invalid):
        new.update_project(1, attention_rate=1.5)
    new.dispose()


def test_calibration_answers_are_final_once_decided_and_settings_survive_backup(db_url):
    from alignkit.feedback.backup import backup_project, restore_project
    from alignkit.feedback.store import Conflict, Forbidden

    store = Store(db_url)
    store.upgrade()
    pid = store.create_project("p", "", ["overall"], 1, calibration_items=2,
                               calibration_accuracy=1.0, attention_rate=0.5)
    gold = store.add_tasks(pid, [{"kind": "pairwise", "prompt": f"g{i}", "responses": ["a", "b"],
                                  "gold": {"choices": {"overall": "A"}}} for i in range(3)])
    (work,) = store.add_tasks(pid, [{"kind": "pairwise", "prompt": "w", "responses": ["a", "b"]}])
    user, _ = store.create_user("u")
    store.add_member(pid, user.id)
    project = store.project(pid)
    A, B = {"choices": {"overall": "A"}}, {"choices": {"overall": "B"}}
    store.submit(pid, user, gold[0], A)
    assert store.undo_last(pid, user)["task_id"] == gold[0]  # undecided: may be taken back
    store.submit(pid, user, gold[0], A)
    with pytest.raises(Forbidden):
        store.submit(pid, user, work, A)  # real work waits for the calibration
    store.submit(pid, user, gold[1], B)  # one wrong of two: fails at accuracy 1.0
    assert store.quality_state(project, user)["status"] == "failed_calibration"
    with pytest.raises(Conflict):
        store.undo_last(pid, user)
    with pytest.raises(Conflict):
        store.edit(pid, user, gold[1], A)
    assert store.submit(pid, user, gold[1], B)[1] is False  # a resent label is still idempotent
    assert store.next_task(project, user) is None
    with pytest.raises(Forbidden):
        store.submit(pid, user, gold[2], A)
    restored = restore_project(store, backup_project(store, pid), name="p2")
    again = store.project(restored)
    assert (again["calibration_items"], again["calibration_accuracy"],
            again["attention_rate"]) == (2, 1.0, 0.5)
    store.dispose()


def test_create_project_sets_the_quality_settings_and_update_keeps_what_it_is_not_given(
        db_url):
    from alignkit.cli import main

    args = ["annotate", "create-project", "--db", db_url, "--name", "c"]
    assert main([*args, "--calibration-items", "3", "--calibration-accuracy", "0.7",
                 "--attention-rate", "0.1"]) == 0
    assert main([*args, "--update", "--attention-rate", "0.2"]) == 0
    store = Store(db_url)
    p = store.project_by_name("c")
    assert (p["calibration_items"], p["calibration_accuracy"], p["attention_rate"]) == \
        (3, 0.7, 0.2)
    store.dispose()
