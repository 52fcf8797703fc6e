"""How ``alignkit ppo`` assembles a batch's experience (``training.ppo.fill_experience``): the
rewards, KL placement, baselines and whitening of each advantage estimator, on hand-made rollouts
whose every number is derived by hand below."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.config import PPOConfig
from alignkit.generation.sampler import Rollout
from alignkit.losses import ppo as rl
from alignkit.training.ppo import Experience, fill_experience, kl_in_loss, whiten_advantages

pytestmark = pytest.mark.unit

# two prompts x two samples (consecutive), three response tokens, right-padded
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
SCORE = torch.tensor([1.0, 0.0, 2.0, 4.0])
BETA = 0.5


def experience(values: bool = False) -> tuple[Experience, dict]:
    """Policy log-probs 0.1 nats above the reference on every real token, so the per-token k1 is
    0.1 and the summed KL per response is 0.1 x its length: 0.3, 0.2, 0.1, 0.3."""
    b, t = MASK.shape
    rollout = Rollout(torch.zeros(b, 2, dtype=torch.long), torch.ones(b, 2, dtype=torch.long),
                      torch.ones(b, t, dtype=torch.long), MASK.clone(), None,
                      torch.ones(b, dtype=torch.bool))
    ref = torch.full((b, t), -1.1) * MASK
    fwd = {"logprobs": torch.full((b, t), -1.0) * MASK}
    if values:
        fwd["values"] = torch.zeros(b, t)
    return Experience(rollout, None, None, None, None, SCORE.clone(), ref, BETA), fwd


def config(advantage: str, **kw) -> PPOConfig:
    return PPOConfig(advantage=advantage, samples_per_prompt=2, batch_size=2, **kw)


def per_token(seq_adv: list[float]) -> torch.Tensor:
    return torch.tensor(seq_adv)[:, None] * MASK


def test_rloo_puts_the_kl_in_the_reward_and_does_not_whiten():
    exp, fwd = experience()
    cfg = config("rloo")
    assert not kl_in_loss(cfg) and not whiten_advantages(cfg)
    stats = fill_experience(exp, fwd, cfg)
    # sequence rewards: score - 0.5 x KL = 0.85, -0.1, 1.95, 3.85; leave-one-out with k = 2 is
    # the difference to the other sample: 0.95, -0.95, -1.9, 1.9 on every real token
    torch.testing.assert_close(exp.advantages, per_token([0.95, -0.95, -1.9, 1.9]))
    assert exp.returns is None
    assert stats["kl"] == pytest.approx((0.3 + 0.2 + 0.1 + 0.3) / 4)
    assert stats["non_score_reward"] == pytest.approx(-0.5 * 0.225)
    # --whiten-advantages whitens over the 9 real tokens
    exp2, fwd2 = experience()
    fill_experience(exp2, fwd2, config("rloo", whiten_advantages=True))
    torch.testing.assert_close(exp2.advantages,
                               rl.masked_whiten(per_token([0.95, -0.95, -1.9, 1.9]), MASK))


def test_grpo_keeps_the_kl_out_of_the_group_normalised_reward():
    exp, fwd = experience()
    cfg = config("grpo")
    assert kl_in_loss(cfg) and not whiten_advantages(cfg)
    stats = fill_experience(exp, fwd, cfg)
    # scores alone: groups (1, 0) and (2, 4); unbiased stds sqrt(0.5) and sqrt(2)
    a, b = 0.5 / (math.sqrt(0.5) + 1e-4), 1.0 / (math.sqrt(2.0) + 1e-4)
    torch.testing.assert_close(exp.advantages, per_token([a, -a, -b, b]))
    assert stats["non_score_reward"] == 0.0
    assert stats["kl"] == pytest.approx(0.225)  # still measured and logged
    # --kl-penalty reward: the old placement, sequence rewards 0.85, -0.1 | 1.95, 3.85
    exp2, fwd2 = experience()
    fill_experience(exp2, fwd2, config("grpo", kl_penalty="reward"))
    c, d = 0.475 / (0.95 / math.sqrt(2) + 1e-4), 0.95 / (1.9 / math.sqrt(2) + 1e-4)
    torch.testing.assert_close(exp2.advantages, per_token([c, -c, -d, d]))


def test_reinforce_pp_whitens_discounted_token_rewards_with_the_kl_inside():
    exp, fwd = experience()
    cfg = config("reinforce++", gamma=1.0)
    fill_experience(exp, fwd, cfg)
    # token rewards: -0.05 per token, the score added on the last one; returns to go (gamma 1):
    # row 0: 0.85, 0.9, 0.95 | row 1: -0.1, -0.05 | row 2: 1.95 | row 3: 3.85, 3.9, 3.95
    returns = torch.tensor([[0.85, 0.9, 0.95], [-0.1, -0.05, 0.0], [1.95, 0.0, 0.0],
                            [3.85, 3.9, 3.95]])
    torch.testing.assert_close(exp.advantages, rl.masked_whiten(returns, MASK))


def test_gae_whitens_by_default_and_kl_loss_moves_the_penalty_out_of_the_reward():
    exp, fwd = experience(values=True)
    cfg = config("gae", gamma=1.0, lam=1.0)
    assert whiten_advantages(cfg) and not kl_in_loss(cfg)
    fill_experience(exp, fwd, cfg)
    # V = 0 and lambda = 1: advantages are the returns to go of the token rewards (as above)
    returns = torch.tensor([[0.85, 0.9, 0.95], [-0.1, -0.05, 0.0], [1.95, 0.0, 0.0],
                            [3.85, 3.9, 3.95]])
    torch.testing.assert_close(exp.returns, returns)
    torch.testing.assert_close(exp.advantages, rl.masked_whiten(returns, MASK))
    exp2, fwd2 = experience(values=True)
    stats = fill_experience(exp2, fwd2, config("gae", gamma=1.0, lam=1.0, kl_penalty="loss",
                                               whiten_advantages=False))
    # the score alone, on the last real token, carried back to every earlier token
    torch.testing.assert_close(exp2.advantages, per_token([1.0, 0.0, 2.0, 4.0]))
    assert stats["non_score_reward"] == 0.0
