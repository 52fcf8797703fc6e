"""AI-assisted annotation (a project's ``assist`` and a judge's stored suggestions), on SQLite and
PostgreSQL over real HTTP: which (task, annotator) pairs see the suggestion up-front, that each
label records it, the anchoring report with simulated annotators (one follows a shown suggestion,
one ignores it), ``after`` revealing it only in the answer to a label, the admin dashboard, and
``create-project --judge gold`` storing a suggestion for every task."""

from __future__ import annotations

import random

import pytest
import requests

from alignkit.feedback.simulated import Annotator, SimulatedPanel
from alignkit.feedback.store import Store, assist_shown
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

N_TASKS = 120
JUDGE_ACCURACY = 0.7  # the simulated judge prefers the better response this often


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def simulated_project(store: Store, assist: str, n: int = N_TASKS, seed: int = 0):
    """A pairwise project of ``n`` tasks with hidden gold scores and a noisy judge's suggestion
    (right with probability ``JUDGE_ACCURACY``) stored for each."""
    rng = random.Random(seed)
    pid = store.create_project(f"assist-{assist}", "", ["overall"], 2, assist=assist)
    golds = [(rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(n)]
    ids = store.add_tasks(pid, [{"kind": "pairwise", "prompt": f"prompt {i}",
                                 "responses": [f"a{i}", f"b{i}"]} for i in range(n)])
    gold = dict(zip(ids, golds))
    suggested = {}
    for tid, (ga, gb) in gold.items():
        better = "A" if ga > gb else "B"
        worse = "B" if better == "A" else "A"
        choice = better if rng.random() < JUDGE_ACCURACY else worse
        suggested[tid] = ({"choices": {"overall": choice}}, round(rng.uniform(0.5, 1.0), 3))
    assert store.set_suggestions(pid, "simulated", suggested) == n
    return pid, gold, suggested


def test_anchoring_report_separates_an_anchored_annotator_from_an_independent_one(server):
    """Two simulated annotators (SimulatedPanel, temperature 1: right ~74% of the time on these
    gold gaps) each label all 120 items under ``assist = before``. "anchored" takes the
    suggestion whenever it is shown; "independent" never looks at it.

    Margins: each sees the suggestion on ~60 items (binomial(120, 0.5), sd 5.5; asserted within
    40..80). Without the suggestion, a ~74%-right annotator agrees with a 70%-right judge about
    0.74*0.7 + 0.26*0.3 = 0.60 of the time, with sd sqrt(0.24/60) = 0.063 per side. So the
    anchored annotator's agreement shown is exactly 1 and anchoring ~0.4 (asserted > 0.2, more
    than 3 sd below); the independent one's anchoring is ~0 with sd ~0.09 (asserted |.| < 0.25,
    ~2.8 sd). Everything is seeded, so the figures are fixed; the margins say they are not luck.
    """
    store = Store(server.db_url)
    pid, gold, suggested = simulated_project(store, "before")
    panel = SimulatedPanel([Annotator("anchored"), Annotator("independent")], seed=7)
    tokens, users = {}, {}
    for name in ("anchored", "independent"):
        users[name], tokens[name] = store.create_user(name)
        store.add_member(pid, users[name].id)
    project = store.project(pid)
    shown_count = {}
    for name in ("anchored", "independent"):
        shown_count[name] = 0
        while True:
            r = requests.get(f"{server.url}/api/projects/{pid}/next",
                             headers=bearer(tokens[name]))
            assert r.status_code == 200, r.text
            body = r.json()
            task = body["task"]
            if task is None:
                break
            tid = task["id"]
            expect = assist_shown(project, tid, users[name].id)
            assert (body["suggestion"] is not None) == expect
            if expect:
                shown_count[name] += 1
                sug = body["suggestion"]
                assert sug["choice"] == suggested[tid][0]["choices"]["overall"]
                assert sug["confidence"] == pytest.approx(suggested[tid][1])
            if expect and name == "anchored":
                choice = body["suggestion"]["choice"]
            else:
                a_wins, _ = panel.compare(*gold[tid], annotator=name)
                choice = "A" if a_wins else "B"
            r = requests.post(f"{server.url}/api/projects/{pid}/labels",
                              headers=bearer(tokens[name]),
                              json={"task_id": tid, "value": {"choices": {"overall": choice}}})
            assert r.status_code == 201, r.text
            assert "suggestion" not in r.json()  # "before" reveals nothing after the label
        assert 40 <= shown_count[name] <= 80
    labels = store.project_labels(pid)
    assert len(labels) == 2 * N_TASKS
    for lab in labels:
        assert lab["assisted"] == assist_shown(project, lab["task_id"], lab["user_id"])

    r = requests.get(f"{server.url}/api/admin/projects/{pid}/report", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    assist = r.json()["assist"]
    print("assist report:", assist)
    assert assist["mode"] == "before" and assist["suggested_items"] == N_TASKS
    assert assist["labels"] == 2 * N_TASKS and assist["judges"] == ["simulated"]
    anchored = assist["per_annotator"]["anchored"]
    independent = assist["per_annotator"]["independent"]
    assert anchored["labels_shown"] == shown_count["anchored"]
    assert anchored["labels_shown"] + anchored["labels_not_shown"] == N_TASKS
    assert anchored["agreement_shown"] == 1.0
    assert 0.4 < anchored["agreement_not_shown"] < 0.8
    assert anchored["anchoring"] > 0.2
    assert abs(independent["anchoring"]) < 0.25
    assert 0.4 < independent["agreement_shown"] < 0.8
    assert 0.4 < independent["agreement_not_shown"] < 0.8
    # overall agreement is the label-weighted mean of all four cells
    cells = [(a["labels_shown"], a["agreement_shown"]) for a in (anchored, independent)] + \
        [(a["labels_not_shown"], a["agreement_not_shown"]) for a in (anchored, independent)]
    assert assist["agreement"] == pytest.approx(sum(n * x for n, x in cells) / (2 * N_TASKS))

    # the dashboard shows the same figures
    page = requests.get(f"{server.url}/admin/projects/{pid}", headers=bearer(ADMIN_TOKEN)).text
    assert 'id="assist-annotators"' in page and 'data-annotator="anchored"' in page
    assert f'{anchored["anchoring"]:.3f}' in page and f'{independent["anchoring"]:.3f}' in page
    store.dispose()


def test_after_reveals_the_suggestion_only_in_the_answer_to_a_label(server):
    store = Store(server.db_url)
    pid, _, suggested = simulated_project(store, "after", n=4)
    user, token = store.create_user("ann")
    store.add_member(pid, user.id)
    body = requests.get(f"{server.url}/api/projects/{pid}/next", headers=bearer(token)).json()
    assert body["suggestion"] is None
    tid = body["task"]["id"]
    page = requests.get(f"{server.url}/projects/{pid}", headers=bearer(token)).text
    assert 'id="suggestion"' not in page
    r = requests.post(f"{server.url}/api/projects/{pid}/labels", headers=bearer(token),
                      json={"task_id": tid, "value": {"choices": {"overall": "tie"}}})
    assert r.status_code == 201
    assert r.json()["suggestion"]["choice"] == suggested[tid][0]["choices"]["overall"]
    (lab,) = store.project_labels(pid)
    assert lab["assisted"] is False
    # an unknown mode is refused; a project's mode can be changed
    with pytest.raises(Exception, match="assist must be one of"):
        store.create_project("bad", assist="sometimes")
    store.update_project(pid, assist="off")
    r = requests.post(f"{server.url}/api/projects/{pid}/labels", headers=bearer(token),
                      json={"task_id": body["task"]["id"] + 1,
                            "value": {"choices": {"overall": "A"}}})
    assert r.status_code == 201 and "suggestion" not in r.json()
    # a backup keeps the mode, the suggestions and what each label was shown
    from alignkit.feedback.backup import backup_project, restore_project

    copy = restore_project(store, backup_project(store, pid), name="copy")
    assert store.project(copy)["assist"] == "off"
    restored = sorted(s["value"]["choices"]["overall"] for s in store.suggestions_of(copy).values())
    assert restored == sorted(v["choices"]["overall"] for v, _ in suggested.values())
    assert [lab["assisted"] for lab in store.project_labels(copy)] == [False, False]
    store.dispose()


def test_create_project_with_judge_gold_stores_a_suggestion_per_task(tmp_path, capsys):
    """``alignkit annotate create-project --update --judge gold`` (the gold judge needs no model):
    a pair gets the response the gold scorer prefers, a ranking its order, gold items none."""
    from alignkit.cli import main
    from alignkit.judges.gold import GoldScorer

    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert main(["annotate", "create-project", "--db", db, "--name", "p", "--assist",
                 "before"]) == 0
    store = Store(db)
    pid = store.project_by_name("p")["id"]
    good = "Paris is the capital of France. It has been the capital for centuries."
    bad = "idk"
    pair, rank, hidden = store.add_tasks(pid, [
        {"kind": "pairwise", "prompt": "What is the capital of France?",
         "responses": [bad, good]},
        {"kind": "ranking", "prompt": "What is the capital of France?",
         "responses": [bad, good, "It is Paris."]},
        {"kind": "pairwise", "prompt": "Say hi", "responses": ["hi", "Hello! How can I help?"],
         "is_gold": True, "gold": {"choices": {"overall": "B"}}}])
    capsys.readouterr()
    assert main(["annotate", "create-project", "--db", db, "--name", "p", "--update",
                 "--judge", "gold"]) == 0
    assert "stored gold's suggestion for 2 task(s) (assist: before)" in capsys.readouterr().out
    sugs = store.suggestions_of(pid)
    assert set(sugs) == {pair, rank}
    scores = GoldScorer().score(["What is the capital of France?"] * 3,
                                [bad, good, "It is Paris."])
    expect = sorted(range(3), key=lambda i: -scores[i])
    assert sugs[pair]["value"] == {"choices": {"overall": "B" if scores[1] > scores[0] else "A"}}
    assert sugs[rank]["value"]["ranking"] == expect
    assert all(0.5 <= s["confidence"] <= 1.0 and s["judge"] == "gold" for s in sugs.values())
    # a typo in the spec fails before anything changes
    assert main(["annotate", "create-project", "--db", db, "--name", "p", "--update",
                 "--judge", "gpt"]) != 0
    store.dispose()


def test_a_ranking_suggestion_names_the_positions_the_annotator_sees():
    """Each annotator sees a ranking's responses in their own order, so the suggested order is
    given as the positions on their page, not as the stored (canonical) indices."""
    from alignkit.feedback.app import public_suggestion
    from alignkit.feedback.store import shown_order

    task = {"id": 17, "kind": "ranking", "responses": ["r0", "r1", "r2", "r3"]}
    stored = {"value": {"ranking": [2, 0, 3, 1]}, "confidence": 0.75}
    for user_id in (1, 2, 3):
        order = shown_order(17, user_id, 4)  # order[position] = canonical index
        shown = public_suggestion(stored, task, user_id)
        assert [order[p - 1] for p in shown["ranking"]] == [2, 0, 3, 1]
        assert shown["confidence"] == 0.75
    assert public_suggestion(None, task, 1) is None


def test_admin_forms_set_assist_at_creation_and_on_the_dashboard(server):
    url = server.url
    s = requests.Session()
    s.post(f"{url}/login", data={"token": ADMIN_TOKEN}, timeout=30)
    r = s.post(f"{url}/admin/projects", data={"name": "form", "assist": "after"},
               headers={"Origin": url}, timeout=30)
    assert r.status_code == 200 and r.url.endswith("/admin/projects/1")
    assert '<b id="assist-mode">after</b>' in r.text
    store = Store(server.db_url)
    assert store.project(1)["assist"] == "after"
    other = f"http://127.0.0.1:{server.port + 1}"
    r = s.post(f"{url}/admin/projects/1/assist", data={"assist": "off"},
               headers={"Origin": other}, timeout=30)
    assert r.status_code == 403 and store.project(1)["assist"] == "after"
    r = s.post(f"{url}/admin/projects/1/assist", data={"assist": "before"},
               headers={"Origin": url}, timeout=30)
    assert r.status_code == 200 and '<b id="assist-mode">before</b>' in r.text
    assert store.project(1)["assist"] == "before"
    r = s.post(f"{url}/admin/projects/1/assist", data={"assist": "always"},
               headers={"Origin": url}, timeout=30)
    assert r.status_code == 422 and 'id="assist-error"' in r.text
    assert store.project(1)["assist"] == "before"
    assert [e["action"] for e in store.audit_of(1)][-1] == "set_assist"
    r = s.post(f"{url}/admin/projects", data={"name": "bad", "assist": "sometimes"},
               headers={"Origin": url}, timeout=30)
    assert r.status_code == 422 and "assist must be one of" in r.text
    store.dispose()


def test_create_project_with_a_reward_ensemble_judge(tmp_path, tiny_model_dir, capsys):
    """``--judge reward:PATH``: a reward ensemble suggests, for each pair, the response it scores
    higher, with the probability its combined rewards give (sigmoid of the difference)."""
    import math

    from alignkit.cli import main
    from alignkit.models.reward import RewardModel
    from tests.conftest import run_cli
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(tmp_path / "rm"), "--ensemble", "2", "--max-steps", "4", "--lr", "0.003",
                   "--eval-fraction", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert main(["annotate", "create-project", "--db", db, "--name", "p", "--assist",
                 "after"]) == 0
    store = Store(db)
    pid = store.project_by_name("p")["id"]
    pairs = [("Why is the sky blue?", "Sunlight scatters off air molecules, blue the most.",
              "why is the sky blue why is the sky blue"),
             ("Name a fruit.", "Apple.", "An apple is a fruit that grows on trees.")]
    ids = store.add_tasks(pid, [{"kind": "pairwise", "prompt": p, "responses": [a, b]}
                                for p, a, b in pairs])
    rm = str(tmp_path / "rm" / "final")
    assert main(["annotate", "create-project", "--db", db, "--name", "p", "--update",
                 "--judge", f"reward:{rm}"]) == 0
    sugs = store.suggestions_of(pid)
    assert set(sugs) == set(ids)
    model = RewardModel.load(rm)
    for tid, (p, a, b) in zip(ids, pairs):
        ra, rb = model.score([p, p], [a, b]).combined.tolist()
        assert sugs[tid]["value"] == {"choices": {"overall": "A" if ra > rb else "B"}}
        assert sugs[tid]["confidence"] == pytest.approx(1 / (1 + math.exp(-abs(ra - rb))),
                                                        abs=0.02)
    store.dispose()
