"""``bench/demo_seeds.py`` reads the default demo's runs across seeds: each run's gains in paired
standard errors, and the mean over seeds with the standard error of that mean. Figures derived by
hand from the runs written here."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    spec = importlib.util.spec_from_file_location("demo_seeds", BENCH / "demo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(ppo: tuple[float, float], accuracy: float, ceiling: float = 0.8) -> dict:
    """A demo_summary.json's fields this reads; DPO and best-of-4 fixed at +0.2 ± 0.05."""
    fixed = {"gold_diff_vs_sft": 0.2, "gold_diff_se": 0.05}
    return {"policies": {"ppo": {"gold_diff_vs_sft": ppo[0], "gold_diff_se": ppo[1]},
                         "dpo": fixed, "best-of-4": fixed},
            "labels": {"bayes_optimal": ceiling},
            "rounds": [{"round": 1, "reward_eval": {"accuracy": accuracy}}]}


def _write_runs(tmp_path: Path) -> list[Path]:
    """Seeds 3 and 1 as a results file ({"runs": {folder: run}}) and seed 2 as a demo_summary.json."""
    results = tmp_path / "demo_results.json"
    results.write_text(json.dumps({"date": "2026-12-07", "runs": {
        "runs/a": {**_summary((0.5, 0.1), 0.74), "command": "alignkit demo --seed 3",
                   "wall_clock": "30:00"},
        "runs/b": {**_summary((0.1, 0.05), 0.76), "command": "alignkit demo --seed 1"}}}))
    own = tmp_path / "s2" / "demo_summary.json"
    own.parent.mkdir()
    summary = _summary((0.3, 0.075), 0.70)
    summary["rounds"] = []
    summary["reward_eval"] = {"accuracy": 0.70}  # a run of one round keeps it at the top
    own.write_text(json.dumps({**summary, "command": "alignkit demo --seed 2"}))
    return [results, own]


def test_each_run_reads_its_gains_in_paired_standard_errors_and_its_share_of_the_ceiling(tmp_path):
    demo_seeds = _module()
    results, own = _write_runs(tmp_path)
    rows = [demo_seeds.row(run) for path in (results, own) for run in demo_seeds.run_records(path)]
    assert [r["seed"] for r in rows] == [3, 1, 2]
    assert [r["ppo"]["z"] for r in rows] == pytest.approx([5.0, 2.0, 4.0])
    assert [r["reward"]["share"] for r in rows] == pytest.approx([0.925, 0.95, 0.875])
    assert rows[0]["wall_clock"] == "30:00" and rows[1]["wall_clock"] is None


def test_across_seeds_the_mean_gain_has_the_standard_error_of_its_spread(tmp_path):
    demo_seeds = _module()
    rows = [demo_seeds.row(run) for path in _write_runs(tmp_path)
            for run in demo_seeds.run_records(path)]
    summary = demo_seeds.across(rows)
    ppo = summary["ppo"]
    # gains 0.5, 0.1, 0.3: mean 0.3, sample s.d. sqrt((0.04 + 0.04 + 0) / 2) = 0.2
    assert ppo["mean_diff"] == pytest.approx(0.3)
    assert ppo["sd_over_seeds"] == pytest.approx(0.2)
    assert ppo["se_of_mean"] == pytest.approx(0.2 / math.sqrt(3))
    # s.e. 0.1, 0.05, 0.075: the comparisons' own noise mean(se^2) = (0.01 + 0.0025 + 0.005625) / 3
    assert ppo["run_to_run_sd"] == pytest.approx(math.sqrt(0.04 - 0.018125 / 3))
    assert ppo["min_z"] == pytest.approx(2.0)
    assert ppo["runs_beyond_line"] == 2  # z 5 and 4 reach the line, 2 does not
    dpo = summary["dpo"]  # every run +0.2 ± 0.05: no spread, and noise does not make it negative
    assert dpo["sd_over_seeds"] == 0.0 and dpo["run_to_run_sd"] == 0.0
    assert dpo["runs_beyond_line"] == 3
    share = summary["reward_share"]
    assert share["mean"] == pytest.approx((0.925 + 0.95 + 0.875) / 3)
    assert share["min"] == pytest.approx(0.875)
    assert share["runs_at_90"] == 2


def test_the_command_prints_seeds_in_order_and_writes_its_json(tmp_path, capsys):
    demo_seeds = _module()
    out = tmp_path / "seeds.json"
    assert demo_seeds.main([*map(str, _write_runs(tmp_path)), "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[1:4]] == ["1", "2", "3"]
    assert "+0.100 ± 0.050 ( 2.0)" in printed[1]
    assert "2/3 runs at 90% or more" in printed[-1]
    written = json.loads(out.read_text())
    assert [r["seed"] for r in written["runs"]] == [1, 2, 3]
    assert written["across_seeds"]["ppo"]["runs_beyond_line"] == 2


def test_a_demo_run_without_the_seed_flag_has_the_demos_default_seed():
    demo_seeds = _module()
    assert demo_seeds.seed_of({"command": "alignkit demo --output runs/d"}) == 42
    assert demo_seeds.seed_of({"command": "alignkit demo --seed=7 --output runs/d"}) == 7
    assert demo_seeds.seed_of({"command": "alignkit demo --output runs/d", "seed": 5}) == 5
    assert demo_seeds.seed_of({"command": "python bench/other.py"}) is None


def test_a_file_that_is_no_demo_result_is_named(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"benchmark": "sft_throughput"}))
    with pytest.raises(ValueError, match="other.json: neither a demo_summary.json"):
        _module().run_records(bad)
