"""Checkpoint selection without gold: the criterion's value, the choice and its gold regret,
and the preference trainers' best-checkpoint keeper (saves on improvement only, resumable)."""

from __future__ import annotations

import pytest

from alignkit.training.selection import (BestCheckpoint, selection_summary, selection_value)

pytestmark = pytest.mark.unit


READINGS = [  # a proxy that keeps rising while gold peaks at step 4
    {"step": 0, "proxy": 0.0, "proxy_mean": 0.0, "proxy_std": 0.1, "gold": 1.0},
    {"step": 4, "proxy": 1.0, "proxy_mean": 1.0, "proxy_std": 0.2, "gold": 1.6},
    {"step": 8, "proxy": 1.5, "proxy_mean": 1.5, "proxy_std": 1.0, "gold": 1.2},
]


def test_values_and_choices():
    assert [selection_value(r, "lcb") for r in READINGS] == pytest.approx([-0.1, 0.8, 0.5])
    assert [selection_value(r, "proxy") for r in READINGS] == [0.0, 1.0, 1.5]
    assert selection_value({"proxy": 2.0}, "lcb") == 2.0  # one reward model: no spread
    # lcb picks step 4 (0.8), the gold-best: regret 0; the proxy picks step 8: 1.6 - 1.2
    assert selection_summary(READINGS, "lcb") == {"selected_step": 4, "gold_best_step": 4,
                                                  "selected_gold": 1.6, "selection_regret": 0.0}
    proxy = selection_summary(READINGS, "proxy")
    assert proxy["selected_step"] == 8 and proxy["selection_regret"] == pytest.approx(0.4)
    # without gold: the choice, no regret
    assert selection_summary([{k: v for k, v in r.items() if k != "gold"} for r in READINGS],
                             "lcb") == {"selected_step": 4}
    assert selection_summary([], "lcb") == {}


def test_best_checkpoint_saves_on_improvement_and_resumes():
    saved, logged = [], []
    keeper = BestCheckpoint("lcb", lambda: saved.append(len(saved)),
                            lambda step, row: logged.append((step, row)))
    rows = [{f"sample_{k}": v for k, v in r.items() if k != "step"} for r in READINGS]
    assert [keeper(r["step"], row) for r, row in zip(READINGS, rows)] == [True, True, False]
    assert saved == [0, 1] and [s for s, _ in logged] == [0, 4]
    assert keeper.best_row() == {"best_by": "lcb", "best_value": pytest.approx(0.8),
                                 "selected_step": 4, "gold_best_step": 4, "selected_gold": 1.6,
                                 "selection_regret": 0.0}
    assert keeper(12, {"loss": 0.3}) is False  # an evaluation without sampled answers
    again = BestCheckpoint("lcb", lambda: saved.append("again"), lambda *a: None)
    again.load_state_dict(keeper.state_dict())
    assert again(12, {"sample_proxy": 0.7, "sample_gold": 2.0}) is False  # 0.7 < 0.8
    assert again(16, {"sample_proxy": 0.9, "sample_gold": 2.0}) is True
    assert saved[-1] == "again" and again.best_row()["selected_step"] == 16
    with pytest.raises(ValueError):
        BestCheckpoint("none", lambda: None, lambda *a: None)
