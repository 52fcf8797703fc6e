"""The numbers of a reward over-optimisation study (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization"; Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"): gold and proxy reward of best-of-n against ``sqrt(KL)``, the readings of RL
runs, Gao et al.'s functional forms fitted to both, and how early the hacking monitor's forecast
warned compared with the measured gold peak.

Pure functions of tensors and of the monitor's readings; ``alignkit.recipes.study`` runs the
policies and reward models that produce them."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from alignkit.evaluation.best_of_n import analytic_kl
from alignkit.evaluation.paired import standard_error
from alignkit.evaluation.scaling_laws import GaoFit, fit_gao
from alignkit.losses.reward import combine_ensemble

# how the study turns an ensemble's member scores into the proxy it optimises (Coste et al.):
# one member alone, the mean, the worst case (WCO) and the uncertainty-weighted mean (UWO)
PROXIES = {"single": None, "mean": "mean", "wco": "min", "uwo": "mean_minus_var"}


def combined_proxy(per_member: torch.Tensor, proxy: str, uwo_lambda: float) -> torch.Tensor:
    """(M, B) member rewards -> (B,) the study's proxy ``proxy`` (a key of ``PROXIES``):
    ``single`` is member 0 alone, the others combine all M members by ``combine_ensemble``
    (``uwo``: mean - ``uwo_lambda`` * variance, Coste et al. eq. 4)."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    if proxy == "single":
        return per_member[0].float()
    return combine_ensemble(per_member, PROXIES[proxy], uwo_lambda)[0]


def best_of_n_weights(num_samples: int, n: int) -> torch.Tensor:
    """(N,) the chance that the answer ranked i-th lowest by the proxy (i = 1..N) is the best
    of a uniformly random n-subset of the N samples: ``C(i - 1, n - 1) / C(N, n)``. The
    weights sum to 1; with them the N samples of a prompt give the exact expectation of
    best-of-n over every n-subset (the unbiased estimator of Nakano et al. 2021, app. I, used
    by Gao et al. 2022), rather than one noisy draw per n."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"n must be in [1, {num_samples}], got {n}")
    total = math.comb(num_samples, n)
    return torch.tensor([math.comb(i - 1, n - 1) / total for i in range(1, num_samples + 1)],
                        dtype=torch.float64)


def best_of_n_expectation(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """proxy, values: (P, N) scores of N samples per prompt. Returns (P,) the expected value
    (gold, say) of the answer with the highest proxy among n drawn from the N without
    replacement. Ties in the proxy go to the earlier sample, as ``argmax`` breaks them."""
    if proxy.shape != values.shape or proxy.dim() != 2:
        raise ValueError(f"proxy and values must both be (P, N), got {tuple(proxy.shape)} and "
                         f"{tuple(values.shape)}")
    # a stable descending sort keeps tied samples in index order; flipped, the ascending order
    # ranks the earliest of tied samples highest
    num = proxy.shape[1]
    order = torch.argsort(proxy, dim=1, stable=True, descending=True).flip(1)
    ranked = torch.gather(values.double(), 1, order)
    return ranked @ best_of_n_weights(num, n)


def default_ns(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (and ``largest`` itself)."""
    ns, n = [], 1
    while n < largest:
        ns.append(n)
        n *= 2
    return ns + [largest]


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor, ns: Sequence[int],
                    words: torch.Tensor | None = None) -> list[dict]:
    """proxy, gold: (P, N). One point per n: the analytic KL of best-of-n and its square root
    ``d``, the expected proxy and gold of the kept answer averaged over prompts, the gold's
    standard error over prompts, and ``gold_per_prompt`` (P,): every n is read on the same
    prompts and samples, so two points compare prompt by prompt (``peak_and_fall``).
    ``words`` (P, N), each sample's word count: each point also gets ``words``, the kept
    answer's expected length (what a length-biased proxy pushes up)."""
    points = []
    for n in ns:
        golds = best_of_n_expectation(proxy, gold, n)
        proxies = best_of_n_expectation(proxy, proxy, n)
        kl = analytic_kl(n)
        points.append({"n": n, "kl": kl, "d": math.sqrt(kl), "gold": float(golds.mean()),
                       "gold_se": standard_error(golds), "proxy": float(proxies.mean()),
                       "gold_per_prompt": golds.tolist()})
        if words is not None:
            points[-1]["words"] = float(best_of_n_expectation(proxy, words, n).mean())
    return points


def average_curves(curves: Sequence[Sequence[dict]]) -> list[dict]:
    """The prompt-by-prompt average of best-of-n curves read on the same samples (one per
    reward model, e.g. each member of an ensemble alone): at every n, ``gold_per_prompt`` (P,)
    is the members' mean gold of the answer each would keep, ``gold`` its mean over prompts and
    ``gold_se`` its standard error, ``proxy`` the members' mean expected proxy. This is the
    expected curve of one reward model drawn from the members' distribution (seed, data order),
    with less of one draw's luck than any one member's curve."""
    averaged = []
    for points in zip(*curves, strict=True):
        if len({p["n"] for p in points}) != 1:
            raise ValueError("the curves must share their n")
        per_prompt = torch.tensor([p["gold_per_prompt"] for p in points],
                                  dtype=torch.float64).mean(0)
        averaged.append({**points[0], "gold": float(per_prompt.mean()),
                         "gold_se": standard_error(per_prompt),
                         "proxy": sum(p["proxy"] for p in points) / len(points),
                         "gold_per_prompt": per_prompt.tolist()})
        if all("words" in p for p in points):
            averaged[-1]["words"] = sum(p["words"] for p in points) / len(points)
    return averaged


SINGLE_AVERAGE = "single-avg"  # best-of-n only: every member alone, curves averaged


def best_of_n_by_proxy(members: torch.Tensor, gold: torch.Tensor, ns: Sequence[int],
                       proxies: Sequence[str], uwo_lambda: float,
                       words: torch.Tensor | None = None) -> dict:
    """members: (M, P * N) each ensemble member's score of every sample, prompt-major; gold and
    ``words``: (P, N). For each proxy of ``PROXIES``: its best-of-n curve
    (:func:`best_of_n_curve`), Gao et al.'s BoN form fitted to it, where gold peaked and its
    fall (:func:`peak_and_fall`) and the proxy's pairwise accuracy against gold on the samples.
    With "single" among the proxies and more than one member, also ``single-avg``: every
    member alone, the curves averaged prompt by prompt."""

    def summary(curve: list[dict], pair_accuracy: float) -> dict:
        return {"curve": curve, "fit": fit_curve(curve, "bon"), "peak": peak_and_fall(curve),
                "gold_pair_accuracy": pair_accuracy}

    out = {}
    for proxy in proxies:
        scores = combined_proxy(members, proxy, uwo_lambda).view_as(gold)
        out[proxy] = summary(best_of_n_curve(scores, gold, ns, words),
                             pairwise_gold_accuracy(scores, gold))
    if "single" in out and members.shape[0] > 1:
        # each member is a single reward model of its own seed: their average curve is what
        # one reward model does in expectation, member 0's is one draw of it
        alone = [m.view_as(gold) for m in members]
        out[SINGLE_AVERAGE] = summary(
            average_curves([best_of_n_curve(m, gold, ns, words) for m in alone]),
            sum(pairwise_gold_accuracy(m, gold) for m in alone) / len(alone))
    return out


def fit_curve(points: Sequence[dict], form: str) -> dict | None:
    """Gao et al.'s ``form`` ("bon" or "rl") fitted to gold gain against ``d = sqrt(KL)``; the
    gain is measured from the point nearest ``d = 0`` (best-of-1, or the RL run's start). None
    when the points do not move away from the start enough for a fit."""
    if not points:
        return None
    start = min(points, key=lambda p: p["d"])
    d = torch.tensor([p["d"] for p in points], dtype=torch.float64)
    gain = torch.tensor([p["gold"] - start["gold"] for p in points], dtype=torch.float64)
    try:
        fit: GaoFit = fit_gao(d, gain, form)
    except ValueError:
        return None
    return {"form": form, "alpha": fit.alpha, "beta": fit.beta, "r2": fit.r2,
            "points": fit.points, "peak_d": fit.peak_d,
            "peak_kl": None if fit.peak_d is None else fit.peak_d ** 2,
            "peak_gold": None if fit.peak_gain is None else start["gold"] + fit.peak_gain,
            "start_gold": start["gold"]}


def peak_and_fall(points: Sequence[dict]) -> dict:
    """Where gold peaked along a curve (best-of-n: n growing; RL: the run's readings in step
    order, whose KL need not grow every time) and whether it then fell: ``drop`` (peak gold
    less the last point's) against ``drop_se``, the standard error of that difference.

    Points with ``gold_per_prompt`` on the same prompts (best-of-n: every n reads the same
    samples) are compared prompt by prompt: ``drop_se`` is the paired standard error of the
    per-prompt drops (``paired``: true); the prompts' own spread, common to both points, then
    cancels. Otherwise (RL readings) it is ``sqrt(se_peak^2 + se_last^2)``. ``fell``: the drop
    exceeds ``drop_se``; ``within_se``: it is within one standard error (paired: ``drop_se``;
    unpaired: the peak's own ``gold_se``)."""
    peak = max(points, key=lambda p: p["gold"])
    last = points[-1]
    drop = peak["gold"] - last["gold"]
    per_peak, per_last = peak.get("gold_per_prompt"), last.get("gold_per_prompt")
    paired = (per_peak is not None and per_last is not None
              and len(per_peak) == len(per_last) >= 2)
    if paired:
        drop_se = standard_error(torch.tensor(per_peak, dtype=torch.float64)
                                 - torch.tensor(per_last, dtype=torch.float64))
        within = drop <= drop_se
    else:
        drop_se = math.sqrt(peak.get("gold_se", 0.0) ** 2 + last.get("gold_se", 0.0) ** 2)
        within = drop <= peak.get("gold_se", 0.0)
    return {"peak_gold": peak["gold"], "peak_kl": peak["kl"], "last_gold": last["gold"],
            "last_kl": last["kl"], "drop": drop, "drop_se": drop_se, "paired": paired,
            "fell": drop > drop_se, "within_se": within}


def forecast_lead(readings: Sequence[dict], margin: float) -> dict:
    """How early the monitor's forecast warned, against the measured gold peak of an RL run.

    readings: the monitor's held-out readings in step order (``step``, ``kl``, ``gold`` and,
    once the forecast fitted a peak, ``forecast_peak_kl``). The forecast warns at the first
    reading whose KL reaches ``margin`` times the forecast peak's KL (the monitor's rule).
    ``lead_steps`` / ``lead_kl``: the gold peak's step / KL minus the warning's (positive: it
    warned before gold peaked; None without a warning)."""
    peak = max(readings, key=lambda r: r["gold"])
    warned = next((r for r in readings if r.get("forecast_peak_kl") is not None and margin > 0
                   and r["kl"] >= margin * r["forecast_peak_kl"]), None)
    out = {"gold_peak_step": peak["step"], "gold_peak_kl": peak["kl"],
           "warn_step": None, "warn_kl": None, "lead_steps": None, "lead_kl": None}
    if warned is not None:
        out.update(warn_step=warned["step"], warn_kl=warned["kl"],
                   lead_steps=peak["step"] - warned["step"], lead_kl=peak["kl"] - warned["kl"])
    return out


def rl_points(readings: Sequence[dict]) -> list[dict]:
    """The monitor's readings as curve points: ``d = sqrt(max(KL, 0))`` (a k1 estimate of a
    small KL can come out slightly negative), with the mean response length in tokens where
    the monitor read it."""
    return [{"step": r["step"], "kl": r["kl"], "d": math.sqrt(max(r["kl"], 0.0)),
             "gold": r["gold"], "gold_se": r.get("gold_se", 0.0), "proxy": r["proxy"],
             "lcb": r.get("proxy_mean", r["proxy"]) - r.get("proxy_std", 0.0),
             **({"response_length": r["response_length"]} if "response_length" in r else {})}
            for r in readings]


def pairwise_gold_accuracy(proxy: torch.Tensor, gold: torch.Tensor) -> float:
    """proxy, gold: (P, N). Over every pair of answers to the same prompt whose gold differs,
    the share the proxy orders as gold does (a tie in the proxy counts one half): the proxy's
    accuracy on the very answers best-of-n chooses among. NaN when no pair's gold differs."""
    gold_sign = torch.sign(gold[:, :, None] - gold[:, None, :]).double()
    proxy_sign = torch.sign(proxy[:, :, None] - proxy[:, None, :]).double()
    counted = gold_sign != 0
    if not bool(counted.any()):
        return float("nan")
    agree = (gold_sign * proxy_sign + 1.0) / 2.0  # 1 same order, 0 reversed, 1/2 proxy tie
    return float(agree[counted].mean())
