"""Reward losses, metrics, ensemble and aspect combinations against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.errors import UserError
from alignkit.losses.reward import (auroc, bradley_terry_loss, combine_aspects, combine_ensemble,
                                    expected_calibration_error, gate_shortfall, pairwise_metrics,
                                    per_prompt_weights, plackett_luce_loss, ranking_to_pairs,
                                    weighted_mean)

pytestmark = pytest.mark.unit

LN3 = math.log(3.0)
T = torch.tensor


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_computed():
    # d = ln 3  -> sigmoid(d) = 3/4 -> loss = -ln(3/4) = ln(4/3) = 0.287682
    # d = 0     -> sigmoid = 1/2    -> ln 2 = 0.693147
    # d = -ln 3 -> sigmoid = 1/4    -> ln 4 = 1.386294
    losses = bradley_terry_loss(T([LN3, 1.0, 0.0]), T([0.0, 1.0, LN3]))
    assert losses.shape == (3,)
    assert losses.tolist() == pytest.approx([0.287682, 0.693147, 1.386294], abs=1e-6)


def test_single_pair_batch_and_gradient():
    # one comparison, d = ln 3: loss ln(4/3); dloss/dr_c = -(1 - sigmoid(d)) = -1/4, dr_r = +1/4
    chosen = T([LN3], requires_grad=True)
    rejected = T([0.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    loss.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.25, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.25, abs=1e-6)


def test_margin_is_subtracted_from_the_difference():
    # r_c - r_r = 2, margin 2 -> d = 0 -> ln 2
    # r_c - r_r = ln 3 + 1, margin 1 -> d = ln 3 -> ln(4/3)
    losses = bradley_terry_loss(T([2.0, LN3 + 1.0]), T([0.0, 0.0]), margin=T([2.0, 1.0]))
    assert losses.tolist() == pytest.approx([math.log(2), math.log(4 / 3)], abs=1e-6)
    # a scalar margin applies to every pair
    scalar = bradley_terry_loss(T([2.0, 3.0]), T([0.0, 1.0]), margin=2.0)
    assert scalar.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-6)


def test_label_smoothing():
    c, r = T([LN3, 0.0, -LN3]), T([0.0, 0.0, 0.0])
    # eps = 0 is plain Bradley-Terry
    assert torch.allclose(bradley_terry_loss(c, r, label_smoothing=0.0), bradley_terry_loss(c, r))
    # eps = 0.1 at d = ln 3: 0.9 * ln(4/3) + 0.1 * ln 4 = 0.258914 + 0.138629 = 0.397543
    assert bradley_terry_loss(c[:1], r[:1], label_smoothing=0.1).item() == pytest.approx(
        0.397543, abs=1e-6)
    # eps = 0.5: 0.5 * (softplus(-d) + softplus(d)); d = 0 -> ln 2 (its minimum);
    # d = +-ln 3 -> 0.5 * (ln(4/3) + ln 4) = 0.5 * ln(16/3) = 0.836988 (symmetric in d)
    half = bradley_terry_loss(c, r, label_smoothing=0.5)
    assert half.tolist() == pytest.approx([0.836988, 0.693147, 0.836988], abs=1e-6)
    with pytest.raises(ValueError):
        bradley_terry_loss(c, r, label_smoothing=0.6)


def test_ties_are_soft_labels():
    # a tie (label 0.5) at d = ln 3: -0.5 ln(3/4) - 0.5 ln(1/4) = 0.836988; at d = 0: ln 2
    c, r = T([LN3, 0.0, LN3]), T([0.0, 0.0, 0.0])
    losses = bradley_terry_loss(c, r, labels=T([0.5, 0.5, 1.0]))
    assert losses.tolist() == pytest.approx([0.836988, 0.693147, 0.287682], abs=1e-6)
    # label smoothing leaves a tie a tie
    assert bradley_terry_loss(c[:1], r[:1], labels=0.5, label_smoothing=0.2).item() == \
        pytest.approx(0.836988, abs=1e-6)
    # the gradient of a tie pulls d towards 0: dloss/dd = sigmoid(d) - 0.5 = 0.25 at d = ln 3
    d = T([LN3], requires_grad=True)
    bradley_terry_loss(d, T([0.0]), labels=0.5).sum().backward()
    assert d.grad.item() == pytest.approx(0.25, abs=1e-6)


def test_large_differences_are_finite():
    losses = bradley_terry_loss(T([200.0, -200.0]), T([0.0, 0.0]))
    assert losses[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses[1].item() == pytest.approx(200.0, rel=1e-6)


def test_weighted_mean_and_per_prompt_weights():
    # (1*1 + 0*2 + 3*3) / (1 + 0 + 3) = 10 / 4 = 2.5
    assert weighted_mean(T([1.0, 2.0, 3.0]), T([1.0, 0.0, 3.0])).item() == pytest.approx(2.5)
    assert weighted_mean(T([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
    assert weighted_mean(T([1.0]), T([0.0])).item() == 0.0
    # prompt 0 has 3 pairs, prompt 1 one: coefficients 1/3, 1/3, 1/3, 1
    group = T([0, 0, 0, 1])
    coef = per_prompt_weights(group)
    assert coef.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    # losses (1, 2, 3 | 10): prompt means 2 and 10 -> mean over prompts 6 (not the pair mean 4)
    assert weighted_mean(T([1.0, 2.0, 3.0, 10.0]), coef).item() == pytest.approx(6.0)
    # annotator weights inside a prompt: (0.5, 1, 1.5 | 2) / counts -> (1/6, 1/3, 1/2 | 2)
    coef = per_prompt_weights(group, T([0.5, 1.0, 1.5, 2.0]))
    assert coef.tolist() == pytest.approx([1 / 6, 1 / 3, 0.5, 2.0])


# ----------------------------------------------------------------------------- rankings


def test_ranking_to_pairs_k4_gives_6_pairs():
    pairs = ranking_to_pairs([3, 1, 0, 2])
    assert pairs == [(3, 1), (3, 0), (3, 2), (1, 0), (1, 2), (0, 2)]  # 4 * 3 / 2 = 6
    assert ranking_to_pairs(torch.tensor([1, 0])) == [(1, 0)]


def test_plackett_luce_k2_equals_bradley_terry():
    torch.manual_seed(0)
    rewards = torch.randn(5, 2)
    ranking = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0]])
    best = rewards.gather(1, ranking[:, :1])[:, 0]
    worst = rewards.gather(1, ranking[:, 1:])[:, 0]
    assert torch.allclose(plackett_luce_loss(rewards, ranking), bradley_terry_loss(best, worst),
                          atol=1e-6)


def test_plackett_luce_k3_hand_computed():
    # exp(rewards) = (1, 2, 3).
    # ranking 2 > 1 > 0: P = 3/(1+2+3) * 2/(1+2) * 1 = 1/3   -> nll ln 3  = 1.098612
    # ranking 0 > 1 > 2: P = 1/6 * 2/(2+3) = 1/15             -> nll ln 15 = 2.708050
    rewards = torch.log(T([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
    ranking = T([[2, 1, 0], [0, 1, 2]])
    assert plackett_luce_loss(rewards, ranking).tolist() == pytest.approx([1.098612, 2.708050],
                                                                          abs=1e-5)


def test_plackett_luce_mask_for_shorter_rankings():
    # row 0: a full K = 3 ranking as above (ln 3). row 1: only 2 responses; the padded third
    # (reward 99, index -1) must not matter: P = 3/(3+1) -> nll ln(4/3) = 0.287682
    rewards = T([[0.0, math.log(2.0), LN3], [LN3, 0.0, 99.0]], requires_grad=True)
    ranking = T([[2, 1, 0], [0, 1, -1]])
    mask = T([[True, True, True], [True, True, False]])
    loss = plackett_luce_loss(rewards, ranking, mask)
    assert loss.tolist() == pytest.approx([1.098612, 0.287682], abs=1e-5)
    loss.sum().backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2].item() == 0.0  # padding gets no gradient
    # d nll / d r_best of row 1 = -(1 - 3/4) = -0.25
    assert rewards.grad[1, 0].item() == pytest.approx(-0.25, abs=1e-6)


# ----------------------------------------------------------------------------- metrics


def test_pairwise_metrics_hand_computed():
    # d = (ln 3, 0, -1): accuracy (1 + 0.5 + 0) / 3 = 0.5
    # log-loss (ln(4/3) + ln 2 + ln(1 + e)) / 3 = (0.287682 + 0.693147 + 1.313262) / 3 = 0.764697
    # ECE: confidences 0.75 (right), 0.5 (half right), sigmoid(1) = 0.731059 (wrong).
    #   bin (0.7, 0.8]: 2 items, accuracy 0.5, confidence 0.740530 -> 2/3 * 0.240530 = 0.160353
    #   bin (0.4, 0.5]: 1 item, accuracy 0.5, confidence 0.5 -> 0
    m = pairwise_metrics(T([LN3, 0.0, 1.0]), T([0.0, 0.0, 2.0]))
    assert m["n"] == 3
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["log_loss"] == pytest.approx(0.764697, abs=1e-6)
    assert m["ece"] == pytest.approx(0.160353, abs=1e-6)


def test_expected_calibration_error_hand_computed():
    # p      label  confidence  correct  bin
    # 0.95   1      0.95        1        (0.9, 1.0]
    # 0.82   1      0.82        1        (0.8, 0.9]
    # 0.88   0      0.88        0        (0.8, 0.9]
    # 0.25   1      0.75        0        (0.7, 0.8]
    # 0.65   1      0.65        1        (0.6, 0.7]
    # 0.50   0      0.50        0.5      (0.4, 0.5]
    # ECE = (|1-.95| + 2*|0.5-0.85| + |0-.75| + |1-.65| + 0) / 6 = 1.85 / 6 = 0.308333
    probs = T([0.95, 0.82, 0.88, 0.25, 0.65, 0.5])
    labels = T([1, 1, 0, 1, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.308333, abs=1e-6)
    # a perfectly calibrated bin: confidence 0.75, right 3 times out of 4 -> 0
    assert expected_calibration_error(T([0.75] * 4), T([1, 1, 1, 0])) == pytest.approx(0.0,
                                                                                       abs=1e-12)


def test_auroc_hand_computed_with_ties():
    # positives 0.4, 0.8; negatives 0.1, 0.4. Pairs: (0.4>0.1) 1, (0.4=0.4) 1/2, (0.8>0.1) 1,
    # (0.8>0.4) 1 -> 3.5 / 4 = 0.875
    assert auroc(T([0.1, 0.4, 0.4, 0.8]), T([0, 0, 1, 1])) == pytest.approx(0.875)
    assert auroc(T([0.1, 0.2, 0.3]), T([0, 1, 1])) == pytest.approx(1.0)
    assert auroc(T([0.3, 0.2, 0.1]), T([0, 1, 1])) == pytest.approx(0.0)
    assert auroc(T([0.5, 0.5, 0.5]), T([0, 1, 1])) == pytest.approx(0.5)  # all tied
    assert math.isnan(auroc(T([0.1, 0.2]), T([1, 1])))


# ----------------------------------------------------------------------------- ensembles


def test_combine_ensemble_hand_computed():
    # 3 members, 2 responses. Column 0: (1, 3, 2): mean 2, population variance (1+1+0)/3 = 2/3,
    # std 0.816497, min 1. Column 1: (0, 0, 3): mean 1, variance (1+1+4)/3 = 2, std 1.414214, min 0.
    members = T([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    combined, mean, std = combine_ensemble(members, "mean")
    assert mean.tolist() == pytest.approx([2.0, 1.0])
    assert std.tolist() == pytest.approx([0.816497, 1.414214], abs=1e-6)
    assert combined.tolist() == pytest.approx([2.0, 1.0])
    assert combine_ensemble(members, "min")[0].tolist() == pytest.approx([1.0, 0.0])
    # mean - 1 * std = (1.183503, -0.414214); mean - 0.5 * var = (2 - 1/3, 1 - 1) = (1.666667, 0)
    assert combine_ensemble(members, "mean_minus_std", lam=1.0)[0].tolist() == pytest.approx(
        [1.183503, -0.414214], abs=1e-6)
    assert combine_ensemble(members, "mean_minus_var", lam=0.5)[0].tolist() == pytest.approx(
        [1.666667, 0.0], abs=1e-6)


def test_combine_ensemble_single_member_and_errors():
    combined, mean, std = combine_ensemble(T([[0.5, -1.0]]), "mean_minus_std", lam=2.0)
    assert std.tolist() == [0.0, 0.0]  # population std: defined for M = 1
    assert combined.tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="unknown ensemble combination"):
        combine_ensemble(T([[1.0]]), "median")


# ----------------------------------------------------------------------------- aspects


ASPECTS = {"helpful": T([2.0, 2.0, -1.0, 0.5]), "harmless": T([1.0, -0.5, 0.5, -2.0])}


def test_combine_aspects_weighted():
    # S = 1 * helpful + 0.5 * harmless = (2.5, 1.75, -0.75, -0.5)
    combined = combine_aspects(ASPECTS, {"helpful": 1.0, "harmless": 0.5})
    assert combined.tolist() == pytest.approx([2.5, 1.75, -0.75, -0.5])


def test_combine_aspects_with_a_harmlessness_floor():
    # floor harmless >= 0, penalty 1. Shortfall v = harmless - 0 = (1, -0.5, 0.5, -2).
    #   v >= 0: S                         -> 2.5, -0.75
    #   v <  0: min(S, v - 1)             -> min(1.75, -1.5) = -1.5; min(-0.5, -3) = -3
    weights = {"helpful": 1.0, "harmless": 0.5}
    combined = combine_aspects(ASPECTS, weights, floor={"harmless": 0.0}, gate_penalty=1.0)
    assert combined.tolist() == pytest.approx([2.5, -1.5, -0.75, -3.0])
    assert gate_shortfall(ASPECTS, {"harmless": 0.0}).tolist() == pytest.approx(
        [1.0, -0.5, 0.5, -2.0])


def test_combine_aspects_is_monotone():
    # raising either aspect never lowers the combined reward, across the floor too
    grid = torch.linspace(-3, 3, 61)
    help_, harm = torch.meshgrid(grid, grid, indexing="ij")
    out = combine_aspects({"helpful": help_.flatten(), "harmless": harm.flatten()},
                          {"helpful": 1.0, "harmless": 0.3}, floor={"harmless": 0.2},
                          gate_penalty=0.5).reshape(61, 61)
    assert (out.diff(dim=0) >= -1e-6).all() and (out.diff(dim=1) >= -1e-6).all()


def test_combine_aspects_errors():
    with pytest.raises(ValueError, match="honesty"):
        combine_aspects(ASPECTS, {"honesty": 1.0})
    with pytest.raises(ValueError, match="floor"):
        combine_aspects(ASPECTS, {"helpful": 1.0}, floor={"safety": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        combine_aspects(ASPECTS, {"helpful": -1.0})
    with pytest.raises(ValueError, match="gate_penalty"):
        combine_aspects(ASPECTS, {"helpful": 1.0}, gate_penalty=-1.0)


def test_a_reward_models_bad_combination_rules_are_user_errors_naming_the_flags():
    """The pure combinations raise ValueError; the reward model, whose spec the flags set,
    reports them as the CLI's error naming those flags."""
    from alignkit.models.reward import RewardModel, RewardSpec

    spec = RewardSpec(aspects=["helpful", "harmless"], aspect_weights={"honesty": 1.0})
    with pytest.raises(UserError, match=r"^the weights names aspect 'honesty', but the reward "
                                        r"model has harmless, helpful \(alignkit reward "
                                        r"--aspect-weights / --aspect-floor / --gate-penalty"):
        RewardModel(spec, [], None).combine(torch.zeros(1, 3, 2))
    with pytest.raises(UserError, match=r"^--combine: unknown ensemble combination 'median'; "
                                        r"choose one of mean, min"):
        RewardModel(RewardSpec(combine="median"), [], None).combine(torch.zeros(1, 3, 1))
    # the same model with valid rules combines
    spec = RewardSpec(aspects=["helpful", "harmless"], aspect_weights={"helpful": 1.0})
    scores = RewardModel(spec, [], None).combine(T([[[1.0, 5.0], [2.0, 5.0]]]))
    assert scores.combined.tolist() == pytest.approx([1.0, 2.0])
