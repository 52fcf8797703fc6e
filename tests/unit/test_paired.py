"""Two policies compared prompt by prompt (``evaluation.paired``), against values derived by
hand."""

from __future__ import annotations

import math

import pytest

from alignkit.evaluation.paired import paired_difference

pytestmark = pytest.mark.unit


def test_paired_difference_by_hand():
    # d = policy - baseline = [1, 2, 3, 6]; mean = 12 / 4 = 3; deviations -2, -1, 0, 3, squares
    # 4 + 1 + 0 + 9 = 14, sample variance 14 / (4 - 1) = 14/3, sd = sqrt(14/3) ~ 2.160;
    # se = sd / sqrt(4) = sqrt(14/3) / 2 ~ 1.080; 3 se ~ 3.240 > |3|: not beyond noise
    out = paired_difference([2.0, 2.5, 3.0, 7.0], [1.0, 0.5, 0.0, 1.0])
    assert out["n"] == 4
    assert out["mean"] == pytest.approx(3.0, abs=1e-12)
    assert out["sd"] == pytest.approx(math.sqrt(14 / 3), abs=1e-12)
    assert out["se"] == pytest.approx(math.sqrt(14 / 3) / 2, abs=1e-12)
    assert (out["beyond_noise"], out["direction"]) == (False, None)
    assert out["direction"] is None


def test_beyond_noise_in_either_direction():
    # d = [3, 4, 5]: mean 4, variance (1 + 0 + 1) / 2 = 1, sd 1, se 1/sqrt(3) ~ 0.577,
    # 3 se ~ 1.732 <= 4: beyond noise, the policy higher
    up = paired_difference([3.0, 4.0, 5.0], [0.0, 0.0, 0.0])
    assert (up["mean"], up["sd"]) == (pytest.approx(4.0), pytest.approx(1.0))
    assert up["se"] == pytest.approx(1 / math.sqrt(3))
    assert (up["beyond_noise"], up["direction"]) == (True, "higher")
    # the same differences the other way round: lower
    down = paired_difference([0.0, 0.0, 0.0], [3.0, 4.0, 5.0])
    assert down["mean"] == pytest.approx(-4.0) and down["se"] == pytest.approx(up["se"])
    assert (down["beyond_noise"], down["direction"]) == (True, "lower")
    # exactly at the threshold counts: d = [1, 3] -> mean 2, sd sqrt(2), se 1; threshold 2
    edge = paired_difference([1.0, 3.0], [0.0, 0.0], threshold=2.0)
    assert edge["se"] == pytest.approx(1.0) and edge["beyond_noise"]


def test_pairing_removes_what_the_prompts_share():
    # prompt difficulty varies a lot (unpaired se large) but the policy is 0.5 better on every
    # prompt: every d_i = 0.5, sd = se = 0, beyond noise
    base = [0.0, 2.0, -1.0, 4.0]
    out = paired_difference([b + 0.5 for b in base], base)
    assert out["mean"] == pytest.approx(0.5) and out["se"] == pytest.approx(0.0, abs=1e-12)
    assert out["beyond_noise"] and out["direction"] == "higher"


def test_a_policy_against_itself_and_the_edge_cases():
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same["mean"], same["se"], same["beyond_noise"]) == (0.0, 0.0, False)
    one = paired_difference([2.0], [1.0])
    assert (one["mean"], one["sd"], one["se"], one["beyond_noise"]) == (1.0, None, None, False)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no prompts"):
        paired_difference([], [])


def test_standard_error_by_hand():
    import torch

    from alignkit.evaluation.paired import standard_error

    # mean 2.5, sample variance ((1.5^2 + 0.5^2) * 2) / 3 = 5/3, se = sqrt(5/3) / 2
    assert standard_error(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        math.sqrt(5 / 3) / 2)
    assert standard_error(torch.tensor([7.0])) == 0.0
