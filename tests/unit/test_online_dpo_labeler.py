"""The online-DPO reward-model labeler on small saved reward models whose raw rewards are set by
construction: which answers it picks, the soft label (each member's Bradley-Terry probability on
its raw, trained scale), and the ``--uncertain drop`` filter (normalised units).

The models share the tiny causal backbone; each head is solved (pseudo-inverse of the backbone's
features of the exact answers the labeler scores) so that the head outputs the raw rewards listed
in the test. Normalised reward = (raw - offset) / scale per member and aspect."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.unit

TEXTS = ["Name a colour.", "Give me a number."]
ANSWERS = [["Red.", "Blue is a calm colour.", "green"], ["7", "Forty-two, of course.", "one"]]

# Two members, one aspect; rows: prompt 0 answers 0..2, then prompt 1 answers 0..2.
RAW = [[1.0, 4.5, 2.0, 3.0, 0.3, 1.0],  # member 0, scale 2.7, offset 0.4
       [0.0, 1.0, 0.5, -2.0, 1.0, 0.0]]  # member 1, scale 1.0, offset -1.0
SCALE = [[2.7], [1.0]]
OFFSET = [[0.4], [-1.0]]
# Normalised: member 0 (r - 0.4) / 2.7 = [0.2222, 1.5185, 0.5926 | 0.9630, -0.0370, 0.2222]
#             member 1  r + 1.0        = [1.0,    2.0,    1.5    | -1.0,   2.0,     1.0]
# mean of the two (--combine mean):      [0.6111, 1.7593, 1.0463 | -0.0185, 0.9815, 0.6111]
# -> prompt 0: better 1, worse 0; prompt 1: better 1, worse 0.


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def save_reward_model(base, path, raw, scale, offset, aspects=("reward",), weights=None):
    """A shared-backbone reward model whose member m gives ``raw[m][row][aspect]`` (or
    ``raw[m][row]`` for one aspect) on the (TEXTS, ANSWERS) rows, saved to ``path``."""
    from alignkit.data.preferences import encode_response
    from alignkit.models.reward import RewardModel, RewardSpec, encode_batch

    spec = RewardSpec(backbone="causal", aspects=list(aspects), members=len(raw),
                      shared_backbone=True, aspect_weights=weights)
    model = RewardModel.create(str(base), spec)
    enc = [encode_response(model.tokenizer, t, a, "causal", spec.chat)
           for t, row in zip(TEXTS, ANSWERS) for a in row]
    batch = encode_batch(enc, model.tokenizer.pad_token_id, spec.max_length)
    with torch.no_grad():
        features = model.members[0].features(batch).double()  # (6, H)
        for m, member in enumerate(model.members):
            target = torch.tensor(raw[m], dtype=torch.float64).reshape(len(enc), len(aspects))
            member.head.weight.copy_((torch.linalg.pinv(features) @ target).T.float())
        got = model.raw(batch)  # (M, 6, A): the construction worked
    assert torch.allclose(got, torch.tensor(raw).reshape(got.shape), atol=1e-4)
    spec.scale, spec.offset = scale, offset
    return model.save(path)


def label(folder, **kw) -> list[dict]:
    from alignkit.config import OnlineDPOConfig
    from alignkit.training.online import Labeler

    cfg = OnlineDPOConfig(reward_model=str(folder), samples_per_prompt=3, **kw)
    return Labeler(cfg, None, "cpu")(TEXTS, [None, None], ANSWERS, [[True] * 3] * 2, 0)


@pytest.fixture(scope="module")
def ensemble(tiny_model_dir, tmp_path_factory):
    return save_reward_model(tiny_model_dir, tmp_path_factory.mktemp("rm") / "rm", RAW, SCALE,
                             OFFSET)


def test_better_and_worse_are_the_best_and_worst_by_the_combined_reward(ensemble):
    labels = label(ensemble)
    assert [(x["better"], x["worse"]) for x in labels] == [(1, 0), (1, 0)]
    # reward: the mean of the prompt's combined rewards (see the table at the top)
    assert labels[0]["reward"] == pytest.approx((0.6111 + 1.7593 + 1.0463) / 3, abs=1e-4)
    # --combine min: prompt 1's combined rewards are min(0.9630, -1.0) = -1.0,
    # min(-0.0370, 2.0) = -0.0370, min(0.2222, 1.0) = 0.2222 -> better 2, worse 0
    assert [(x["better"], x["worse"]) for x in label(ensemble, combine="min")] == [(1, 0), (2, 0)]


def test_soft_label_is_the_members_mean_bradley_terry_probability_on_the_raw_scale(ensemble):
    labels = label(ensemble)
    # prompt 0, answer 1 vs answer 0: raw margins 4.5 - 1.0 = 3.5 and 1.0 - 0.0 = 1.0
    want0 = (sigmoid(3.5) + sigmoid(1.0)) / 2  # (0.970688 + 0.731059) / 2 = 0.850873
    # prompt 1, answer 1 vs answer 0: raw margins 0.3 - 3.0 = -2.7 and 1.0 - (-2.0) = 3.0
    want1 = (sigmoid(-2.7) + sigmoid(3.0)) / 2  # (0.062973 + 0.952574) / 2 = 0.507774
    assert labels[0]["label"] == pytest.approx(want0, abs=1e-5)
    assert labels[1]["label"] == pytest.approx(want1, abs=1e-5)
    assert want0 == pytest.approx(0.850873, abs=1e-6) and want1 == pytest.approx(0.507774, abs=1e-6)
    # the sigmoid of the normalised margins (member 0's divided by its scale 2.7) is another
    # number: (sigmoid(3.5 / 2.7) + sigmoid(1.0)) / 2 = (0.785211 + 0.731059) / 2 = 0.758135
    # and (sigmoid(-1.0) + sigmoid(3.0)) / 2 = (0.268941 + 0.952574) / 2 = 0.610758
    assert abs(labels[0]["label"] - 0.758135) > 0.09
    assert abs(labels[1]["label"] - 0.610758) > 0.1
    # --combine min picks answer 2 over answer 0 for prompt 1: raw margins 1.0 - 3.0 = -2.0 and
    # 0.0 - (-2.0) = 2.0, so the members' probabilities sigmoid(-2) + sigmoid(2) = 1 average to 1/2
    assert label(ensemble, combine="min")[1]["label"] == pytest.approx(0.5, abs=1e-5)


def test_margin_and_std_are_in_normalised_units(ensemble):
    labels = label(ensemble)
    # prompt 0: normalised margins 3.5 / 2.7 = 1.296296 and 1.0: mean 1.148148, sample std
    # |1.296296 - 1.0| / sqrt(2) = 0.209513
    assert labels[0]["margin"] == pytest.approx(1.148148, abs=1e-5)
    assert labels[0]["std"] == pytest.approx(0.209513, abs=1e-5)
    # prompt 1: -2.7 / 2.7 = -1.0 and 3.0: mean 1.0, std 4 / sqrt(2) = 2.828427
    assert labels[1]["margin"] == pytest.approx(1.0, abs=1e-5)
    assert labels[1]["std"] == pytest.approx(2.828427, abs=1e-5)


def test_drop_filter_on_the_labels(ensemble):
    from alignkit.config import OnlineDPOConfig
    from alignkit.training.online import keep_pair

    labels = label(ensemble)  # margins 1.148 and 1.0, stds 0.210 and 2.828 (test above)

    def kept(**kw) -> list[bool]:
        return [keep_pair(x, OnlineDPOConfig(**kw)) for x in labels]

    assert kept(uncertain="keep", min_margin=5.0, max_std=0.1) == [True, True]  # only drop filters
    assert kept(uncertain="soft", min_margin=5.0, max_std=0.1) == [True, True]
    assert kept(uncertain="drop") == [True, True]  # min margin 0, no std limit
    assert kept(uncertain="drop", min_margin=1.1) == [True, False]
    assert kept(uncertain="drop", min_margin=0.99) == [True, True]
    assert kept(uncertain="drop", max_std=1.0) == [True, False]
    assert kept(uncertain="drop", max_std=0.2) == [False, False]
    assert kept(uncertain="drop", min_margin=1.2) == [False, False]


def test_keep_pair_reads_std_then_margin():
    from alignkit.config import OnlineDPOConfig
    from alignkit.training.online import keep_pair

    cfg = OnlineDPOConfig(uncertain="drop", max_std=0.5, min_margin=0.25)
    assert keep_pair({"std": 0.5, "margin": 0.25}, cfg)  # both limits inclusive
    assert not keep_pair({"std": 0.51, "margin": 3.0}, cfg)
    assert not keep_pair({"std": 0.0, "margin": 0.24}, cfg)
    assert not keep_pair({"std": 0.0, "margin": -1.0}, cfg)


def test_multi_aspect_label_uses_the_aspect_combination_of_the_raw_heads(tiny_model_dir, tmp_path):
    # one member, aspects helpful (scale 2, weight 0.75) and harmless (scale 0.5, weight 0.25);
    # rows: [helpful, harmless] raw per answer, prompt 0 then prompt 1
    raw = [[[0.0, 1.0], [4.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]]
    folder = save_reward_model(tiny_model_dir, tmp_path / "rm", raw, [[2.0, 0.5]], [[0.0, 0.0]],
                               aspects=("helpful", "harmless"),
                               weights={"helpful": 0.75, "harmless": 0.25})
    labels = label(folder)
    # prompt 0 normalised [helpful, harmless]: [0, 2], [2, 0], [0.5, 2]; combined 0.75 h + 0.25 s:
    # 0.5, 1.5, 0.875 -> better 1, worse 0
    assert (labels[0]["better"], labels[0]["worse"]) == (1, 0)
    # the trained reward of an untagged comparison is the same combination of the raw heads:
    # 0.75 * 0 + 0.25 * 1 = 0.25 and 0.75 * 4 + 0.25 * 0 = 3.0: margin 2.75
    assert labels[0]["label"] == pytest.approx(sigmoid(2.75), abs=1e-5)  # 0.939913
    assert sigmoid(2.75) == pytest.approx(0.939913, abs=1e-6)
    assert labels[0]["margin"] == pytest.approx(1.0, abs=1e-5)  # normalised: 1.5 - 0.5
    assert abs(labels[0]["label"] - sigmoid(1.0)) > 0.2  # sigmoid(1.0) = 0.731059
    # prompt 1 normalised: [0, 0], [1, 0], [0, 2]; combined 0, 0.75, 0.5 -> better 1, worse 0;
    # raw combined 0 and 1.5: label sigmoid(1.5) = 0.817574
    assert (labels[1]["better"], labels[1]["worse"]) == (1, 0)
    assert labels[1]["label"] == pytest.approx(sigmoid(1.5), abs=1e-5)
