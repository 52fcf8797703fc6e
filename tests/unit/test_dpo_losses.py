"""DPO-family losses against hand-computed values.

The running example: policy log-probs chosen -10, rejected -12; reference -11 and -11. The
log-ratios are +1 (chosen) and -1 (rejected), so h = 2. With beta = 0.5, beta*h = 1, and
-log sigma(1) = log(1 + e^-1) = 0.3132616875, -log sigma(-1) = 1 + 0.3132616875 = 1.3132616875.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.dpo import dpo_loss, rpo_term

pytestmark = pytest.mark.unit

NLS1 = math.log1p(math.exp(-1.0))  # -log sigma(1) = 0.31326168751822286
NLSM1 = 1.0 + NLS1  # -log sigma(-1)


def run(loss_type="sigmoid", beta=0.5, eps=0.0, ref=True, margin=None, labels=None,
        pc=-10.0, pr=-12.0, rc=-11.0, rr=-11.0):
    t = lambda x: torch.tensor([x])
    return dpo_loss(t(pc), t(pr), t(rc) if ref else None, t(rr) if ref else None, beta,
                    loss_type, eps, margin, labels)


def test_sigmoid_is_eq7_of_rafailov_and_rewards_are_beta_log_ratios():
    losses, chosen, rejected = run()
    assert losses.item() == pytest.approx(NLS1, abs=1e-7)  # 0.3132617
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)


def test_beta_scales_the_log_ratio_difference():
    # only beta*h matters: beta 1 with h = 1 (policy chosen -10.5) equals beta 0.5 with h = 2
    a, _, _ = run(beta=1.0, pc=-10.5, pr=-11.5)
    b, _, _ = run(beta=0.5)
    assert a.item() == pytest.approx(b.item(), abs=1e-7)
    # beta 0.25: beta*h = 0.5 -> log(1 + e^-0.5) = 0.4740769842
    c, chosen, _ = run(beta=0.25)
    assert c.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-7)
    assert chosen.item() == pytest.approx(0.25)


def test_cdpo_label_smoothing_and_its_limits():
    # eps = 0.1: 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617
    assert run(eps=0.1)[0].item() == pytest.approx(0.9 * NLS1 + 0.1 * NLSM1, abs=1e-7)
    assert run(eps=0.1)[0].item() == pytest.approx(0.4132617, abs=1e-6)
    assert run(eps=0.0)[0].item() == pytest.approx(run()[0].item(), abs=0)  # eps 0 is DPO
    # eps = 0.5 is a coin flip: 0.5 * (0.3132617 + 1.3132617) = 0.8132617, the tie loss
    assert run(eps=0.5)[0].item() == pytest.approx(0.8132617, abs=1e-6)
    tie = run(labels=torch.tensor([0.5]))[0].item()
    assert tie == pytest.approx(0.8132617, abs=1e-6)


def test_robust_dpo_unbiased_under_flips():
    # eps = 0.1: (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8 = 0.1882617
    assert run("robust", eps=0.1)[0].item() == pytest.approx(0.1882617, abs=1e-6)
    assert run("robust", eps=0.0)[0].item() == pytest.approx(NLS1, abs=1e-7)  # eps 0 is DPO
    with pytest.raises(ValueError):
        run("robust", eps=0.5)


def test_ipo_squares_the_distance_to_one_over_two_beta():
    # beta 0.5: (h - 1/(2*0.5))^2 = (2 - 1)^2 = 1; beta 0.25: (2 - 2)^2 = 0
    assert run("ipo")[0].item() == pytest.approx(1.0)
    assert run("ipo", beta=0.25)[0].item() == pytest.approx(0.0)
    # margin raises the target: (2 - (1 + 0.5))^2 = 0.25
    assert run("ipo", margin=0.5)[0].item() == pytest.approx(0.25)


def test_hinge_is_slic():
    assert run("hinge")[0].item() == pytest.approx(0.0)  # 1 - beta*h = 0
    assert run("hinge", beta=0.25)[0].item() == pytest.approx(0.5)  # 1 - 0.5
    assert run("hinge", pc=-13.0)[0].item() == pytest.approx(1.5)  # h = -2 - (-1) = -1: 1 + 0.5


def test_reference_free_drops_the_reference():
    # with the reference (-11, -9): h = (1) - (-3) = 4, beta*h = 2; without: h = 2, beta*h = 1
    with_ref = run(rc=-11.0, rr=-9.0)[0].item()
    assert with_ref == pytest.approx(math.log1p(math.exp(-2.0)), abs=1e-7)  # 0.1269280
    free, chosen, rejected = run(ref=False, rc=-11.0, rr=-9.0)
    assert free.item() == pytest.approx(NLS1, abs=1e-7)
    assert chosen.item() == pytest.approx(-5.0) and rejected.item() == pytest.approx(-6.0)


def test_margin_is_an_offset_odpo():
    # beta*h - margin = 1 - 1 = 0 -> log 2
    assert run(margin=1.0)[0].item() == pytest.approx(math.log(2.0), abs=1e-7)
    per_pair = dpo_loss(torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0]),
                        torch.tensor([-11.0, -11.0]), torch.tensor([-11.0, -11.0]), 0.5,
                        margin=torch.tensor([0.0, 1.0]))[0]
    assert per_pair.tolist() == pytest.approx([NLS1, math.log(2.0)], abs=1e-7)


def test_a_batch_is_the_single_pairs_side_by_side_and_grads_flow():
    pc = torch.tensor([-10.0, -5.0, -7.0], requires_grad=True)
    pr = torch.tensor([-12.0, -6.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0, -7.0]), torch.tensor([-11.0, -6.0, -4.0])
    losses, _, _ = dpo_loss(pc, pr, rc, rr, 0.5)
    # pair 2: h = (0) - (1) = -1 -> beta*h = -0.5 -> log(1 + e^0.5) = 0.9740769842
    assert losses.tolist() == pytest.approx([NLS1, math.log(2.0), math.log1p(math.exp(0.5))],
                                            abs=1e-6)
    losses.sum().backward()
    # d/d pc of -log sigma(beta*h) = -beta * sigma(-beta*h); pair 1: -0.5 * sigma(-1)
    assert pc.grad[0].item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-7)


def test_rpo_term_is_the_chosen_per_token_nll():
    assert rpo_term(torch.tensor([12.0, 3.0]), torch.tensor([4, 3])).tolist() == [3.0, 1.0]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="beta"):
        run(beta=0.0)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        run("kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        run(eps=0.7)
