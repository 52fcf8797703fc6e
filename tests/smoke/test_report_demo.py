"""``alignkit demo`` ends by writing the run report and printing its path (on a tiny model with
--quick, so every stage runs in seconds)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
import yaml

from alignkit.cli import build_parser
from alignkit.config import DemoConfig, build_config
from alignkit.evaluation.paired import paired_difference
from alignkit.utils.machine import machine_line
from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def test_demo_writes_the_report_and_prints_its_path(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    # a nested stage option, a flat flag of earlier versions (an alias of reward.max_steps) and
    # two rounds of RLHF, both rounds' PPO policies compared
    argv = ["demo", "--model", str(tiny_model_dir), "--quick", "--output", str(out),
            "--no-progress", "--ppo.kl-coef", "0.1", "--reward-steps", "3", "--rounds", "2",
            "--compare-earlier-rounds"]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each stage ran with the config the demo derived from its nested one
    stage = {name: yaml.safe_load((out / name / "config.yaml").read_text())
             for name in ("sft", "reward-r1", "ppo-r1", "reward", "ppo", "dpo")}
    assert (stage["ppo"]["kl_coef"], stage["reward"]["max_steps"]) == (0.1, 3)
    assert stage["ppo"]["model"] == str(out / "sft" / "final") == stage["dpo"]["model"]
    # two rounds of RLHF: the panel ranked the round-1 PPO policy's answers (10 prompts x 5
    # rankings), the second ensemble learned from both rankings, the second PPO run used it
    assert stage["ppo-r1"]["model"] == stage["ppo"]["model"]
    # round 2 goes on training round 1's adapters (--continue-rounds, the default)
    assert (stage["ppo-r1"]["lora_init"], stage["ppo"]["lora_init"]) == (
        None, str(out / "ppo-r1" / "final" / "adapter"))
    assert stage["reward-r1"]["data"] == str(out / "prefs.jsonl")
    # DPO: stage 2's rankings with the base model's answers taken out
    assert stage["dpo"]["data"] == str(out / "prefs-policy.jsonl")
    assert stage["reward"]["data"] == f"{out / 'prefs.jsonl'},{out / 'prefs-r2.jsonl'}"
    for name in ("reward-r1", "reward"):
        assert stage[name.replace("reward", "ppo")]["reward_model"] == str(out / name / "final")
    assert len((out / "prefs-r2.jsonl").read_text().splitlines()) == 10 * 5
    assert stage["sft"]["model"] == str(tiny_model_dir)
    # the demo's own record is nested and loads again with --config
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["ppo"]["kl_coef"] == 0.1 and "model" not in saved["ppo"]
    parser = build_parser()
    again = parser.parse_args(["demo", "--config", str(out / "config.yaml")])
    assert build_config(DemoConfig, again) == build_config(DemoConfig, parser.parse_args(argv))
    page_path = out / "report" / "report.html"
    lines = proc.stdout.rstrip().splitlines()
    assert lines[-1] == f"report: {page_path}"
    # the line before offers the eval of every policy the demo trained
    assert lines[-2].startswith(f"next: alignkit eval --policies base={tiny_model_dir},"
                                f"sft={out / 'sft' / 'final'},"
                                f"ppo-r1={out / 'ppo-r1' / 'final'},ppo={out / 'ppo' / 'final'},"
                                f"dpo={out / 'dpo' / 'final'} --baseline sft --reward-model "
                                f"{out / 'reward' / 'final'}"), lines[-2]
    page = page_path.read_text()
    figures = re.findall(r'<figure id="fig-([\w-]+)">', page)
    assert figures == ["curves-sft", "curves-reward", "curves-reward-r1", "curves-ppo",
                       "curves-ppo-r1", "curves-dpo", "monitor-ppo", "monitor-ppo-r1",
                       "frontier-policies"]
    for name in figures:
        assert (out / "report" / f"{name}.png").is_file()
    # the demo's own comparison and before/after samples are on the page
    assert "Demo comparison (held-out prompts)" in page and "Demo: before and after SFT" in page
    for policy in ("base", "sft", "ppo-r1", "ppo", "dpo", "best-of-4"):
        assert f"<td>{policy}</td>" in page
    assert "gold − SFT ± paired s.e." in page and "beyond noise?" in page
    # every policy against SFT, paired by prompt (the same 6 prompts, the same seed)
    summary = json.loads((out / "demo_summary.json").read_text())
    # where the run's time went, stage by stage in the order they ran: printed, in the summary
    # and on the page
    laps = summary["stage_seconds"]
    assert list(laps) == ["model", "sft", "labels", "reward-r1", "ppo-r1", "relabel-r2",
                          "reward-r2", "ppo-r2", "dpo", "comparison"]
    assert all(seconds >= 0 for seconds in laps.values())
    # the laps cover the whole run up to the summary (each rounded to 0.1 s)
    assert abs(sum(laps.values()) - summary["seconds"]) < 5.0, (laps, summary["seconds"])
    printed = [line for line in lines if line.startswith("time: ")]
    assert len(printed) == 1 and "relabel-r2 " in printed[0] and "comparison " in printed[0]
    # and the machine they ran on, printed after them, in the summary and under the table
    assert summary["machine"]["torch"] == torch.__version__
    assert lines[lines.index(printed[0]) + 1] == machine_line(summary["machine"])
    assert f"<p>{machine_line(summary['machine'])}</p>" in page
    assert "Demo: wall-clock time per stage" in page and "<td>ppo-r2</td>" in page
    policies = summary["policies"]
    assert list(policies) == ["base", "sft", "ppo-r1", "ppo", "dpo", "best-of-4"]
    rounds = summary["rounds"]
    assert [(r["round"], r["reward_model"], r["ppo_model"]) for r in rounds] == [
        (1, str(out / "reward-r1" / "final"), str(out / "ppo-r1" / "final")),
        (2, str(out / "reward" / "final"), str(out / "ppo" / "final"))]
    assert rounds[1]["labels"]["pairs"] > 0 and "labels" not in rounds[0]
    sft_gold = policies["sft"]["gold_per_prompt"]
    for name, row in policies.items():
        assert len(row["gold_per_prompt"]) == row["prompts"] == 6, name
        assert row["gold"] == pytest.approx(sum(row["gold_per_prompt"]) / 6), name
        diff = paired_difference(row["gold_per_prompt"], sft_gold)
        assert row["gold_diff_vs_sft"] == pytest.approx(diff["mean"]), name
        assert row["gold_diff_vs_sft"] == pytest.approx(row["gold"] - policies["sft"]["gold"])
        assert row["gold_diff_se"] == pytest.approx(diff["se"]), name
        assert row["beyond_noise"] is diff["beyond_noise"], name
    assert (policies["sft"]["gold_diff_vs_sft"], policies["sft"]["gold_diff_se"],
            policies["sft"]["beyond_noise"]) == (0.0, 0.0, False)
    # a policy's gold on a prompt is the mean over its answers (4 each, the base model 1, SFT
    # 6); best-of-4 is the mean, over all 15 ways to draw 4 of the 6 SFT answers, of the gold
    # of the draw's highest-proxy answer (the first of tied ones), enumerated here by brute force
    for name, row in policies.items():
        if name != "best-of-4":
            assert [len(a) for a in row["gold_per_answer"]] == [row["answers_per_prompt"]] * 6
            assert row["gold_per_prompt"] == pytest.approx(
                [sum(a) / len(a) for a in row["gold_per_answer"]])
    assert {k: policies[k]["answers_per_prompt"] for k in ("base", "sft", "ppo-r1", "ppo")} == {
        "base": 1, "sft": 6, "ppo-r1": 4, "ppo": 4}
    by_hand = []
    for golds, proxies in zip(policies["sft"]["gold_per_answer"],
                              policies["sft"]["proxy_per_answer"]):
        draws = list(itertools.combinations(range(6), 4))
        by_hand.append(sum(golds[max(d, key=lambda i: (proxies[i], -i))] for d in draws)
                       / len(draws))
    assert policies["best-of-4"]["gold_per_prompt"] == pytest.approx(by_hand)
    # each stage's results are printed as it ends, before the final summary
    out_text = proc.stdout
    final = out_text.index("alignkit demo: SFT, reward, PPO, DPO")
    for block in ("stage 1: SFT with LoRA", "labels agree with the hidden gold scorer",
                  "MiniLM reward ensemble", "stage 3: PPO with LoRA from SFT, round 1 of 2",
                  "monitor at step", "round 2: the round-1 PPO policy's answers, 10 prompts",
                  "round 2: learned again from the rankings of rounds 1-2",
                  "stage 3: PPO with LoRA from the round-1 PPO policy (KL to SFT), round 2 of 2",
                  "stage 4: DPO"):
        assert -1 < out_text.find(block) < final, block
    assert "beyond noise?" in out_text[final:] and "gold_per_prompt" not in out_text
    # a one-round run into the same folder replaces the later stages: the earlier run's first
    # round and its answers' rankings go, so the report shows only this run's stages
    proc = run_cli("demo", "--model", str(tiny_model_dir), "--quick", "--output", str(out),
                   "--no-progress", "--skip-dpo", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any((out / name).exists() for name in ("reward-r1", "ppo-r1", "prefs-r2.jsonl",
                                                       "prefs-r2.report.json"))
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary["policies"]) == ["base", "sft", "ppo", "best-of-4"]
    assert summary["rounds"][0]["reward_data"] == str(out / "prefs.jsonl")
