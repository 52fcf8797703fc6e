"""Gao et al. 2022's over-optimisation forms: fits recover known coefficients, match a
hand-solved least-squares problem, and place the peak where the closed form says."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.evaluation.scaling_laws import fit_gao, gao_curve

pytestmark = pytest.mark.unit


def test_bon_fit_matches_the_normal_equations_solved_by_hand():
    # features [d, -d^2] at d = 1, 2, 3: X'X = [[14, -36], [-36, 98]], det 76
    d = torch.tensor([1.0, 2.0, 3.0])
    exact = fit_gao(d, torch.tensor([1.0, 1.0, 0.0]), "bon")
    assert (exact.alpha, exact.beta) == pytest.approx((1.5, 0.5), abs=1e-12)
    assert exact.r2 == pytest.approx(1.0, abs=1e-12)
    assert (exact.peak_d, exact.peak_gain) == pytest.approx((1.5, 1.125), abs=1e-12)
    # X'y = [4.5, -9.5] -> alpha 99/76, beta 29/76; residuals (6, -6, 2)/76, SS_res 1/76,
    # SS_tot 1/6 -> R^2 = 70/76
    noisy = fit_gao(d, torch.tensor([1.0, 1.0, 0.5]), "bon")
    assert (noisy.alpha, noisy.beta) == pytest.approx((99 / 76, 29 / 76), abs=1e-12)
    assert noisy.r2 == pytest.approx(70 / 76, abs=1e-12)


def test_rl_fit_recovers_its_coefficients_and_peak():
    d = torch.linspace(0.2, 5.0, 25)
    gain = d * (1.2 - 0.4 * d.double().log())
    fit = fit_gao(d, gain, "rl")
    assert (fit.alpha, fit.beta) == pytest.approx((1.2, 0.4), abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    # d* = exp(alpha / beta - 1) = e^2; R(d*) = e^2 (1.2 - 0.4 * 2) = 0.4 e^2
    assert fit.peak_d == pytest.approx(math.e ** 2, rel=1e-9)
    assert fit.peak_gain == pytest.approx(0.4 * math.e ** 2, rel=1e-9)
    assert float(gao_curve(torch.tensor([0.0]), 1.2, 0.4, "rl")[0]) == 0.0


def test_a_curve_that_never_turns_down_has_no_peak():
    d = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    fit = fit_gao(d, 2 * d + 0.1 * d * d, "bon")  # beta = -0.1: gold keeps rising
    assert fit.beta == pytest.approx(-0.1, abs=1e-12) and fit.peak_d is None


@pytest.mark.parametrize("d,gain,message", [
    ([1.0], [0.5], "at least two distinct distances"),
    ([1.0, 1.0, 0.0], [0.1, 0.2, 0.0], "at least two distinct distances"),
    ([-1.0, 1.0], [0.0, 1.0], "finite and >= 0"),
    ([1.0, 2.0], [0.0, float("nan")], "finite and >= 0"),
    ([1.0, 2.0], [0.0], "2 distances but 1 gains"),
])
def test_degenerate_inputs_are_refused(d, gain, message):
    with pytest.raises(ValueError, match=message):
        fit_gao(torch.tensor(d), torch.tensor(gain), "rl")
