"""The numbers of the over-optimisation study: exact best-of-n expectations over every n-subset,
the proxies, peak-and-fall, the forecast's lead and the label-noise panel."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alignkit.evaluation.overoptimisation import (average_curves, best_of_n_curve,
                                                  best_of_n_expectation, best_of_n_weights,
                                                  combined_proxy, default_ns, fit_curve,
                                                  forecast_lead, pairwise_gold_accuracy,
                                                  peak_and_fall, rl_points)

pytestmark = pytest.mark.unit


def test_weights_by_hand():
    # N = 3: the lowest of three is never the best of a pair; the middle one is the best of
    # exactly one pair {low, mid} out of C(3, 2) = 3; the highest of two pairs
    assert best_of_n_weights(3, 2).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert best_of_n_weights(3, 1).tolist() == pytest.approx([1 / 3] * 3)
    assert best_of_n_weights(3, 3).tolist() == pytest.approx([0.0, 0.0, 1.0])
    for n in (1, 5, 32, 64):
        assert float(best_of_n_weights(64, n).sum()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        best_of_n_weights(3, 4)


def test_expectation_by_hand():
    # proxies 0.1, 0.5, 0.3 with golds 1, 2, 4: the pairs {a, b} -> b (2), {a, c} -> c (4),
    # {b, c} -> b (2); best-of-2's expected gold is (2 + 4 + 2) / 3 = 8/3
    proxy = torch.tensor([[0.1, 0.5, 0.3]])
    gold = torch.tensor([[1.0, 2.0, 4.0]])
    assert best_of_n_expectation(proxy, gold, 1).item() == pytest.approx(7 / 3)
    assert best_of_n_expectation(proxy, gold, 2).item() == pytest.approx(8 / 3)
    assert best_of_n_expectation(proxy, gold, 3).item() == pytest.approx(2.0)


def test_expectation_equals_the_mean_over_every_subset():
    # the slow reference: enumerate every n-subset and take argmax (first index among ties)
    gen = torch.Generator().manual_seed(0)
    proxy = torch.randint(0, 4, (3, 7), generator=gen).float()  # ties on purpose
    gold = torch.randn(3, 7, generator=gen)
    for n in range(1, 8):
        fast = best_of_n_expectation(proxy, gold, n)
        for p in range(3):
            picks = [gold[p, list(s)[int(proxy[p, list(s)].argmax())]].item()
                     for s in itertools.combinations(range(7), n)]
            assert fast[p].item() == pytest.approx(sum(picks) / len(picks), abs=1e-12)


def test_curve_and_bon_fit():
    assert default_ns(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_ns(6) == [1, 2, 4, 6]
    gen = torch.Generator().manual_seed(1)
    gold = torch.randn(8, 16, generator=gen)
    proxy = gold + 0.5 * torch.randn(8, 16, generator=gen)
    curve = best_of_n_curve(proxy, gold, [1, 4, 16])
    assert [p["n"] for p in curve] == [1, 4, 16]
    assert curve[0]["kl"] == 0.0 and curve[2]["d"] == pytest.approx(
        math.sqrt(math.log(16) - 15 / 16))
    assert curve[0]["gold"] == pytest.approx(float(gold.mean()))  # best-of-1: any sample
    assert curve[2]["proxy"] == pytest.approx(float(proxy.max(1).values.mean()))
    assert curve[2]["gold"] > curve[0]["gold"]  # a proxy that tracks gold helps
    # each point keeps its prompts' expectations, in prompt order, for paired comparisons
    assert curve[1]["gold_per_prompt"] == pytest.approx(
        best_of_n_expectation(proxy, gold, 4).tolist())
    assert sum(curve[1]["gold_per_prompt"]) / len(gold) == pytest.approx(curve[1]["gold"])
    # points exactly on a BoN form with a peak: the fit recovers it
    pts = [{"d": d, "kl": d * d, "gold": 1.0 + d * (2.0 - 1.0 * d)} for d in (0.0, 0.5, 1.0, 1.5,
                                                                              2.0)]
    fit = fit_curve(pts, "bon")
    assert fit["alpha"] == pytest.approx(2.0) and fit["beta"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["peak_d"] == pytest.approx(1.0)
    assert fit["peak_gold"] == pytest.approx(2.0) and fit["start_gold"] == 1.0
    assert fit_curve(pts[:1], "bon") is None  # nothing to fit


def test_proxies():
    members = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # (M=3, B=2)
    assert combined_proxy(members, "single", 1.0).tolist() == [1.0, 0.0]
    assert combined_proxy(members, "mean", 1.0).tolist() == pytest.approx([2.0, 1.0])
    assert combined_proxy(members, "wco", 1.0).tolist() == [1.0, 0.0]
    # population variances: (1 + 1 + 0) / 3 = 2/3 and (1 + 1 + 4) / 3 = 2
    assert combined_proxy(members, "uwo", 0.5).tolist() == pytest.approx([2 - 1 / 3, 0.0])
    with pytest.raises(ValueError):
        combined_proxy(members, "median", 1.0)


def test_pairwise_gold_accuracy():
    gold = torch.tensor([[1.0, 2.0, 3.0]])
    # pairs by gold: (1<2), (1<3), (2<3); the proxy orders the first two right, the third
    # backwards; with a proxy tie the pair counts one half
    assert pairwise_gold_accuracy(torch.tensor([[0.0, 2.0, 1.0]]), gold) == pytest.approx(2 / 3)
    assert pairwise_gold_accuracy(torch.tensor([[0.0, 1.0, 1.0]]), gold) == pytest.approx(
        2.5 / 3)
    assert math.isnan(pairwise_gold_accuracy(torch.zeros(1, 3), torch.ones(1, 3)))


def readings(golds, kls, forecasts=None):
    forecasts = forecasts or [None] * len(golds)
    return [{"step": 4 * i, "kl": k, "gold": g, "gold_se": 0.1, "proxy": float(i),
             "forecast_peak_kl": f} for i, (g, k, f) in enumerate(zip(golds, kls, forecasts))]


def test_peak_and_fall():
    rise_fall = rl_points(readings([1.0, 1.5, 1.2, 1.1], [0.0, 1.0, 4.0, 9.0]))
    out = peak_and_fall(rise_fall)
    # peak 1.5 at KL 1; last 1.1: a drop of 0.4 > sqrt(0.1^2 + 0.1^2) = 0.141
    assert out["peak_gold"] == 1.5 and out["peak_kl"] == 1.0 and out["drop"] == pytest.approx(0.4)
    assert out["fell"] and not out["within_se"]
    flat = peak_and_fall(rl_points(readings([1.0, 1.5, 1.45], [0.0, 1.0, 4.0])))
    assert not flat["fell"] and flat["within_se"]  # 0.05 is within one s.e. (0.1) of the peak


def test_best_of_n_fall_is_read_prompt_by_prompt():
    """Best-of-n points share their prompts and samples: the drop from the peak is judged
    against the paired standard error of the per-prompt drops, not the prompts' own spread."""
    points = [{"n": 1, "kl": 0.0, "gold": 1.0, "gold_se": 1.0, "gold_per_prompt": [0.0, 2.0]},
              {"n": 2, "kl": 0.5, "gold": 1.3, "gold_se": 1.0, "gold_per_prompt": [0.4, 2.2]},
              {"n": 4, "kl": 1.5, "gold": 1.1, "gold_se": 1.0, "gold_per_prompt": [0.3, 1.9]}]
    out = peak_and_fall(points)
    # per-prompt drops 0.1 and 0.3: mean 0.2, sample std sqrt(0.02), s.e. sqrt(0.02 / 2) = 0.1
    assert out["paired"] and out["peak_kl"] == 0.5
    assert out["drop"] == pytest.approx(0.2) and out["drop_se"] == pytest.approx(0.1)
    assert out["fell"] and not out["within_se"]
    # the same means without the per-prompt values: sqrt(1 + 1) = 1.41 hides the drop
    unpaired = peak_and_fall([{k: v for k, v in p.items() if k != "gold_per_prompt"}
                              for p in points])
    assert not unpaired["paired"] and unpaired["drop_se"] == pytest.approx(math.sqrt(2))
    assert not unpaired["fell"] and unpaired["within_se"]
    # drops that disagree between prompts (+0.5, -0.1): s.e. 0.3 > the mean drop 0.2
    points[2]["gold_per_prompt"] = [-0.1, 2.3]
    noisy = peak_and_fall(points)
    assert noisy["drop_se"] == pytest.approx(0.3) and not noisy["fell"] and noisy["within_se"]
    # a curve whose peak is its last point has not fallen
    top = peak_and_fall(points[:2])
    assert top["drop"] == 0.0 and top["drop_se"] == 0.0 and not top["fell"]


def test_average_curves_by_hand():
    """Two reward models' best-of-n curves on the same two prompts, each alone, averaged prompt
    by prompt. One prompt: answers with gold (0, 2), member A prefers the second, member B the
    first. The other: gold (1, 1), either choice gives 1."""
    gold = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    member_a = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    member_b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    curves = [best_of_n_curve(m, gold, [1, 2]) for m in (member_a, member_b)]
    # best-of-2 keeps A's choice 2 and B's choice 0 on prompt 1, and 1 on prompt 2 either way
    assert curves[0][1]["gold_per_prompt"] == [2.0, 1.0]
    assert curves[1][1]["gold_per_prompt"] == [0.0, 1.0]
    mean = average_curves(curves)
    assert [p["n"] for p in mean] == [1, 2]
    # n = 1: any answer, gold 1 on both prompts; n = 2: (2 + 0) / 2 = 1 and 1
    assert mean[0]["gold_per_prompt"] == [1.0, 1.0] and mean[1]["gold_per_prompt"] == [1.0, 1.0]
    assert mean[1]["gold"] == 1.0 and mean[1]["gold_se"] == 0.0
    # the expected proxy of best-of-2: each member's max, averaged (1 + 1) / 2 over prompts
    assert mean[1]["proxy"] == pytest.approx(1.0)
    assert mean[1]["kl"] == curves[0][1]["kl"]
    # member A alone rose, member B alone fell: their average is flat, with no spread
    assert curves[0][1]["gold"] == 1.5 and curves[1][1]["gold"] == 0.5
    with pytest.raises(ValueError, match="share their n"):
        average_curves([curves[0], best_of_n_curve(member_b, gold, [1, 1])])
    with pytest.raises(ValueError):  # not the same number of points
        average_curves([curves[0], curves[1][:1]])


def test_best_of_n_reads_the_kept_answers_length_by_hand():
    """One prompt, three answers of 10, 20 and 30 words, the proxy ranking them in that order:
    best-of-1 keeps any (20 words on average), best-of-2 the better of each pair ({10, 20} ->
    20, {10, 30} -> 30, {20, 30} -> 30: 80 / 3), best-of-3 the 30-word one. With a proxy that
    ranks them the other way round, the shortest wins instead."""
    words = torch.tensor([[10.0, 20.0, 30.0]])
    gold = torch.tensor([[2.0, 1.0, 0.0]])
    longer = best_of_n_curve(torch.tensor([[0.0, 1.0, 2.0]]), gold, [1, 2, 3], words)
    assert [p["words"] for p in longer] == pytest.approx([20.0, 80 / 3, 30.0])
    assert [p["gold"] for p in longer] == pytest.approx([1.0, 1 / 3, 0.0])
    shorter = best_of_n_curve(torch.tensor([[2.0, 1.0, 0.0]]), gold, [1, 2, 3], words)
    assert [p["words"] for p in shorter] == pytest.approx([20.0, 40 / 3, 10.0])
    assert "words" not in best_of_n_curve(gold, gold, [1])[0]
    # averaged like the proxy: the members' mean
    assert average_curves([longer, shorter])[1]["words"] == pytest.approx(20.0)
    assert "words" not in average_curves([best_of_n_curve(gold, gold, [1])] * 2)[0]


def test_forecast_lead():
    rows = readings([1.0, 1.4, 1.6, 1.2], [0.0, 2.0, 5.0, 9.0], [None, 10.0, 6.0, 6.0])
    # step 4: KL 2 < 0.8 * 10; step 8: KL 5 >= 0.8 * 6 = 4.8 -> warns at step 8, where gold
    # also peaked: lead 0 steps
    out = forecast_lead(rows, 0.8)
    assert out["warn_step"] == 8 and out["gold_peak_step"] == 8 and out["lead_steps"] == 0
    early = forecast_lead(rows, 0.2)  # step 4: KL 2 >= 0.2 * 10
    assert early["warn_step"] == 4 and early["lead_steps"] == 4 and early["lead_kl"] == 3.0
    never = forecast_lead(rows, 0.0)  # margin 0: the forecast never warns
    assert never["warn_step"] is None and never["lead_steps"] is None
    assert rl_points([{"step": 0, "kl": -0.01, "gold": 0.0, "proxy": 1.0, "proxy_mean": 1.0,
                       "proxy_std": 0.25}])[0] == {"step": 0, "kl": -0.01, "d": 0.0, "gold": 0.0,
                                                   "gold_se": 0.0, "proxy": 1.0, "lcb": 0.75}
    assert rl_points([{"step": 3, "kl": 4.0, "gold": 1.0, "proxy": 2.0,
                       "response_length": 31.5}])[0]["response_length"] == 31.5


def test_label_noise_flips_that_share_of_pairs():
    from alignkit.errors import UserError
    from alignkit.feedback.simulated import Annotator, SimulatedPanel, with_label_noise

    # a perfect annotator (temperature 0) made 25% noisy: random with prob 0.5, so half of
    # those flip: 25% of labels against gold
    noisy = with_label_noise([Annotator("a", temperature=0.0)], 0.25)
    assert noisy[0].careless_rate == pytest.approx(0.5)
    # an annotator already careless 30% of the time: random with 1 - 0.7 * 0.5 = 0.65
    assert with_label_noise([Annotator("b", careless_rate=0.3)], 0.25)[0].careless_rate == \
        pytest.approx(0.65)
    assert with_label_noise([Annotator("c", careless_rate=0.3)], 0.0)[0].careless_rate == 0.3
    panel = SimulatedPanel(noisy, seed=0)
    wrong = sum(not panel.compare(1.0, 0.0)[0] for _ in range(4000))
    assert abs(wrong / 4000 - 0.25) < 0.025  # 3.6 binomial standard errors
    with pytest.raises(UserError):
        with_label_noise(noisy, 0.6)
