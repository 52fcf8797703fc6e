"""The reward-hacking monitor: held-out behaviour of a policy in training, with warnings when
the proxy reward rises while gold falls, KL passes its budget, or length or entropy drift.

``cfg`` is a ``PPOConfig`` (``--eval-prompts``, ``--kl-budget``, ``--length-drift``,
``--min-entropy``, sampling flags).
"""

from __future__ import annotations

import logging

from alignkit.data.prompts import Prompts
from alignkit.evaluation.comparison import suite_for_training, suite_rates
from alignkit.evaluation.policy import measure_policy
from alignkit.training.ppo import reference_logprobs
from alignkit.training.rollout import sampling_config
from alignkit.training.selection import selection_summary, selection_value
from alignkit.utils.distributed import World

log = logging.getLogger("alignkit.ppo")


class HackingMonitor:
    """Held-out behaviour every ``--eval-every`` steps: proxy reward, gold score (when a gold
    scorer is on), KL to the reference, response length and entropy. Warns when the proxy rises
    while gold falls (over-optimisation, Gao et al. 2023), when KL passes its budget, or when
    length or entropy drift past their limits; keeps the best checkpoint by ``--select-by``:
    the ensemble's lower confidence bound (``lcb``: mean minus the members' spread, averaged
    over prompts; a single reward model's spread is 0), the proxy, or gold. With gold on, each
    choice is scored by its gold regret against the gold-best reading so far. With
    ``--eval-adversarial``, every reading also answers an adversarial suite and logs its refusal,
    over-refusal and uncertainty rates: whether training teaches (or unteaches) refusal."""

    def __init__(self, prompts: Prompts | None, cfg, tokenizer=None, world: World = World(),
                 engine=None):
        self.prompts = prompts
        self.engine = engine  # the rollout engine that writes the answers (it follows training)
        self.cfg = cfg
        self.world = world  # under torchrun each process answers its share of the prompts
        self.history: list[dict] = []
        self.best: float | None = None
        self.gold = None
        # the safety curve: an adversarial suite answered at every reading (--eval-adversarial)
        self.suite, self.suite_ids = (
            suite_for_training(cfg, tokenizer, cfg.max_prompt_length)
            if prompts is not None and tokenizer is not None else ([], []))
        if prompts is not None and cfg.gold:
            from alignkit.judges.gold import GoldScorer

            # lengths in the policy's own tokens, as the simulated annotators saw them
            self.gold = GoldScorer(token_counter=tokenizer)

    @property
    def key(self) -> str:
        return getattr(self.cfg, "select_by", "proxy")

    def value(self, row: dict) -> float:
        """The reading's selection score under ``key``."""
        return selection_value(row, self.key)

    def selection(self) -> dict:
        """The reading chosen so far and, with gold, its regret: the gold of the gold-best
        reading minus the gold of the chosen one (0: the choice a user without gold makes is
        the one gold would make)."""
        return selection_summary(self.history, self.key)

    def measure(self, parts, reference, reward_fn, tokenizer, device: str) -> dict:
        cfg, p = self.cfg, self.prompts
        n = len(p.ids) if cfg.eval_prompts <= 0 else min(cfg.eval_prompts, len(p.ids))
        # the same draw every time (comparable across steps), without touching training's RNG
        common = dict(seed=cfg.seed + 12345, device=device, precision=cfg.precision,
                      batch_size=max(cfg.batch_size, 8), world=self.world, engine=self.engine)
        row = measure_policy(
            parts.policy, tokenizer, p.texts[:n], p.ids[:n], p.categories[:n],
            lambda rollout: reference_logprobs(parts, reference, rollout, cfg), reward_fn,
            self.gold, sampling_config(cfg), **common)
        if self.suite:
            row.update(suite_rates(parts.policy, tokenizer, self.suite, self.suite_ids,
                                   sampling_config(cfg), **common))
        return row

    def reading(self, step: int, parts, reference, reward_fn, tokenizer, device: str) -> dict:
        """Measure at ``step``, check, and log any warning; the row carries them under
        ``warnings``."""
        row = self.measure(parts, reference, reward_fn, tokenizer, device)
        row["warnings"] = self.check({**row, "step": step})
        for warning in row["warnings"]:
            log.warning("step %d: reward-hacking monitor: %s", step, warning)
        return row

    def check(self, row: dict) -> list[str]:
        warnings = []
        if self.history:
            first = self.history[0]
            # against the reading with the best gold so far (a slow decline shows there), and a
            # drop counts when it is larger than twice its standard error (sampling noise of two
            # readings on a few dozen prompts easily moves the mean by 0.1)
            if "gold" in row:
                peak = max(self.history, key=lambda r: r.get("gold", float("-inf")))
                noise = 2.0 * (row.get("gold_se", 0.0) ** 2 + peak.get("gold_se", 0.0) ** 2) ** 0.5
                if row["proxy"] > peak["proxy"] and row["gold"] < peak["gold"] - noise:
                    warnings.append(f"proxy reward rose ({peak['proxy']:.3f} -> "
                                    f"{row['proxy']:.3f}) while gold fell ({peak['gold']:.3f} -> "
                                    f"{row['gold']:.3f}, beyond the noise {noise:.3f}) since step "
                                    f"{peak.get('step', '?')}")
            base = max(first["response_length"], 1.0)
            ratio = row["response_length"] / base
            if ratio > self.cfg.length_drift or ratio < 1 / self.cfg.length_drift:
                warnings.append(f"mean response length drifted {ratio:.2f}x from its start "
                                f"({base:.1f} -> {row['response_length']:.1f} tokens)")
        forecast = self.forecast(row)
        if forecast is not None:
            row["forecast_peak_kl"] = forecast["peak_kl"]
            if forecast["warn"]:
                warnings.append(
                    f"the ensemble's lower bound is forecast to peak at KL {forecast['peak_kl']:.2f} "
                    f"(Gao et al.'s RL form fitted to {forecast['points']} readings, R^2 "
                    f"{forecast['r2']:.2f}); KL is {row['kl']:.2f}: optimising further is "
                    "predicted to cost gold")
        if self.cfg.kl_budget > 0 and row["kl"] > self.cfg.kl_budget:
            warnings.append(f"KL to the reference {row['kl']:.2f} exceeds the budget "
                            f"{self.cfg.kl_budget:.2f}")
        if row["entropy"] < self.cfg.min_entropy:
            warnings.append(f"mean token entropy {row['entropy']:.3f} fell below "
                            f"{self.cfg.min_entropy}")
        self.history.append({k: v for k, v in row.items()
                             if k not in ("samples", "adversarial_samples")})
        return warnings

    def best_row(self) -> dict:
        """The ``best`` row of ``metrics.jsonl``: the criterion, its best value, the chosen
        reading and, with gold, the choice's regret."""
        return {"best_by": self.key, "best_value": self.best, **self.selection()}

    def forecast(self, row: dict) -> dict | None:
        """Fit Gao et al.'s RL form, gain = d (alpha - beta log d) with d = sqrt(KL), to the
        lower confidence bound of every reading so far (``lcb``, the stand-in for gold a user
        has); once it predicts a peak, warn when KL reaches ``--forecast-margin`` of the peak's
        KL, i.e. before the predicted downturn rather than after a measured one. None until three
        readings away from the start fit with a peak."""
        import torch

        from alignkit.evaluation.scaling_laws import fit_gao

        readings = [*self.history, row]
        if len(readings) < 4 or any("proxy" not in r for r in readings):
            return None
        start = readings[0]
        d = torch.tensor([max(r["kl"], 0.0) ** 0.5 for r in readings], dtype=torch.float64)
        lcb = torch.tensor([r.get("proxy_mean", r["proxy"]) - r.get("proxy_std", 0.0)
                            for r in readings], dtype=torch.float64)
        gain = lcb - (start.get("proxy_mean", start["proxy"]) - start.get("proxy_std", 0.0))
        try:
            fit = fit_gao(d, gain, "rl")
        except ValueError:  # the policy has not moved enough yet
            return None
        if fit.peak_d is None or fit.r2 < 0.5:
            return None
        peak_kl = fit.peak_d ** 2
        margin = getattr(self.cfg, "forecast_margin", 0.8)
        return {"peak_kl": peak_kl, "r2": fit.r2, "points": fit.points,
                "warn": margin > 0 and row["kl"] >= margin * peak_kl}

    def improved(self, row: dict) -> bool:
        value = self.value(row)
        if self.best is None or value > self.best:
            self.best = value
            return True
        return False

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state.get("history", []), state.get("best")
