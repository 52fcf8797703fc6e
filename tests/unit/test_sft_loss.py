"""The masked SFT loss against hand-computed values, and exact gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.sft import IGNORE, sft_loss_sum, token_nll

pytestmark = pytest.mark.unit


def test_masked_sft_loss_hand_computed():
    # Three positions over a vocabulary of 3.
    #  row 0: logits (0, 0, 0), target 2       -> p = 1/3, nll = ln 3
    #  row 1: logits (ln 2, 0, 0), target 0    -> p = 2/(2+1+1) = 1/2, nll = ln 2
    #  row 2: logits (5, -1, 3), target IGNORE -> no loss (a prompt token)
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [5.0, -1.0, 3.0]])
    targets = torch.tensor([2, 0, IGNORE])
    total, count = sft_loss_sum(logits, targets)
    assert count == 2
    assert total.item() == pytest.approx(math.log(6.0), abs=1e-6)  # ln 3 + ln 2
    assert (total / count).item() == pytest.approx(0.5 * math.log(6.0), abs=1e-6)  # 0.895880


def test_token_nll_matches_log_softmax_definition():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    targets = torch.tensor([0, 6, 3, 3, 1])
    expected = -torch.log_softmax(logits, -1)[torch.arange(5), targets]
    assert torch.allclose(token_nll(logits, targets), expected, atol=1e-6)


def test_all_ignored_gives_zero_and_keeps_graph():
    logits = torch.randn(2, 4, requires_grad=True)
    total, count = sft_loss_sum(logits, torch.tensor([IGNORE, IGNORE]))
    assert count == 0 and total.item() == 0.0
    total.backward()  # still differentiable: a micro-batch of prompts only must not crash
    assert torch.equal(logits.grad, torch.zeros(2, 4))


def test_batch8_accum1_equals_batch1_accum8(tiny_model_dir, tmp_path):
    """TRL's invariance check: the same optimiser steps whether the 8 examples of a step come as
    one micro-batch or as 8 accumulated ones (the loss is normalised by the step's tokens)."""
    from safetensors.torch import load_file

    from alignkit.config import SFTConfig
    from alignkit.cli import run

    finals = []
    for bs, acc in ((8, 1), (1, 8)):
        cfg = SFTConfig(model=str(tiny_model_dir), data="demo", output=str(tmp_path / f"b{bs}"),
                        batch_size=bs, grad_accum=acc, max_steps=3, lr=1e-3, eval_fraction=0.0,
                        save_every=0, progress=False,
                        # the arithmetic itself: bf16 rounding (--precision auto on CUDA)
                        # differs between one batch of 8 and 8 of 1 by far more than 1e-4
                        precision="fp32")
        result = run(cfg)
        finals.append((result.train_losses, load_file(str(result.final / "model.safetensors"))))
    (loss_a, w_a), (loss_b, w_b) = finals
    assert loss_a[1] == pytest.approx(loss_b[1], rel=1e-5)
    assert loss_a[2] == pytest.approx(loss_b[2], rel=1e-5)
    assert loss_a[3] == pytest.approx(loss_b[3], rel=1e-5)
    for name in w_a:
        assert (w_a[name] - w_b[name]).abs().max().item() < 1e-4, name
