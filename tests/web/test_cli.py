"""``alignkit annotate`` verbs as subprocesses on tiny models: projects and users, tasks sampled
from a policy or uploaded (with hidden gold items and file:line errors), gold accuracy per
annotator, export that ``alignkit reward`` trains on, and active learning with a reward
ensemble (queue order by member disagreement)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from alignkit.feedback.quality import project_report
from alignkit.feedback.store import Store
from tests.conftest import run_cli

pytestmark = pytest.mark.web


@pytest.fixture
def cli_ok(capsys):
    """``alignkit annotate ...`` through the real CLI entry point, in-process (each verb as a
    subprocess would pay the torch import again; the error-path checks below use subprocesses)."""
    from alignkit.cli import main

    def run(*args):
        capsys.readouterr()
        code = main(["annotate", *args])
        captured = capsys.readouterr()
        assert code == 0, captured.err[-3000:]
        return captured.out

    return run


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def reward_ensemble(tiny_model_dir, tmp_path_factory):
    """A tiny 2-member reward ensemble trained in-process for a few steps."""
    from alignkit.config import RewardConfig
    from alignkit.data.readers import read_records
    from alignkit.cli import run as reward_main

    root = tmp_path_factory.mktemp("rm")
    recs = [r.fields for r in read_records("demo")][:40]
    prefs = write_jsonl(root / "prefs.jsonl", [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["prompt"]} for r in recs])
    reward_main(RewardConfig(model=str(tiny_model_dir), data=str(prefs), output=str(root / "rm"),
                             ensemble=2, max_steps=4, lr=3e-3, eval_fraction=0.0,
                             progress=False, save_every=0))
    return root / "rm" / "final"


def test_cli_tasks_gold_export_reward_and_active_learning(tiny_model_dir, reward_ensemble,
                                                          tmp_path, cli_ok):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    guide = tmp_path / "guide.md"
    guide.write_text("# Guidelines\nPrefer complete, friendly answers.")
    out = cli_ok("create-project", "--db", db, "--name", "demo", "--guidelines", str(guide),
                 "--labels-per-item", "2")
    assert "project 'demo' created" in out
    tokens = {}
    for name in ("ann0", "ann1"):
        out = cli_ok("add-user", "--db", db, "--name", name, "--projects", "demo")
        tokens[name] = re.search(r"token \(shown once\): (\S+)", out).group(1)
    # prompts only -> K = 2 candidates sampled from the tiny policy (pairwise tasks)
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Tell me about topic {i}."} for i in range(4)])
    out = cli_ok("add-tasks", "--db", db, "--project", "demo", "--data", str(prompts),
                 "--model", str(tiny_model_dir), "--num-responses", "2", "--max-new-tokens", "8")
    assert "added 4 task(s) to 'demo' (4 pairwise, 0 ranking, 0 hidden gold)" in out
    # uploads: a pair, a gold pair, a ranking to label, a gold ranking
    uploads = write_jsonl(tmp_path / "uploads.jsonl", [
        {"prompt": "Hi", "chosen": "Hello, nice to meet you!", "rejected": "What."},
        {"prompt": "Gold pair", "chosen": "Good answer.", "rejected": "Bad.", "gold": True},
        {"prompt": "Rank", "responses": ["x", "y", "z"]},
        {"prompt": "Gold rank", "responses": ["best", "mid", "worst"], "ranking": [0, 1, 2],
         "gold": True}])
    out = cli_ok("add-tasks", "--db", db, "--project", "demo", "--data", str(uploads))
    assert "added 4 task(s) to 'demo' (2 pairwise, 2 ranking, 2 hidden gold)" in out
    # bad records: every problem with file:line, nothing added
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "chosen": "a", "rejected": "a"},
        {"prompt": "no model for me"},
        {"prompt": "g", "responses": ["a", "b"], "gold": True},
        {"prompt": "r", "responses": ["a", "b"], "ranking": [0, 0]}])
    proc = run_cli("annotate", "add-tasks", "--db", db, "--project", "demo", "--data", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:1:" in proc.stderr and "identical" in proc.stderr
    assert f"{bad}:3:" in proc.stderr and 'gold item needs its "ranking"' in proc.stderr
    assert f"{bad}:4:" in proc.stderr and "permutation" in proc.stderr
    proc = run_cli("annotate", "add-tasks", "--db", db, "--project", "nope", "--data", str(bad))
    assert proc.returncode == 2 and "no project named 'nope'" in proc.stderr
    proc = run_cli("annotate", "serve", "--db", "postgresql://bob:hunter2@127.0.0.1:1/x")
    assert proc.returncode == 2 and "cannot open the database" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr

    store = Store(db)
    tasks = store.tasks_of(1)
    assert len(tasks) == 8
    sampled = [t for t in tasks if t["meta"].get("sampled_from")]
    assert len(sampled) == 4 and all(len(t["responses"]) == 2 for t in sampled)
    gold_pair = next(t for t in tasks if t["prompt"] == "Gold pair")
    gold_rank = next(t for t in tasks if t["prompt"] == "Gold rank")
    assert gold_pair["is_gold"] and gold_rank["gold"] == {"ranking": [0, 1, 2]}
    # the gold answer follows the shown (shuffled) order: "Good answer." is the better one
    better = "A" if gold_pair["responses"][0] == "Good answer." else "B"
    assert gold_pair["gold"] == {"choices": {"overall": better}}
    worse = "B" if better == "A" else "A"

    # ann0 answers gold right, ann1 wrong (pair) and half right (ranking: [1, 0, 2] orders
    # 2 of 3 pairs as gold does)
    ann0, ann1 = store.user_by_name("ann0"), store.user_by_name("ann1")
    for t in tasks:
        if t["kind"] == "pairwise":
            v0 = {"choices": {"overall": better if t["is_gold"] else "A"}}
            v1 = {"choices": {"overall": worse if t["is_gold"] else "A"}}
        else:
            v0, v1 = {"ranking": [0, 1, 2]}, {"ranking": [1, 0, 2] if t["is_gold"] else [0, 1, 2]}
        store.submit(1, ann0, t["id"], v0)
        store.submit(1, ann1, t["id"], v1)
    rep = project_report(store, 1)
    assert rep["per_annotator"]["ann0"]["gold_accuracy"] == 1.0
    assert rep["per_annotator"]["ann1"]["gold_accuracy"] == pytest.approx((0 + 2 / 3) / 2)
    assert rep["per_annotator"]["ann0"]["gold_items"] == 2

    # export -> pairs and rankings (README "Data"), then a tiny `alignkit reward` trains on them
    export_dir = tmp_path / "export"
    out = cli_ok("export", "--db", db, "--project", "demo", "--output", str(export_dir))
    pairs = [json.loads(x) for x in (export_dir / "pairs.jsonl").read_text().splitlines()]
    rankings = [json.loads(x) for x in (export_dir / "rankings.jsonl").read_text().splitlines()]
    assert len(pairs) == 5 and len(rankings) == 1  # gold items left out
    assert all(p["annotators"] == ["ann0", "ann1"] and p["agreement"] == 1.0 for p in pairs)
    report = json.loads((export_dir / "agreement.json").read_text())
    assert report["export"]["skipped_gold"] == 2 and report["labels"] == 16
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data",
                   str(export_dir / "pairs.jsonl"), "--output", str(tmp_path / "rm2"),
                   "--max-steps", "2", "--eval-fraction", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rm2" / "final").is_dir()
    cli_ok("export", "--db", db, "--project", "demo", "--output", str(tmp_path / "per-label"),
           "--mode", "labels")
    per_label = [json.loads(x) for x in
                 (tmp_path / "per-label" / "pairs.jsonl").read_text().splitlines()]
    assert sorted(p["annotator"] for p in per_label) == ["ann0"] * 5 + ["ann1"] * 5

    # active learning: attach the ensemble; queue order = member disagreement on the margin
    store.dispose()
    cli_ok("create-project", "--db", db, "--name", "fresh", "--labels-per-item", "1")
    cli_ok("add-tasks", "--db", db, "--project", "fresh", "--data", str(prompts), "--model",
           str(tiny_model_dir), "--num-responses", "3", "--max-new-tokens", "8")
    out = cli_ok("create-project", "--db", db, "--name", "fresh", "--update", "--reward-model",
                 str(reward_ensemble))
    assert "active learning: scored 4 task(s)" in out
    store = Store(db)
    fresh = store.project_by_name("fresh")
    tasks = store.tasks_of(fresh["id"])
    from alignkit.models.reward import RewardModel
    model = RewardModel.load(reward_ensemble)
    for t in tasks:  # score = mean over the 3 pairs of the population std of member margins
        pm = model.score([t["prompt"]] * 3, t["responses"]).per_member
        stds = [float((pm[:, i] - pm[:, j]).std(unbiased=False))
                for i, j in ((0, 1), (0, 2), (1, 2))]
        assert t["al_score"] == pytest.approx(sum(stds) / 3, rel=1e-4, abs=1e-6)
    expected = [t["id"] for t in sorted(tasks, key=lambda t: -t["al_score"])]
    user, _ = store.create_user("solo")
    store.add_member(fresh["id"], user.id)
    served = []
    while (task := store.next_task(fresh, user)) is not None:
        served.append(task["id"])
        store.submit(fresh["id"], user, task["id"], {"ranking": [0, 1, 2]})
    assert served == expected
    # the admin page's table: old position = order added, new = by uncertainty
    from alignkit.feedback.active import queue_change
    change = queue_change(tasks)
    assert [c["id"] for c in change] == expected and [c["new"] for c in change] == [1, 2, 3, 4]
    by_id = sorted(t["id"] for t in tasks)
    assert all(c["old"] == by_id.index(c["id"]) + 1 for c in change)
    assert torch.tensor([t["al_score"] for t in tasks]).gt(0).all()
    store.dispose()
