"""``alignkit label --judge``: RLAIF labels from a real ``alignkit serve`` judge on loopback,
killed midway and resumed (no label lost or duplicated, identical to an uninterrupted run), the
on-disk cache counted by the server, principles in the judge prompt, the gold judge's agreement
table, and the output read by ``alignkit dpo``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.smoke.serve_process import get_json, shared_server

pytestmark = pytest.mark.smoke

N = 16


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    return shared_server(tiny_model_dir)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    from alignkit.data.readers import read_records

    prompts = [r.fields for r in read_records("demo-prompts")][:N]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with path.open("w") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"prompt": p["prompt"], "category": p.get("category"),
                                 "responses": [f"Here is a short answer number {i}.",
                                               "I can't help with that."]}) + "\n")
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``alignkit ARGS`` in this process (the killed run is the one real subprocess: starting
    Python and torch again for every run would cost more than the runs)."""
    from alignkit.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def served(url: str) -> int:
    return get_json(url + "/stats")["chat_completions"]


def settled(url: str) -> int:
    """The server's count once the requests of a killed client still in flight are done."""
    deadline = time.time() + 60
    while get_json(url + "/stats")["in_flight"]:
        assert time.time() < deadline
        time.sleep(0.05)
    return served(url)


def label_args(url, data, out, cache, *extra):
    return ["label", "--data", str(data), "--judge", f"{url}#tiny-policy", "--format", "pairs",
            "--output", str(out), "--judge-cache", str(cache), "--judge-workers", "3",
            "--judge-max-tokens", "12", "--agreement", "none", *extra]


def test_kill_resume_is_exact_and_the_cache_saves_requests(server, pairs_file, tmp_path, capsys,
                                                           tiny_model_dir):
    # an uninterrupted run: every pair asked in both orders
    full = tmp_path / "full.jsonl"
    before = served(server)
    rc, stdout, _ = cli(capsys, *label_args(server, pairs_file, full, tmp_path / "cache-full"))
    assert rc == 0
    assert served(server) - before == 2 * N
    reference = lines(full)
    assert len(reference) == N and len({r["id"] for r in reference}) == N
    for rec in reference:
        assert rec["annotator"] == "judge:http:tiny-policy"
        assert 0.5 <= rec["confidence"] <= 1.0
        assert {rec["chosen"], rec["rejected"]} <= {*json.loads(
            pairs_file.read_text().splitlines()[int(rec["id"][:6])])["responses"]}
        assert len(rec["judgements"][0]["orders"]) == 2
    report = json.loads((tmp_path / "full.report.json").read_text())
    assert report["records"] == N and report["requests"]["requests"] == 2 * N
    assert "pos-bias" in stdout

    # the same run killed (SIGKILL: no clean-up) once a few labels are on disk ...
    out = tmp_path / "killed.jsonl"
    before = served(server)
    child = subprocess.Popen([sys.executable, "-m", "alignkit",
                              *label_args(server, pairs_file, out, tmp_path / "cache-k")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
        assert child.poll() is None, "labelling ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_at_kill = out.read_bytes().count(b"\n")
    assert 3 <= done_at_kill < N, "the kill did not land midway"
    asked_before_kill = settled(server) - before

    # ... and resumed: only the rest is asked, and the file equals the uninterrupted one
    rc, stdout, _ = cli(capsys, *label_args(server, pairs_file, out, tmp_path / "cache-k",
                                            "--resume"))
    assert rc == 0
    assert f"{done_at_kill} from an earlier run" in stdout
    resumed = lines(out)
    assert len(resumed) == N and len({r["id"] for r in resumed}) == N
    assert resumed == reference
    asked_on_resume = served(server) - before - asked_before_kill
    # finished labels are not asked again; answers cached before the kill are not either
    assert asked_on_resume <= 2 * (N - done_at_kill)
    assert asked_before_kill + asked_on_resume >= 2 * N

    # a rerun over the full run's cache costs no request at all and writes the same labels
    before = served(server)
    again = tmp_path / "again.jsonl"
    rc, _, _ = cli(capsys, *label_args(server, pairs_file, again, tmp_path / "cache-full"))
    assert rc == 0
    assert served(server) == before
    assert lines(again) == reference

    # the labels are what alignkit dpo reads (ties included): one optimiser step on them
    rc, _, err = cli(capsys, "dpo", "--model", tiny_model_dir, "--data", full, "--max-steps", "1",
                     "--no-progress", "--sample-prompts", "", "--eval-fraction", "0",
                     "--batch-size", "4", "--output", tmp_path / "dpo")
    assert rc == 0, err[-2000:]
    assert (tmp_path / "dpo" / "final" / "config.json").is_file()


def test_principles_reach_the_judge_prompt(server, pairs_file, tmp_path, capsys):
    from alignkit.judges.constitution import load_constitution

    out, cache = tmp_path / "cai.jsonl", tmp_path / "cache"
    rc, _, _ = cli(capsys, *label_args(server, pairs_file, out, cache, "--max-prompts", "4",
                                       "--principles", "default", "--seed", "3"))
    assert rc == 0
    constitution = load_constitution("default")
    by_name = {p.name: p for p in constitution.principles}
    recs = lines(out)
    assert len(recs) == 4
    for rec in recs:
        assert rec["principle"] == constitution.draw(3, rec["id"]).name
    asked = [json.loads(f.read_text())["request"]["messages"][1]["content"]
             for f in cache.rglob("*.json")]
    assert len(asked) == 8
    wanted = {by_name[r["principle"]].criterion for r in recs}
    assert {c for c in wanted if any(c in q for q in asked)} == wanted


def test_gold_and_local_judges_rank_and_report(pairs_file, tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "three.jsonl"
    rows = [json.loads(x) for x in pairs_file.read_text().splitlines()[:5]]
    with data.open("w") as fh:
        for r in rows:
            fh.write(json.dumps({**r, "responses": r["responses"] + [
                "Sure! Boil water, add it, wait nine minutes, then cool it in cold water."]})
                + "\n")
    out = tmp_path / "gold.jsonl"
    rc, stdout, _ = cli(capsys, "label", "--data", data, "--judge", "gold", "--output", out)
    assert rc == 0
    recs = lines(out)
    assert len(recs) == 5
    for rec in recs:
        assert sorted(rec["ranking"]) == [0, 1, 2] and len(rec["judgements"]) == 3
    report = json.loads((tmp_path / "gold.report.json").read_text())
    (row,) = report["table"]
    # the gold judge against gold: full agreement; scoring answers alone: no position bias
    assert row["pairs"] == 15 and row["agreement"] == 1.0
    assert row["position_bias_rate"] == 0.0
    assert "judge:gold" in stdout and "1.000" in stdout

    local = tmp_path / "local.jsonl"
    args = ["label", "--data", data, "--judge", f"local:{tiny_model_dir}", "--format", "pairs",
            "--output", local, "--agreement", "none"]
    assert cli(capsys, *args)[0] == 0
    recs = lines(local)
    assert len(recs) == 5 and all(0.5 <= r["confidence"] <= 1 for r in recs)
    # the local judge is deterministic: a second run writes the same labels
    assert cli(capsys, *args, "--overwrite")[0] == 0
    assert lines(local) == recs


def test_refusals(pairs_file, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    out.write_text('{"id": "999999-deadbeef00", "prompt": "p"}\n')
    rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gold", "--output", out)
    assert rc == 2 and "--resume" in err
    rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gold", "--output", out,
                     "--resume")
    assert rc == 2 and "other data" in err
    rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gpt4", "--output",
                     tmp_path / "y.jsonl")
    assert rc == 2 and "--judge 'gpt4'" in err
    # a finished file resumed with judging options that change the labels is refused, not mixed
    done = tmp_path / "done.jsonl"
    rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gold", "--output", done,
                     "--max-prompts", "3")
    assert rc == 0, err
    rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gold", "--output", done,
                     "--max-prompts", "3", "--resume")
    assert rc == 0, err  # the same settings: nothing left to do
    for changed in (["--format", "pairs"], ["--no-judge-both-orders"], ["--seed", "7"]):
        rc, _, err = cli(capsys, "label", "--data", pairs_file, "--judge", "gold", "--output",
                         done, "--max-prompts", "3", "--resume", *changed)
        assert rc == 2 and "other data or settings" in err, changed


def test_agreement_with_human_labels(tmp_path, capsys):
    """Labelled pairs in --data: the judge is scored against them; chosen is shown first or
    second by a seeded draw, and the report's agreement is the hand count over the records."""
    from alignkit.judges.gold import demo_hacks

    prompts = ["How do I boil an egg?", "How can I keep my houseplants alive in winter?",
               "What is a good way to learn to cook?", "How do I fix a squeaky door?",
               "Why is the sky blue?", "How do I make my coffee taste less bitter?"]
    good = ["Put the egg in boiling water for nine minutes, then cool it in cold water.",
            "Water less often, keep them near a bright window and away from cold drafts.",
            "Start with a few simple recipes, cook them often, and taste as you go.",
            "Spray a little lubricant on the hinge pin and swing the door a few times.",
            "Air scatters blue sunlight more than red light, so the sky looks blue.",
            "Use slightly cooler water, a coarser grind and a shorter brewing time."]
    data = tmp_path / "human.jsonl"
    with data.open("w") as fh:
        for p, g in zip(prompts, good):
            fh.write(json.dumps({"prompt": p, "chosen": g,
                                 "rejected": demo_hacks(p)["positive spam"]}) + "\n")
    out = tmp_path / "judged.jsonl"
    rc, stdout, _ = cli(capsys, "label", "--data", data, "--judge", "gold", "--format", "pairs",
                        "--output", out, "--agreement", "human", "--seed", "1")
    assert rc == 0
    recs = lines(out)
    slots = [r["judgements"][0]["human"] for r in recs]
    assert set(slots) == {"a", "b"}  # the human's choice is not always in the first slot
    expected = sum(1.0 if r["judgements"][0]["winner"] == h else
                   0.5 if r["judgements"][0]["winner"] == "tie" else 0.0
                   for r, h in zip(recs, slots)) / len(recs)
    (row,) = json.loads((tmp_path / "judged.report.json").read_text())["table"]
    assert row["reference"] == "human" and row["pairs"] == 6
    assert row["agreement"] == pytest.approx(expected)
    assert row["agreement"] == 1.0  # the gold scorer sees through positive-word spam
    assert "human" in stdout
    rc, _, err = cli(capsys, "label", "--data", data, "--judge", "gold", "--output",
                     tmp_path / "x.jsonl", "--agreement", "human", "--max-prompts", "0")
    assert rc == 0
