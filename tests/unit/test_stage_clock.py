"""The pipelines' stage clock (``utils.logs.StageClock``): each lap is the time since the last
one, kept in the order the stages ran, and the summary line gives minutes."""

from __future__ import annotations

import pytest

from alignkit.utils.logs import StageClock

pytestmark = pytest.mark.unit


def test_laps_are_the_time_since_the_last_lap_in_order():
    readings = iter([100.0, 160.04, 250.0, 250.0, 250.04])
    clock = StageClock(now=lambda: next(readings))  # starts at 100.0
    clock.lap("sft")
    clock.lap("reward-r1")
    clock.lap("empty")  # a stage that took no time still has its lap
    # each lap to a tenth of a second: 60.04 and 89.96 seconds
    assert clock.seconds == {"sft": 60.0, "reward-r1": 90.0, "empty": 0.0}
    assert list(clock.seconds) == ["sft", "reward-r1", "empty"]
    assert clock.elapsed() == 150.0  # from the start: 250.04 - 100.0, to a tenth
    assert clock.line(150.0) == "time: 2.5 min (sft 1.0, reward-r1 1.5, empty 0.0; minutes)"
