"""``alignkit report`` on a run folder made by real tiny stages (SFT, reward ensemble, PPO with the
monitor, DPO, eval): sections, figures with captions and axis units, PNGs beside the page equal
to the embedded ones, model text escaped, missing stages noted; the page opened in headless
Chromium and its screenshot saved under tests/artifacts/ (gitignored)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
HOSTILE = "<script>window.__pwned = 1</script><b>bold?</b> & \"quotes\""


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """runs/<name>/{sft,reward,ppo,dpo,eval}/ from a few steps of each real stage."""
    from alignkit.config import DPOConfig, EvalConfig, PPOConfig, RewardConfig, SFTConfig
    from alignkit.cli import run
    from tests.smoke.test_reward_cli import write_prefs

    root = tmp_path_factory.mktemp("runs") / "tiny"
    root.mkdir()
    prefs = write_prefs(root.parent / "prefs.jsonl", 24)
    common = dict(save_every=0, progress=False, overwrite=True, seed=3)
    run(SFTConfig(model=str(tiny_model_dir), data="demo", max_steps=4, batch_size=4,
                       eval_every=2, eval_fraction=0.05, output=str(root / "sft"), **common))
    run(RewardConfig(model=str(tiny_model_dir), data=str(prefs), ensemble=2,
                             max_steps=4, eval_fraction=0.25, eval_every=2,
                             output=str(root / "reward"), **common))
    # min_entropy above any real entropy: every monitor reading warns, so warnings show
    run(PPOConfig(model=str(root / "sft" / "final"),
                       reward_model=str(root / "reward" / "final"), data="demo-prompts",
                       batch_size=4, minibatch_size=4, max_steps=4, max_new_tokens=8,
                       eval_prompts=6, eval_every=2, lr=5e-3, min_entropy=100.0,
                       output=str(root / "ppo"), **common))
    run(DPOConfig(model=str(root / "sft" / "final"), data=str(prefs), max_steps=4,
                       batch_size=4, eval_fraction=0.25, eval_every=2, max_new_tokens=8,
                       output=str(root / "dpo"), **common))
    prompts = root.parent / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": HOSTILE, "category": "helpful"}) + "\n"
                       + json.dumps({"prompt": "Why is the sky blue?", "category": "helpful"})
                       + "\n")
    run(EvalConfig(policies=f"sft={root / 'sft' / 'final'},"
                                         f"ppo={root / 'ppo' / 'final'}",
                                prompts=str(prompts), reward_model=str(root / "reward" / "final"),
                                max_adversarial=2, max_new_tokens=8, bootstrap=200,
                                output=str(root / "eval"), overwrite=True))
    with (root / "frontier.csv").open("w") as fh:  # the columns bench/frontier.py writes
        fh.write("method,param,gold,gold_se,kl,proxy,length,train_s\n"
                 "best-of-n,n=1,1.50,0.2,0.0,-0.4,,20.8\n"
                 "best-of-n,n=4,1.70,0.2,0.636,-0.1,,40.0\n"
                 "ppo,kl=0.05,1.90,0.25,2.5,0.3,24.0,300\n")
    return root


def test_report_sections_figures_and_escaping(tiny_run):
    from alignkit.evaluation.report import build_report

    report = build_report(tiny_run)
    page = report.path.read_text()
    assert report.path == tiny_run / "report" / "report.html"
    assert report.sections == ["curves", "monitor", "frontier", "eval", "samples"]
    for sid in report.sections:
        assert f'<section id="{sid}">' in page
    # one curve figure per stage, the monitor, the CSV frontier, the policies' frontier,
    # the adversarial bars
    names = [f.name for f in report.figures]
    assert names == ["curves-sft", "curves-reward", "curves-ppo", "curves-dpo", "monitor-ppo",
                     "frontier", "frontier-policies", "adversarial"]
    figures = re.findall(r"<figure id=\"fig-([\w-]+)\"><img alt=\"[^\"]*\" "
                         r"src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\"><figcaption>"
                         r"Figure (\d+)\. ([^<]+)</figcaption></figure>", page)
    assert [f[0] for f in figures] == names
    assert [int(f[2]) for f in figures] == list(range(1, len(names) + 1))
    for (name, data, _, caption), plot in zip(figures, report.figures):
        png = (tiny_run / "report" / f"{name}.png").read_bytes()
        assert base64.b64decode(data) == png == plot.png
        assert png.startswith(b"\x89PNG") and len(caption) > 40
        assert plot.axes, name
        for xlabel, ylabel in plot.axes:  # every axis names its unit in parentheses
            assert re.search(r"\(.+\)", xlabel) and re.search(r"\(.+\)", ylabel), (name, xlabel,
                                                                                   ylabel)
    # the monitor's warnings (every reading, by construction) are listed with their steps
    ppo_evals = [json.loads(ln) for ln in (tiny_run / "ppo" / "metrics.jsonl").read_text()
                 .splitlines() if json.loads(ln)["split"] == "eval"]
    assert [r["step"] for r in ppo_evals] == [0, 2, 4]
    for r in ppo_evals:
        assert r["warnings"]
        assert f"<li>step {r['step']}: mean token entropy" in page
    # eval tables: both policies, the suite with its categories
    assert "win rate vs sft [CI]" in page and "Adversarial suite (8 prompts)" in page
    # each suite rate with its standard error over prompts, as eval.json holds them
    evaluation = json.loads((tiny_run / "eval" / "eval.json").read_text())
    for name, row in evaluation["policies"].items():
        adv = row["adversarial"]
        cell = f"{adv['refusal_rate'] * 100:.0f}% ± {adv['refusal_rate_se'] * 100:.0f}"
        assert f"<tr><td>{name}</td><td>{cell}</td>" in page
    # 2 policies x 2 prompts, each pair asked in both orders; the gold judge has no position bias
    assert "asked in both orders on 4 pairs; position decided 0% of them" in page
    for cat in ("harmful", "jailbreak", "benign", "uncertain"):
        assert f"<td>{cat}</td>" in page
    # model and user text is escaped: the hostile prompt shows as text, never as markup
    # (Jinja2's autoescape writes a double quote as &#34;)
    assert "<script>" not in page and "<b>bold?</b>" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt; &amp; " \
           "&#34;quotes&#34;" in page
    assert report.notes == []  # every expected stage is present

    # the CLI takes the run folder as its argument and prints where the page is
    out = tiny_run.parent / "elsewhere"
    proc = run_cli("report", str(tiny_run), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"report: {out / 'report.html'}"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}.png" for n in names)


def test_report_opens_in_headless_chromium(tiny_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from alignkit.evaluation.report import build_report

    report = build_report(tiny_run, tiny_run.parent / "browser")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1300,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")
                                              or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(report.path.as_uri())
        assert driver.title == f"alignkit run report: {tiny_run.name}"
        # every embedded PNG decodes (a broken data URI has naturalWidth 0)
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == len(report.figures) and all(w > 300 for w in widths)
        captions = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure')).map("
            "f => f.querySelector('figcaption').innerText)")
        assert [c.split(".")[0] for c in captions] == [f"Figure {i + 1}"
                                                      for i in range(len(report.figures))]
        # the hostile prompt rendered as text: no script ran, none exists
        assert driver.execute_script("return document.scripts.length") == 0
        assert driver.execute_script("return window.__pwned === undefined")
        cell_texts = driver.execute_script(
            "return Array.from(document.querySelectorAll('td')).map(td => td.innerText)")
        assert any(HOSTILE in t for t in cell_texts)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(height + 80, 16000))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "report-screenshot.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_missing_stages_and_bad_lines_are_notes_not_crashes(tiny_run, tmp_path):
    from alignkit.evaluation.report import build_report

    run = tmp_path / "partial"
    (run / "sft").mkdir(parents=True)
    lines = (tiny_run / "sft" / "metrics.jsonl").read_text().splitlines()
    (run / "sft" / "metrics.jsonl").write_text("\n".join(lines[:3] + ["{truncated"]
                                                         + lines[3:]) + "\n")
    (run / "empty-stage").mkdir()  # no metrics.jsonl: not a stage
    (run / "eval.json").write_text("{not json")
    report = build_report(run)
    page = report.path.read_text()
    assert [f.name for f in report.figures] == ["curves-sft"]
    assert f"{run / 'sft' / 'metrics.jsonl'}:4: not valid JSON (line skipped)" in report.notes
    for kind in ("reward", "ppo", "dpo"):
        assert f"stage {kind}: not in this run (skipped)" in report.notes
    assert any(n.startswith(f"{run / 'eval.json'}: unreadable") for n in report.notes)
    assert any("no PPO stage" in n for n in report.notes)
    assert any("no eval.json" in n for n in report.notes)
    assert report.sections[0] == "notes" and 'class="note"' in page
    # a folder that does not exist is a user error
    proc = run_cli("report", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "run folder not found" in proc.stderr
    proc = run_cli("report")
    assert proc.returncode == 2 and "alignkit report RUN_DIR" in proc.stderr


def test_malformed_metrics_rows_do_not_crash(tmp_path):
    from alignkit.evaluation.report import build_report

    stage = tmp_path / "run" / "ppo"
    stage.mkdir(parents=True)
    stage.joinpath("metrics.jsonl").write_text(
        '{"step": "x", "split": "train", "score": 1}\n'
        '{"step": 1, "split": "eval", "proxy": 1, "gold": 2, "kl": "oops", "warnings": ["w"]}\n'
        '{"split": "eval", "proxy": 2, "warnings": ["<no step>"]}\n'
        "[1, 2]\n")
    report = build_report(tmp_path / "run")
    page = report.path.read_text()
    assert f"{stage / 'metrics.jsonl'}:4: not a JSON object (line skipped)" in report.notes
    assert "<li>step 1: w</li>" in page and "<li>step ?: &lt;no step&gt;</li>" in page
    assert [f.name for f in report.figures] == ["monitor-ppo"]  # the one plottable reading


def test_monitor_section_shows_the_refusal_curve(tmp_path):
    """PPO readings with --eval-adversarial: the refusal and over-refusal rates in the monitor's
    table and as two more panels of its figure."""
    from alignkit.evaluation.report import build_report

    stage = tmp_path / "run" / "ppo"
    stage.mkdir(parents=True)
    stage.joinpath("metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "split": "eval", "proxy": 0.1 * s, "gold": 1.5, "gold_se": 0.2, "kl": s,
         "response_length": 20, "ended_fraction": 1.0, "refusal_rate": r, "over_refusal_rate": o,
         "warnings": []}) + "\n" for s, r, o in ((0, 0.1, 0.0), (8, 0.4, 0.05), (16, 0.6, 0.1))))
    report = build_report(tmp_path / "run")
    page = report.path.read_text()
    assert "refused (harmful + jailbreak)" in page and "over-refused (benign)" in page
    assert "<td>60%</td>" in page and "<td>10%</td>" in page
    (figure,) = [f for f in report.figures if f.name == "monitor-ppo"]
    assert [y for _, y in figure.axes][-2:] == ["harmful + jailbreak refused (fraction)",
                                                  "benign refused (fraction)"]
    assert "refusal" in figure.caption


def test_best_checkpoint_names_the_selected_step_and_its_regret(tmp_path):
    """The last ``best`` row is logged at the run's last step; the checkpoint it names is its
    ``selected_step``, and with gold measured the page gives that choice's gold regret."""
    from alignkit.evaluation.report import build_report

    stage = tmp_path / "run" / "ppo"
    stage.mkdir(parents=True)
    readings = [{"step": s, "split": "eval", "proxy": p, "gold": g, "kl": s / 4,
                 "warnings": []} for s, p, g in ((0, 0.0, 1.76), (4, 0.44, 1.30),
                                                (8, 0.33, 2.01))]
    best = {"step": 8, "split": "best", "best_by": "lcb", "best_value": 0.443,
            "selected_step": 4.0, "gold_best_step": 8.0, "selected_gold": 1.297,
            "selection_regret": 0.711}
    stage.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (*readings, best)))
    page = build_report(tmp_path / "run").path.read_text()
    assert "Best checkpoint (by lcb): step 4, value 0.443." in page
    assert "Its gold 1.297; the gold-best reading (step 8) is 0.711 higher" in page


def test_demo_stage_times_table_with_shares_and_bad_entries_skipped(tmp_path):
    """demo_summary.json's ``stage_seconds``: minutes and share of the whole run per stage, in
    the order they ran, and the machine they ran on; a hand-edited entry that is not a number is
    left out, not a crash."""
    from alignkit.evaluation.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    run.joinpath("demo_summary.json").write_text(json.dumps(
        {"seconds": 600.0, "stage_seconds": {"sft": 90.0, "labels": "slow", "ppo-r1": 300.0,
                                             "comparison": 210.0},
         "machine": {"cpu": "Intel Xeon 2.80GHz", "architecture": "x86_64", "physical_cores": 2,
                     "torch_threads": 2, "vector_units": ["AVX-512", "AVX2"],
                     "torch": "2.13.0+cpu"}}))
    page = build_report(run).path.read_text()
    assert "Demo: wall-clock time per stage" in page
    rows = re.findall(r"<tr><td>([\w -]+)</td><td>([\d.]+)</td><td>(\d+%)</td></tr>", page)
    assert rows == [("sft", "1.5", "15%"), ("ppo-r1", "5.0", "50%"),
                    ("comparison", "3.5", "35%"), ("whole run", "10.0", "100%")]
    assert "<td>labels</td>" not in page
    # what the times ran on, under the table
    assert ("<p>machine: Intel Xeon 2.80GHz (x86_64, 2 cores, AVX-512), 2 torch threads, torch "
            "2.13.0+cpu</p>") in page
