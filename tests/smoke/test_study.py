"""``alignkit study overoptimisation`` end to end on a tiny policy: every part runs (labels at
two noise levels, a MiniLM ensemble each, best-of-n against every proxy, PPO against each
proxy), its numbers are where they should be, each PPO run's config reloads as the run it was,
the report shows the study, and bad flags are one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from alignkit.utils.machine import machine_line
from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    proc = run_cli("study", "overoptimisation", "--policy", str(tiny_model_dir), "--output",
                   str(out), "--no-progress", "--label.prompts", "8", "--bon-n", "6",
                   "--bon-prompts", "4", "--kl-coefs", "0.05", "--ppo-label-noise", "0.25",
                   "--proxies", "single,wco,uwo", "--max-new-tokens", "8",
                   "--reward.ensemble", "2", "--reward.max-steps", "2", "--ppo.max-steps", "2",
                   "--ppo.batch-size", "4", "--ppo.minibatch-size", "2", "--ppo.eval-every", "1",
                   "--ppo.eval-prompts", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "study.json").read_text())


def test_every_part_ran(study):
    out, stdout, summary = study
    assert list(summary["levels"]) == ["0", "0.25"] and summary["complete"] is True
    samples = [json.loads(ln) for ln in (out / "bon_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["responses"]) == len(s["gold"]) == 6
                                     for s in samples)
    assert summary["proxies"] == ["single", "wco", "uwo"]
    for rate, level in summary["levels"].items():
        assert (out / f"noise-{rate}" / "prefs.jsonl").is_file()
        assert (out / f"noise-{rate}" / "reward" / "final").is_dir()
        assert 0.5 <= level["labels"]["bayes_optimal"] <= 1.0
        for proxy in ("single", "wco", "uwo"):
            bon = level["bon"][proxy]
            assert [p["n"] for p in bon["curve"]] == [1, 2, 4, 6]
            # best-of-1 is any sample: the same gold whatever the proxy
            assert bon["curve"][0]["gold"] == pytest.approx(
                level["bon"]["single"]["curve"][0]["gold"])
            assert bon["curve"][0]["kl"] == 0.0 and bon["fit"]["form"] == "bon"
            # best-of-n's expected proxy never falls as n grows
            proxies = [p["proxy"] for p in bon["curve"]]
            assert all(b >= a - 1e-9 for a, b in zip(proxies, proxies[1:]))
            # the fall from the peak is read prompt by prompt (every n: the same samples)
            peak = max(bon["curve"], key=lambda p: p["gold"])
            drops = (torch.tensor(peak["gold_per_prompt"], dtype=torch.float64)
                     - torch.tensor(bon["curve"][-1]["gold_per_prompt"], dtype=torch.float64))
            assert bon["peak"]["paired"] and len(drops) == 4
            assert bon["peak"]["drop_se"] == pytest.approx(float(drops.std() / 2))
            assert bon["peak"]["fell"] == (bon["peak"]["drop"] > bon["peak"]["drop_se"])
        assert f"label noise {float(rate):.0%}" in stdout
    assert "ppo" not in summary["levels"]["0"]  # --ppo-label-noise 0.25 only
    assert "single-avg" in stdout
    # where the time went, part by part in the order they ran (--policy given: no SFT)
    assert list(summary["stage_seconds"]) == [
        "candidates", "bon-samples", "labels-0", "reward-0", "bon-0", "labels-0.25",
        "reward-0.25", "bon-0.25", "ppo-0.25"]
    assert sum(summary["stage_seconds"].values()) <= summary["seconds"] + 1.0
    assert any(line.startswith("time: ") and "ppo-0.25 " in line
               for line in stdout.splitlines())
    assert summary["machine"]["torch"] == torch.__version__
    assert machine_line(summary["machine"]) in stdout.splitlines()
    runs = summary["levels"]["0.25"]["ppo"]
    for proxy in ("single", "wco", "uwo"):
        (run,) = runs[proxy]["runs"]
        assert [r["step"] for r in run["readings"]] == [0, 1, 2]
        assert run["readings"][0]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert run["selection"]["best_by"] == "lcb"
        assert run["selection"]["selection_regret"] >= 0.0
        assert run["forecast"]["gold_peak_step"] in (0, 1, 2)
        assert not run["peak"]["paired"]  # monitor readings keep no per-prompt gold


def test_each_ppo_run_optimised_its_proxy_and_reloads(study):
    from alignkit.cli import build_parser
    from alignkit.config import PPOConfig, build_config
    from alignkit.models.reward import RewardFunction, RewardModel

    out, _, _ = study
    saved = {p: yaml.safe_load((out / "noise-0.25" / f"ppo-{p}-kl0.05" / "config.yaml")
                               .read_text()) for p in ("single", "wco", "uwo")}
    assert (saved["single"]["reward_members"], saved["single"]["combine"]) == (1, "mean")
    assert (saved["wco"]["reward_members"], saved["wco"]["combine"]) == (None, "min")
    assert saved["uwo"]["combine"] == "mean_minus_var"
    assert saved["uwo"]["uncertainty_penalty"] == 1.0 and saved["uwo"]["kl_coef"] == 0.05
    again = build_config(PPOConfig, build_parser().parse_args(
        ["ppo", "--config", str(out / "noise-0.25" / "ppo-single-kl0.05" / "config.yaml")]))
    assert again.reward_members == 1 and again.reward_model.endswith("noise-0.25/reward/final")
    # one member alone: the single proxy is member 0's score, spread 0
    path = str(out / "noise-0.25" / "reward" / "final")
    texts, answers = ["Say hi.", "Name a colour."], ["Hi there!", "Blue."]
    members = RewardModel.load(path, "cpu").score(texts, answers).per_member
    single = RewardFunction(path, "cpu", "mean", members=1)(texts, answers)
    assert torch.allclose(single["combined"], members[0])
    assert torch.equal(single["std"], torch.zeros(2))
    worst = RewardFunction(path, "cpu", "min")(texts, answers)
    assert torch.allclose(worst["combined"], members.min(0).values)


def test_the_report_shows_the_study(study):
    out, stdout, _ = study
    html = (out / "report" / "report.html").read_text()
    assert "Reward over-optimisation study" in html and "LCB choice" in html
    assert "BoN fell (drop ± s.e.)" in html and "paired by prompt" in html
    for rate in ("0", "0.25"):
        for key in ("gold", "proxy"):
            assert (out / "report" / f"study-noise-{rate}-{key}.png").stat().st_size > 1000
    assert f"report: {out / 'report' / 'report.html'}" in stdout


@pytest.mark.parametrize("flags, message", [
    (["--label-noise", "0,0.7"], "--label-noise '0,0.7': each value must be in [0.0, 0.5]"),
    (["--proxies", "single,median"], "--proxies 'single,median': choose from single, mean, "
                                     "wco, uwo"),
    (["--ppo-label-noise", "0.1"], "--ppo-label-noise '0.1': each level must be one of "
                                   "--label-noise '0,0.25'"),
    (["--kl-coefs", "0.1,x"], "--kl-coefs '0.1,x': give numbers separated by commas"),
    (["--reward.ensemble", "1"], "--reward.ensemble 1 has no ensemble to combine"),
    (["--bon-samples", "x.jsonl", "--bon-n", "0"], "--bon-samples with --bon-n 0"),
])
def test_bad_flags_are_one_line(flags, message, tmp_path):
    proc = run_cli("study", "overoptimisation", "--output", str(tmp_path / "s"), *flags)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"alignkit study-overoptimisation: error: {message}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing written


def test_single_reward_model_curve_is_every_member_alone_averaged(study):
    """``single-avg``: each of the 2 members picks its own best-of-n answers; recomputed here
    from the saved samples and the saved ensemble, prompt by prompt."""
    from alignkit.evaluation.overoptimisation import best_of_n_curve
    from alignkit.models.reward import RewardModel

    out, _, summary = study
    samples = [json.loads(ln) for ln in (out / "bon_samples.jsonl").read_text().splitlines()]
    gold = torch.tensor([s["gold"] for s in samples], dtype=torch.float64)
    for rate, level in summary["levels"].items():
        members = RewardModel.load(out / f"noise-{rate}" / "reward" / "final").score(
            [s["prompt"] for s in samples for _ in s["responses"]],
            [a for s in samples for a in s["responses"]]).per_member.float()
        alone = [best_of_n_curve(m.view_as(gold), gold, [1, 2, 4, 6]) for m in members]
        first, second = alone
        got = level["bon"]["single-avg"]
        for i, point in enumerate(got["curve"]):
            want = [(first[i]["gold_per_prompt"][p] + second[i]["gold_per_prompt"][p]) / 2
                    for p in range(4)]
            assert point["gold_per_prompt"] == pytest.approx(want, abs=1e-9)
            assert point["gold"] == pytest.approx(sum(want) / 4, abs=1e-9)
        # member 0's own curve is the study's "single" proxy
        assert [p["gold"] for p in level["bon"]["single"]["curve"]] == pytest.approx(
            [p["gold"] for p in alone[0]], abs=1e-9)
        assert got["peak"]["paired"] and got["fit"]["form"] == "bon"


def _later_study(policy, first, out, *flags):
    """A best-of-n-only study at noise 0 on the first 3 prompts and 4 answers of ``first``'s
    samples (same seed and candidates), with ``flags`` added; asserts it succeeded."""
    proc = run_cli("study", "overoptimisation", "--policy", str(policy), "--output", str(out),
                   "--no-progress", "--label.prompts", "8", "--bon-n", "4", "--bon-prompts", "3",
                   "--bon-samples", str(first / "bon_samples.jsonl"), "--kl-coefs", "",
                   "--label-noise", "0", "--max-new-tokens", "8", "--reward.ensemble", "2",
                   "--reward.max-steps", "2", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_later_study_reads_the_same_samples(study, tiny_model_dir, tmp_path):
    """--bon-samples: no best-of-n sampling; the first 3 prompts and 4 answers of the earlier
    study's samples, copied beside the new study, are what its proxies choose from. Same seed
    and labels, so the ensemble is the earlier one, and its best-of-n reads as if recomputed
    from the earlier study's saved ensemble on those samples."""
    from alignkit.evaluation.overoptimisation import best_of_n_curve, combined_proxy
    from alignkit.models.reward import RewardModel

    first, _, first_summary = study
    out = tmp_path / "again"
    _later_study(tiny_model_dir, first, out, "--proxies", "single,wco")
    summary = json.loads((out / "study.json").read_text())
    assert "bon-samples" not in summary["stage_seconds"]
    assert summary["bon_samples_from"] == str(first / "bon_samples.jsonl")
    earlier = [json.loads(ln) for ln in (first / "bon_samples.jsonl").read_text().splitlines()]
    copied = [json.loads(ln) for ln in (out / "bon_samples.jsonl").read_text().splitlines()]
    assert copied == [{"prompt": s["prompt"], "responses": s["responses"][:4],
                       "ended": s["ended"][:4], "gold": s["gold"][:4]} for s in earlier[:3]]
    level = summary["levels"]["0"]
    assert level["reward_eval"] == first_summary["levels"]["0"]["reward_eval"]
    gold = torch.tensor([s["gold"] for s in copied], dtype=torch.float64)
    members = RewardModel.load(first / "noise-0" / "reward" / "final").score(
        [s["prompt"] for s in copied for _ in s["responses"]],
        [a for s in copied for a in s["responses"]]).per_member.float()
    for proxy in ("single", "wco"):
        scores = combined_proxy(members, proxy, 1.0).view_as(gold)
        want = best_of_n_curve(scores, gold, [1, 2, 4])
        got = level["bon"][proxy]["curve"]
        assert [p["n"] for p in got] == [1, 2, 4]
        for point, expected in zip(got, want):
            assert point["gold_per_prompt"] == pytest.approx(expected["gold_per_prompt"],
                                                             abs=1e-9)


def test_annotators_with_a_length_bias_label_by_gold_plus_length(study, tiny_model_dir,
                                                                 tmp_path):
    """--label.length-bias: the same seed ranks the same candidates, but by gold + bias x
    words / 10; the labels' report holds the ceiling of that panel and how often the longer
    answer won, and the report and stdout say so."""
    from alignkit.feedback.simulated import (DEFAULT_ANNOTATORS, agreement_report,
                                             with_length_bias)

    first, _, _ = study
    out = tmp_path / "verbose"
    proc = _later_study(tiny_model_dir, first, out, "--proxies", "single",
                        "--label.length-bias", "2")
    summary = json.loads((out / "study.json").read_text())
    assert summary["label_length_bias"] == 2.0
    plain_labels = [json.loads(ln) for ln in
                    (first / "noise-0" / "prefs.jsonl").read_text().splitlines()]
    labels = [json.loads(ln) for ln in (out / "noise-0" / "prefs.jsonl").read_text().splitlines()]
    # the same candidates and gold, ranked differently
    assert [(r["responses"], r["gold"]) for r in labels] == \
        [(r["responses"], r["gold"]) for r in plain_labels]
    assert [r["ranking"] for r in labels] != [r["ranking"] for r in plain_labels]
    report = summary["levels"]["0"]["labels"]
    biased = agreement_report(labels, with_length_bias(DEFAULT_ANNOTATORS, 2.0), 2.0)
    assert report == biased
    assert report["bayes_optimal"] != pytest.approx(
        agreement_report(labels, DEFAULT_ANNOTATORS, 2.0)["bayes_optimal"])
    assert "the labels chose the longer answer" in proc.stdout
    html = (out / "report" / "report.html").read_text()
    assert "length bias of 2.0 gold units per 10 words" in html
    assert yaml.safe_load((out / "config.yaml").read_text())["label"]["length_bias"] == 2.0


def test_the_length_bias_bench_reproduces_the_study_with_lengths(study, tmp_path):
    """bench/bon_length_bias.py recomputes each level's best-of-n from the saved ensemble: the
    same gold curves as study.json, and the kept answers' words (at n = 1: any sample, so the
    mean length of all of them)."""
    import subprocess
    import sys
    from pathlib import Path

    from alignkit.feedback.simulated import response_words

    out, _, summary = study
    bench = Path(__file__).resolve().parents[2] / "bench" / "bon_length_bias.py"
    proc = subprocess.run([sys.executable, str(bench), str(out), "--json",
                           str(tmp_path / "b.json")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "b.json").read_text())["studies"]
    assert result["length_bias"] == 0.0 and list(result["levels"]) == ["0", "0.25"]
    samples = [json.loads(ln) for ln in (out / "bon_samples.jsonl").read_text().splitlines()]
    mean_words = sum(response_words(a) for s in samples for a in s["responses"]) / 24
    for rate, level in result["levels"].items():
        assert level["ns"] == [1, 2, 4, 6]
        for proxy in ("single", "wco", "uwo", "single-avg"):
            got, want = level["proxies"][proxy], summary["levels"][rate]["bon"][proxy]
            assert got["gold"] == pytest.approx([p["gold"] for p in want["curve"]], abs=1e-4)
            assert got["drop"] == pytest.approx(want["peak"]["drop"], abs=1e-4)
            assert got["words"][0] == pytest.approx(mean_words, abs=0.01)
    assert "single-avg" in proc.stdout and "words n=1 -> last" in proc.stdout


@pytest.mark.parametrize("line, message", [
    ({"prompt": "p", "responses": ["a"], "ended": [True], "gold": [0.5]},
     "field 'responses': 1 answers, fewer than --bon-n 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ended": [True, True], "gold": [0.5, "x"]},
     "field 'gold': one finite number per answer is required"),
    ({"prompt": "", "responses": ["a", "b"], "gold": [0.5, 1.0]},
     "field 'prompt': a non-empty string is required"),
])
def test_bad_bon_samples_are_named_by_line_and_field(line, message, tmp_path):
    good = {"prompt": "q", "responses": ["a", "b"], "ended": [True, False], "gold": [0.1, 0.2]}
    path = tmp_path / "bon_samples.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    proc = run_cli("study", "overoptimisation", "--output", str(tmp_path / "s"), "--bon-n", "2",
                   "--bon-prompts", "2", "--bon-samples", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:2: {message}" in proc.stderr
    assert not (tmp_path / "s").exists()  # nothing written
    path.write_text(json.dumps(good) + "\n")
    proc = run_cli("study", "overoptimisation", "--output", str(tmp_path / "s"), "--bon-n", "2",
                   "--bon-prompts", "2", "--bon-samples", str(path))
    assert proc.returncode == 2 and "1 prompts, fewer than --bon-prompts 2" in proc.stderr
    assert not (tmp_path / "s").exists()
