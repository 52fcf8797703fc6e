"""Stage-3 RL math against hand-derived values and slow reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.ppo import (AdaptiveKLController, FixedKLController, aggregate,
                                 aggregation_weight, discounted_returns, entropy_from_logits,
                                 explained_variance, gae, grpo_advantages, kl_estimate,
                                 kl_penalty_loss, masked_mean, masked_var, masked_whiten,
                                 policy_loss, reinforce_pp_advantages, rloo_advantages,
                                 token_rewards, value_loss)

pytestmark = pytest.mark.unit


def close(got: torch.Tensor, want, atol: float = 1e-6) -> None:
    torch.testing.assert_close(got.float(), torch.tensor(want, dtype=torch.float32), atol=atol,
                               rtol=1e-5)


def test_masked_statistics_and_whitening():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # real entries 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + .25 + .25 + 2.25) / 3 = 5/3
    assert float(masked_mean(x, mask)) == pytest.approx(2.5)
    assert float(masked_var(x, mask)) == pytest.approx(5 / 3)
    assert float(masked_var(x, mask, unbiased=False)) == pytest.approx(1.25)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.0])
    w = masked_whiten(x, mask, eps=0.0)
    sd = math.sqrt(5 / 3)
    close(w, [[-1.5 / sd, -0.5 / sd, 0.5 / sd], [1.5 / sd, 0, 0]])
    kept = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    assert kept[0].tolist() == pytest.approx([2.5 - 1.5 / sd, 2.5 - 0.5 / sd, 2.5 + 0.5 / sd])
    assert kept[1, 1:].tolist() == [0.0, 0.0]


def test_kl_estimators_hand_values_and_unbiasedness():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert float(kl_estimate(logp, ref, "k1")) == pytest.approx(math.log(2))
    assert float(kl_estimate(logp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(kl_estimate(logp, ref, "k3")) == pytest.approx(-0.5 + math.log(2))
    # exact expectations under the policy: k1 and k3 are unbiased for KL(p || q); k3 >= 0
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log(), q.log(), kind)
        assert float((p * est).sum()) == pytest.approx(kl, rel=1e-6)
    assert (kl_estimate(p.log(), q.log(), "k3") >= 0).all()
    assert (kl_estimate(p.log(), q.log(), "k1") < 0).any()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(p, q, "k4")


def test_token_rewards_put_the_score_on_the_last_real_token():
    score = torch.tensor([2.0, 3.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    got = token_rewards(score, kl, mask, beta=0.5)
    close(got, [[-0.05, 1.9, 0.0], [-0.2, -0.25, 2.7], [0.0, 0.0, 0.0]])


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])  # the padded value must not leak in
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1: delta = 1 - 0.2 = 0.8; t=0: delta = 0.2 - 0.5 = -0.3, A = -0.3 + 0.5 * 0.8 = 0.1
    close(adv, [[0.1, 0.8, 0.0]])
    close(ret, [[0.6, 1.0, 0.0]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    # t=0: delta = 0.9 * 0.2 - 0.5 = -0.32, A = -0.32 + 0.9 * 0.95 * 0.8 = 0.364
    close(adv, [[0.364, 0.8, 0.0]])


def _gae_reference(rewards, values, length, gamma, lam):
    """One sequence, plain Python, straight from the definition A_t = sum_l (gamma lam)^l d_{t+l}."""
    deltas = []
    for t in range(length):
        next_v = values[t + 1] if t + 1 < length else 0.0
        deltas.append(rewards[t] + gamma * next_v - values[t])
    return [sum((gamma * lam) ** (s - t) * deltas[s] for s in range(t, length))
            for t in range(length)]


def test_gae_matches_a_slow_reference_loop():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    lengths = [9, 1, 4, 7, 0, 5]
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    for b, n in enumerate(lengths):
        want = _gae_reference(rewards[b].tolist(), values[b].tolist(), n, 0.97, 0.9)
        assert adv[b, :n].tolist() == pytest.approx(want, abs=1e-5)
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0
        assert ret[b, :n].tolist() == pytest.approx(
            [a + v for a, v in zip(want, values[b, :n].tolist())], abs=1e-5)
    # lambda = 1: advantages are discounted returns minus values (Monte Carlo)
    adv1, _ = gae(rewards, values, mask, gamma=0.97, lam=1.0)
    mc = discounted_returns(rewards, mask, 0.97) - values * mask
    assert torch.allclose(adv1, mc, atol=1e-5)


def test_policy_loss_clipping_hand_computed():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 0.7, 1.5])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(4)
    loss, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    # per token max(-A rho, -A clip(rho)): -1.2 (clipped), -0.5, 0.8 (clipped), 1.5
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert stats["clipfrac"] == pytest.approx(0.5)
    # mean rho = (1.5 + 0.5 + 0.7 + 1.5) / 4 (a ratio upside down would give 1.2429)
    assert stats["ratio"] == pytest.approx(1.05)
    # approx KL(old || new), k3 on tokens from the old policy: mean of (rho - 1) - log rho
    want_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 0.7, 1.5)) / 4
    assert stats["approx_kl"] == pytest.approx(want_kl, rel=1e-5)
    # (0.094535 + 0.193147 + 0.056675 + 0.094535) / 4
    assert want_kl == pytest.approx(0.109723, abs=1e-6)
    loss.backward()
    # only unclipped tokens carry gradient: d(-A rho)/dlogp = -A rho, / 4 for the mean
    assert logp.grad.tolist() == pytest.approx([0.0, -0.125, 0.0, 0.375])
    # a masked token changes nothing
    loss2, _ = policy_loss(torch.cat([logp.detach(), torch.tensor([5.0])]),
                           torch.zeros(5), torch.cat([adv, torch.tensor([100.0])]),
                           torch.tensor([1.0, 1, 1, 1, 0]))
    assert float(loss2) == pytest.approx(float(loss.detach()))


def test_approx_kl_is_the_exact_kl_of_old_to_new_on_a_categorical():
    # three tokens; the old (sampling) policy p and the updated policy q
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    # KL(p || q) = 0.5 ln 2.5 + 0.3 ln 0.6 + 0.2 ln(2/3) = 0.458145 - 0.153248 - 0.081093
    exact = float((p * (p / q).log()).sum())
    assert exact == pytest.approx(0.223805, abs=1e-6)
    # the expectation over tokens drawn from p: weight each token by p (masked_mean divides by
    # the weights' sum, 1). E_p[(q/p - 1) - log(q/p)] = sum q - 1 + KL = KL exactly.
    _, stats = policy_loss(q.log(), p.log(), torch.zeros(3), p)
    assert stats["approx_kl"] == pytest.approx(exact, rel=1e-5)
    # the old form, E_p[(p/q - 1) - log(p/q)] = chi^2(p || q) - KL = 0.339528, is not the KL
    wrong = float((p * ((p / q) - 1 - (p / q).log())).sum())
    assert abs(stats["approx_kl"] - wrong) > 0.1
    # and a Monte Carlo draw from p agrees to sampling error
    draws = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator()
                              .manual_seed(0))
    _, mc = policy_loss(q.log()[draws], p.log()[draws], torch.zeros(len(draws)),
                        torch.ones(len(draws)))
    assert mc["approx_kl"] == pytest.approx(exact, abs=5e-3)


def test_loss_aggregation_token_mean_and_sequence_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0], [7.0, 7.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token mean: (1 + 2 + 3 + 4 + 10) / 5 = 4; sequence mean: (2.5 + 10) / 2 = 6.25 (the empty
    # third response is left out)
    assert float(aggregate(x, mask, "token_mean")) == pytest.approx(4.0)
    assert float(aggregate(x, mask, "sequence_mean")) == pytest.approx(6.25)
    assert float(aggregation_weight(mask, "token_mean")) == 5.0
    assert float(aggregation_weight(mask, "sequence_mean")) == 2.0
    # micro-batches weighted by their share rebuild the whole batch's aggregate
    for how in ("token_mean", "sequence_mean"):
        parts = [(x[:1], mask[:1]), (x[1:], mask[1:])]
        total = aggregation_weight(mask, how)
        rebuilt = sum(aggregate(a, m, how) * aggregation_weight(m, how) / total for a, m in parts)
        assert float(rebuilt) == pytest.approx(float(aggregate(x, mask, how)))
    with pytest.raises(ValueError):
        aggregate(x, mask, "sum")
    # the policy loss follows the aggregation: advantages 1, ratio 1 -> -1 per token either way;
    # lengths 4 and 1 with advantages 1 and 3: token mean -(4 + 3) / 5, sequence mean -(1 + 3) / 2
    adv = torch.tensor([[1.0] * 4, [3.0, 0, 0, 0], [0.0] * 4])
    zeros = torch.zeros(3, 4)
    assert float(policy_loss(zeros, zeros, adv, mask)[0]) == pytest.approx(-7 / 5)
    assert float(policy_loss(zeros, zeros, adv, mask, aggregation="sequence_mean")[0]) \
        == pytest.approx(-2.0)


def test_kl_penalty_loss_is_k3_and_differentiable():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    mask = torch.ones(1, 2)
    loss = kl_penalty_loss(logp, ref, mask)
    # k3 with r = ref / pi: token 1 r = 0.5 -> 0.5 - 1 - ln 0.5 = 0.193147; token 2 r = 1 -> 0
    assert float(loss.detach()) == pytest.approx((0.5 - 1 - math.log(0.5)) / 2, abs=1e-6)
    loss.backward()
    # d/dlogp [(r - 1) - log r] with log r = ref - logp: -r + 1, / 2 for the mean
    assert logp.grad[0].tolist() == pytest.approx([(1 - 0.5) / 2, 0.0], abs=1e-6)


def test_value_loss_clipping_hand_computed():
    values = torch.tensor([1.0, 0.6]).requires_grad_()
    old = torch.tensor([0.5, 0.5])
    returns = torch.tensor([2.0, 2.0])
    loss, stats = value_loss(values, old, returns, torch.ones(2), clip=0.2)
    # token 0: clipped value 0.7, errors 1.0 vs 1.69 -> 1.69; token 1 inside the clip: 1.96
    assert float(loss.detach()) == pytest.approx(0.5 * (1.69 + 1.96) / 2)
    assert stats["vf_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    # the clipped branch is constant in V: only token 1 has a gradient, 0.5 * 2 (V - R) / 2
    assert values.grad.tolist() == pytest.approx([0.0, -0.7])


def test_adaptive_kl_controller_ziegler_update():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(6.6, 64)  # error 0.1, inside the clip
    assert ctl.value == pytest.approx(0.1 * (1 + 0.1 * 64 / 10000))
    ctl.update(0.0, 64)  # error clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.1 * 64 / 10000) * (1 - 0.2 * 64 / 10000))
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, target=6.0, horizon=10000)
    other.load_state_dict(state)
    assert other.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05


def test_rloo_grpo_and_reinforce_pp_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    # leave-one-out baselines: (2+3)/2, (1+3)/2, (1+2)/2 and (10+16)/2, (10+16)/2, (10+10)/2
    assert rloo_advantages(scores, 3).tolist() == pytest.approx([-1.5, 0.0, 1.5, -3, -3, 6])
    sd2 = math.sqrt((4 + 4 + 16) / 2)
    assert grpo_advantages(scores, 3, eps=0.0).tolist() == pytest.approx(
        [-1.0, 0.0, 1.0, -2 / sd2, -2 / sd2, 4 / sd2])
    assert grpo_advantages(scores, 3, scale=False).tolist() == pytest.approx(
        [-1.0, 0.0, 1.0, -2.0, -2.0, 4.0])
    with pytest.raises(ValueError, match="groups of 4"):
        rloo_advantages(scores, 4)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # a reward reaches only the returns of the tokens before it
    assert discounted_returns(rewards, mask).tolist() == [[1.0, 1.0, 1.0], [0.5, 0.0, 0.0]]
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[0.25, 0.5, 1.0],
                                                               [0.5, 0.0, 0.0]]
    # returns 1, 1, 1, .5, 0: mean 0.7, unbiased var (3 * .09 + .04 + .49) / 4 = 0.2
    sd = math.sqrt(0.2)
    got = reinforce_pp_advantages(rewards, mask)
    close(got, [[0.3 / sd] * 3, [-0.2 / sd, -0.7 / sd, 0.0]], atol=1e-5)


def test_entropy_and_explained_variance():
    assert float(entropy_from_logits(torch.zeros(4))) == pytest.approx(math.log(4))
    assert float(entropy_from_logits(torch.tensor([0.0, -1e4]))) == pytest.approx(0.0, abs=1e-6)
    mask = torch.ones(4)
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4), returns, mask) == pytest.approx(0.0)


def test_hacking_monitor_warnings():
    from alignkit.config import PPOConfig
    from alignkit.training.monitor import HackingMonitor

    mon = HackingMonitor(None, PPOConfig(kl_budget=5.0, length_drift=2.0, min_entropy=0.1))
    base = {"proxy": 0.0, "gold": 1.0, "gold_se": 0.05, "kl": 0.0, "response_length": 30.0,
            "entropy": 2.0}
    assert mon.check(base) == []
    # proxy up, gold down by less than twice the combined standard error: noise, no warning
    assert mon.check({**base, "proxy": 0.5, "gold": 0.9}) == []
    # proxy up, gold down by 0.4 (> 2 * sqrt(2) * 0.05): over-optimisation
    got = mon.check({**base, "proxy": 1.0, "gold": 0.5})
    assert len(got) == 1 and "while gold fell" in got[0]
    got = mon.check({**base, "proxy": 1.0, "gold": 1.0, "kl": 6.0, "response_length": 70.0,
                     "entropy": 0.05})
    assert len(got) == 3
    assert any("exceeds the budget" in w for w in got)
    assert any("drifted 2.33x" in w for w in got)
    assert any("entropy" in w for w in got)
    # a slow decline: each step within the noise of the last, but far below the best reading
    slow = HackingMonitor(None, PPOConfig())
    for proxy, gold in ((0.0, 1.0), (0.2, 0.9), (0.4, 0.8), (0.6, 0.7)):
        got = slow.check({**base, "proxy": proxy, "gold": gold})
    assert len(got) == 1 and "0.600) while gold fell (1.000 -> 0.700" in got[0]
    # --select-by proxy: the best checkpoint follows the proxy
    mon = HackingMonitor(None, PPOConfig(select_by="proxy"))
    assert mon.key == "proxy"
    assert mon.improved({"proxy": 1.0}) and not mon.improved({"proxy": 0.9})
    assert mon.improved({"proxy": 1.1}) and mon.best == 1.1


def test_selection_by_the_ensemble_lower_bound_and_its_gold_regret():
    from alignkit.config import PPOConfig
    from alignkit.training.monitor import HackingMonitor

    mon = HackingMonitor(None, PPOConfig())  # the default: what a user without gold has
    assert mon.key == "lcb"
    base = {"kl": 0.1, "response_length": 30.0, "entropy": 1.0, "gold_se": 0.0}
    # (proxy_mean, proxy_std, gold): the proxy keeps rising, its members disagree more
    readings = [(0.0, 0.1, 0.0), (0.8, 0.2, 0.9), (1.2, 0.3, 1.0), (1.6, 0.9, 0.4)]
    chosen = []
    for step, (mean, std, gold) in enumerate(readings):
        row = {**base, "proxy": mean, "proxy_mean": mean, "proxy_std": std, "gold": gold}
        mon.check({**row, "step": step})
        chosen.append(mon.improved(row))
    # lcb 0.6, 0.9 then 0.7: step 2 stays chosen although the proxy mean rose to 1.6
    assert chosen == [True, True, True, False] and mon.best == pytest.approx(0.9)
    assert mon.selection() == {"selected_step": 2, "gold_best_step": 2, "selected_gold": 1.0,
                               "selection_regret": 0.0}
    proxy = HackingMonitor(None, PPOConfig(select_by="proxy"))
    proxy.history = mon.history
    got = proxy.selection()  # the proxy would pick step 3: gold 0.4, 0.6 below the best
    assert got["selected_step"] == 3 and got["selection_regret"] == pytest.approx(0.6)


# Held-out monitor readings of a real over-optimised run (2026-11-23): SmolLM2 SFT policy, LoRA,
# lr 1e-3, KL coefficient 0, 48 PPO steps against a single small MiniLM reward model (held-out
# accuracy 0.656): (step, proxy, gold, gold_se, KL, length, entropy) on 32 held-out prompts.
OVER_OPTIMISED = [
    (0, -0.048, 1.517, 0.224, 0.0, 31.438, 2.754),
    (8, 0.136, 1.860, 0.189, 4.827, 28.312, 2.380),
    (16, 0.422, 1.807, 0.187, 12.438, 23.156, 2.241),
    (24, 0.346, 1.861, 0.198, 22.000, 27.156, 2.319),
    (32, 0.342, 1.547, 0.209, 26.622, 21.562, 2.245),
    (40, 0.783, 1.009, 0.236, 25.085, 14.469, 1.437),
    (48, 0.849, 0.806, 0.485, 55.042, 25.719, 1.065),
]


def test_monitor_catches_the_recorded_over_optimised_run():
    """Gold peaks at step 24 and collapses while the proxy keeps rising: the monitor warns at
    steps 40 and 48 (the drop from the step-24 reading exceeds twice its standard error), not
    before; step 32's dip (1.861 -> 1.547) is within the noise."""
    from alignkit.config import PPOConfig
    from alignkit.training.monitor import HackingMonitor

    mon = HackingMonitor(None, PPOConfig(kl_coef=0.0))
    warned = {}
    for step, proxy, gold, se, kl, length, entropy in OVER_OPTIMISED:
        warned[step] = mon.check({"step": step, "proxy": proxy, "gold": gold, "gold_se": se,
                                  "kl": kl, "response_length": length, "entropy": entropy})
    assert all(not warned[s] for s in (0, 8, 16, 24, 32))
    for step in (40, 48):
        assert any("while gold fell (1.861" in w and "since step 24" in w for w in warned[step])


def test_forecast_warns_before_the_fitted_peak():
    """Readings of the ensemble's lower bound on Gao et al.'s RL curve (alpha 1.2, beta 0.4:
    peak at d = e^2, KL = e^4 = 54.6): the forecast finds the peak from the rising part alone and
    warns once KL passes --forecast-margin (0.8) of it, before the curve turns."""
    import math

    from alignkit.config import PPOConfig
    from alignkit.training.monitor import HackingMonitor

    mon = HackingMonitor(None, PPOConfig())
    warned = []
    for step, d in enumerate((0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.7)):
        lcb = d * (1.2 - 0.4 * math.log(d)) if d > 0 else 0.0
        row = {"step": step, "proxy": lcb, "proxy_mean": lcb + 0.1, "proxy_std": 0.1,
               "kl": d * d, "response_length": 30.0, "entropy": 1.0}
        forecast = mon.forecast(row)
        warned.append([w for w in mon.check(row) if "forecast" in w])
    assert forecast["peak_kl"] == pytest.approx(math.e ** 4, rel=1e-6)
    assert [bool(w) for w in warned] == [False] * 6 + [True]  # KL 44.9 >= 0.8 * 54.6
    assert "forecast to peak at KL 54.60" in warned[-1][0]
    off = HackingMonitor(None, PPOConfig(forecast_margin=0.0))  # 0: no forecast warning
    off.history = mon.history[:-1]
    assert off.forecast(row)["warn"] is False
    assert not [w for w in off.check(row) if "forecast" in w]


def test_forecast_on_the_recorded_single_reward_model_run_gives_no_early_warning():
    """A limit, measured: with one reward model the proxy keeps rising past gold's peak
    (step 24), so its fitted peak lies far beyond the run (KL ~6000 at step 24, ~136 at
    step 32) and the forecast does not warn; the gold-drop check above is what catches it."""
    from alignkit.config import PPOConfig
    from alignkit.training.monitor import HackingMonitor

    mon = HackingMonitor(None, PPOConfig(kl_coef=0.0))
    peaks = {}
    for step, proxy, gold, se, kl, length, entropy in OVER_OPTIMISED:
        row = {"step": step, "proxy": proxy, "gold": gold, "gold_se": se, "kl": kl,
               "response_length": length, "entropy": entropy}
        forecast = mon.forecast(row)
        peaks[step] = None if forecast is None else round(forecast["peak_kl"])
        assert not [w for w in mon.check(row) if "forecast" in w]
    assert peaks == {0: None, 8: None, 16: None, 24: 5997, 32: 136, 40: None, 48: None}


def test_truncated_importance_weights_by_hand():
    """TIS (Yao et al. 2025): w = min(pi_old / pi_engine, C) on the mask, and the policy loss
    weighs each token by it."""
    import math

    from alignkit.losses.ppo import policy_loss, truncated_is_weights

    old = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    engine = torch.tensor([[math.log(0.25), math.log(0.4), -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = truncated_is_weights(old, engine, mask, cap=1.5)
    # 0.5 / 0.25 = 2 -> capped at 1.5; 0.2 / 0.4 = 0.5; masked -> 0
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 0.0]]))
    # ratio 1 everywhere: per-token loss -A; weighted token mean (-(1.5 * 2) - (0.5 * -4)) / 2
    adv = torch.tensor([[2.0, -4.0, 9.0]])
    loss, _ = policy_loss(old, old, adv, mask, is_weights=w)
    assert float(loss) == pytest.approx((-(1.5 * 2.0) + 0.5 * 4.0) / 2)
    plain, _ = policy_loss(old, old, adv, mask)
    assert float(plain) == pytest.approx((-2.0 + 4.0) / 2)
