"""The demo's later rounds: the ceiling an ensemble learned from several label sets can reach,
and what each round prints."""

from __future__ import annotations

import pytest

from alignkit.config import DemoConfig
from alignkit.errors import UserError
from alignkit.recipes.demo import pooled_ceiling, ppo_lines, reward_lines, stale_rounds

pytestmark = pytest.mark.unit


def test_the_pooled_ceiling_weighs_each_label_set_by_its_pairs():
    # (0.847 * 3048 + 0.758 * 1000) / 4048, by hand
    reports = [{"bayes_optimal": 0.847, "pairs": 3048}, {"bayes_optimal": 0.758, "pairs": 1000}]
    assert pooled_ceiling(reports) == pytest.approx(3339.656 / 4048, abs=1e-12)
    assert pooled_ceiling(reports[:1]) == pytest.approx(0.847)
    assert pooled_ceiling([]) == 0.0


def test_each_round_says_what_it_learned_from_and_against_what():
    cfg = DemoConfig(rounds=2)
    line = reward_lines(cfg, {"accuracy": 0.7, "pairs": 10, "log_loss": 0.5, "ece": 0.1},
                        0.875, 2)[0]
    assert line.startswith("round 2: learned again from the rankings of rounds 1-2, 3-member")
    assert "accuracy 0.700 (80% of the ceiling)" in line
    assert not reward_lines(cfg, {}, 0.8)[0].startswith("round")
    stage = {"round": 1, "monitor": [], "reward_model": "/r/reward-r1/final"}
    assert ppo_lines(cfg, stage)[0].startswith("stage 3: PPO with LoRA from SFT, round 1 of 2, "
                                               "16 steps x 4 prompts x 4 answers")
    assert "(reward-r1/)" in ppo_lines(cfg, stage)[0]
    assert ", round" not in ppo_lines(DemoConfig(), {**stage, "round": 1})[0]


def test_an_earlier_runs_later_rounds_are_found_and_nothing_else(tmp_path):
    for name in ("reward-r1", "ppo-r1", "reward-r2", "ppo-r2", "reward", "ppo", "sft", "dpo",
                 "ppo-rx", "notes-r1"):
        (tmp_path / name).mkdir()
    for name in ("prefs.jsonl", "prefs-r2.jsonl", "prefs-r2.report.json", "prefs-r3.jsonl",
                 "prefs-r2.jsonl.bak"):
        (tmp_path / name).write_text("")
    names = lambda rounds: [p.name for p in stale_rounds(tmp_path, rounds)]  # noqa: E731
    assert names(1) == ["ppo-r1", "ppo-r2", "prefs-r2.jsonl", "prefs-r2.report.json",
                        "prefs-r3.jsonl", "reward-r1", "reward-r2"]
    assert names(2) == ["ppo-r2", "prefs-r3.jsonl", "reward-r2"]
    assert names(3) == []
    assert stale_rounds(tmp_path / "absent", 1) == []


def test_later_rounds_need_an_output_folder_without_a_comma():
    with pytest.raises(UserError, match="choose an output folder without a comma"):
        DemoConfig(rounds=2, output="runs/a,b").validate()
    DemoConfig(output="runs/a,b").validate()  # one round reads one file
