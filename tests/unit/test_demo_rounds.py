"""The demo's later rounds: the ceiling an ensemble learned from several label sets can reach,
which files of an earlier run's later rounds a new run removes, and the output folder they
need."""

from __future__ import annotations

import pytest

from alignkit.config import DemoConfig
from alignkit.errors import UserError
from alignkit.feedback.labelling import pooled_ceiling

pytestmark = pytest.mark.unit


def test_the_pooled_ceiling_weighs_each_label_set_by_its_pairs():
    # (0.847 * 3048 + 0.758 * 1000) / 4048, by hand
    reports = [{"bayes_optimal": 0.847, "pairs": 3048}, {"bayes_optimal": 0.758, "pairs": 1000}]
    assert pooled_ceiling(reports) == pytest.approx(3339.656 / 4048, abs=1e-12)
    assert pooled_ceiling(reports[:1]) == pytest.approx(0.847)
    assert pooled_ceiling([]) == 0.0


FOLDERS = ("reward-r1", "ppo-r1", "reward-r2", "ppo-r2", "reward", "ppo", "sft", "dpo", "ppo-rx",
           "notes-r1", "prefs-r2.jsonl")
FILES = ("prefs.jsonl", "prefs-r2.jsonl", "prefs-r2.report.json", "prefs-r3.jsonl",
         "prefs-r2.jsonl.bak", "reward-r2")


@pytest.mark.parametrize("rounds, later", [
    (1, {"reward-r1/", "ppo-r1/", "reward-r2/", "ppo-r2/", "prefs-r2.jsonl",
         "prefs-r2.report.json", "prefs-r3.jsonl"}),
    (2, {"reward-r2/", "ppo-r2/", "prefs-r3.jsonl"}),
    (3, set())])
def test_an_earlier_runs_later_rounds_are_found_and_nothing_else(rounds, later):
    found = {f"{name}/" for name in FOLDERS if DemoConfig.later_round(name, True, rounds)}
    found |= {name for name in FILES if DemoConfig.later_round(name, False, rounds)}
    assert found == later


def test_later_rounds_need_an_output_folder_without_a_comma():
    with pytest.raises(UserError, match="choose an output folder without a comma"):
        DemoConfig(rounds=2, output="runs/a,b").validate()
    DemoConfig(rounds=1, output="runs/a,b").validate()  # one round reads one file
