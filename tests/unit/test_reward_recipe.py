"""Pieces of the reward stage with hand-computed values: option parsing, bootstrap weights, the
per-member comparison weights and losses of an ensemble batch."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.errors import UserError
from alignkit.training.reward import (bootstrap_weights, comparison_weights, member_losses,
                                     parse_weights)

pytestmark = pytest.mark.unit


def test_parse_weights():
    assert parse_weights("ann-0=1, ann-4=0.3", "x") == {"ann-0": 1.0, "ann-4": 0.3}
    assert parse_weights("", "x") == {}
    for bad in ("a", "a=", "=1", "a=b"):
        with pytest.raises(UserError, match="--aspect-floor: expected name=number"):
            parse_weights(bad, "aspect-floor")


def test_bootstrap_weights_are_poisson_counts_and_seeded():
    w = bootstrap_weights(2000, 3, seed=7, enabled=True)
    assert w.shape == (3, 2000) and torch.equal(w, bootstrap_weights(2000, 3, 7, True))
    assert (w == w.round()).all() and (w >= 0).all()
    # Poisson(1): mean 1, P(0) = e^-1 = 0.3679 (about a third of prompts left out per member)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.05)
    assert float((w == 0).float().mean()) == pytest.approx(math.exp(-1), abs=0.02)
    assert not torch.equal(w[0], w[1])
    assert torch.equal(bootstrap_weights(5, 3, 7, False), torch.ones(3, 5))
    assert torch.equal(bootstrap_weights(5, 1, 7, True), torch.ones(1, 5))


class Batch:  # the fields of PreferenceBatch that the loss reads
    def __init__(self):
        # group 0 holds comparisons 0 and 1, group 1 holds comparison 2
        self.group = torch.tensor([0, 0, 1])
        self.weight = torch.tensor([1.0, 1.0, 0.5])  # an annotator weighted 0.5
        self.better = torch.tensor([0, 0, 2])
        self.worse = torch.tensor([1, 3, 3])
        self.margin = torch.zeros(3)
        self.label = torch.ones(3)


def test_comparison_weights_by_prompt_annotator_bootstrap_and_aspect():
    batch = Batch()
    heads = torch.tensor([0, -1, 1])  # tagged head 0, untagged (all heads), tagged head 1
    boot = torch.tensor([[1.0, 1.0, 2.0], [0.0, 0.0, 1.0]])  # member 1 left group 0 out
    w = comparison_weights(batch, heads, boot, num_aspects=2)
    # per prompt: comparisons of group 0 get 1/2 each, group 1's only one gets 0.5 (annotator)
    expected_m0 = torch.tensor([[0.5, 0.0], [0.5, 0.5], [0.0, 1.0]])  # boot 2 on the last
    assert torch.equal(w[0], expected_m0)
    assert torch.equal(w[1], torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.5]]))


def test_member_losses_hand_computed():
    batch = Batch()
    # rewards of 4 responses, one member, one head: d = r_better - r_worse
    raw = torch.tensor([[[math.log(3.0)], [0.0], [0.0], [0.0]]])
    w = torch.tensor([[[1.0], [0.0], [2.0]]])
    # comparison 0: d = ln 3 -> sigma = 3/4 -> loss ln(4/3) = 0.287682, weight 1
    # comparison 1: weight 0; comparison 2: d = 0 -> loss ln 2 = 0.693147, weight 2
    got = member_losses(raw, batch, w, label_smoothing=0.0)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(math.log(4 / 3) + 2 * math.log(2), abs=1e-6)


def test_pair_margins_read_the_tagged_head_or_the_combined_reward():
    from alignkit.models.reward import RewardModel, RewardSpec
    from alignkit.training.reward import pair_margins

    spec = RewardSpec(aspects=["helpful", "harmless"], members=1,
                      aspect_weights={"helpful": 1.0, "harmless": 2.0})
    model = RewardModel(spec, [], tokenizer=None)
    raw = torch.tensor([[[1.0, 5.0], [0.0, 2.0]]])  # 1 member, responses 0 and 1, 2 heads

    class Pairs:
        better = torch.tensor([0, 0])
        worse = torch.tensor([1, 1])

    got = pair_margins(raw, Pairs, torch.tensor([1, -1]), model)
    # tagged harmless: 5 - 2 = 3; untagged: (1 + 2*5) - (0 + 2*2) = 11 - 4 = 7
    assert got.tolist() == [[3.0, 7.0]]


def test_plackett_luce_training_loss_hand_computed(tiny_tokenizer):
    from alignkit.data.preferences import PreferencePair, build_groups, collate_groups
    from alignkit.data.schemas import RankingExample

    groups, _ = build_groups([RankingExample("Q", ["a", "b", "c"], [0, 1, 2]),
                              PreferencePair("P", "yes", "no")], tiny_tokenizer)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    assert batch.pair_ranking.tolist() == [0, 0, 0, -1]
    raw = torch.tensor([2.0, 1.0, 0.0, 0.5, -0.5])[None, :, None]  # (M=1, N=5, A=1)
    w = comparison_weights(batch, torch.full((4,), -1), torch.ones(1, 4), 1)
    # per prompt: the ranking's 3 pairs 1/3 each, the lone pair 1
    assert torch.allclose(w[0, :, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    e = math.e
    pl = (math.log(e ** 2 + e + 1) - 2) + (math.log(e + 1) - 1)  # -log P(a > b > c)
    bt_lone = math.log1p(math.exp(-1.0))
    got = member_losses(raw, batch, w, 0.0, "plackett_luce")
    assert float(got[0]) == pytest.approx(1.0 * pl / 2 + bt_lone, rel=1e-6)
    # Bradley-Terry on the three implied pairs instead
    bt = [math.log1p(math.exp(-d)) for d in (1.0, 2.0, 1.0)]
    got_bt = member_losses(raw, batch, w, 0.0, "bradley_terry")
    assert float(got_bt[0]) == pytest.approx(sum(bt) / 3 + bt_lone, rel=1e-6)
    # K = 2: Plackett-Luce is Bradley-Terry
    groups, _ = build_groups([RankingExample("Q", ["a", "b"], [1, 0])], tiny_tokenizer)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    raw = torch.tensor([[[0.3], [1.1]]])
    w = comparison_weights(batch, torch.full((1,), -1), torch.ones(1, 1), 1)
    assert torch.allclose(member_losses(raw, batch, w, 0.0, "plackett_luce"),
                          member_losses(raw, batch, w, 0.0, "bradley_terry"))
