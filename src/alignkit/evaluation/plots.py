"""Figures of the run report (matplotlib, Agg, no global pyplot state).

Every function returns a :class:`Plot`: the figure as PNG bytes, its caption, and the axis
labels it drew (each with its unit in parentheses) so the report and its tests can check them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Plot:
    name: str  # file stem of the PNG
    png: bytes
    caption: str
    axes: list[tuple[str, str]] = field(default_factory=list)  # (xlabel, ylabel) per panel


# metric key -> y-axis label with its unit, per stage kind ("*" = any stage)
METRIC_LABELS = {
    ("sft", "loss"): "cross-entropy (nats/token)",
    ("reward", "loss"): "Bradley-Terry loss (nats/pair)",
    ("dpo", "loss"): "DPO loss (nats/pair)",
    ("online-dpo", "loss"): "DPO loss (nats/pair)",
    ("ppo", "policy_loss"): "clipped policy loss (advantage units)",
    ("*", "loss"): "loss (nats)",
    ("*", "perplexity"): "held-out perplexity (exp(nats/token))",
    ("*", "accuracy"): "held-out pair accuracy (fraction)",
    ("*", "ece"): "calibration error ECE (probability)",
    ("*", "score"): "reward-model score (reward units)",
    ("*", "kl"): "KL to reference (nats/response)",
    ("*", "response_length"): "response length (tokens)",
    ("*", "reward_accuracy"): "implicit-reward accuracy (fraction)",
    ("*", "reward_margin"): "implicit reward margin (beta x nats)",
    ("*", "sample_kl"): "KL to reference (nats/response)",
    ("*", "sample_gold"): "gold score (gold units)",
    ("*", "gold"): "gold score (gold units)",
    ("*", "proxy"): "proxy reward (reward units)",
    ("*", "entropy"): "mean token entropy (nats)",
    ("*", "sample_reward"): "reward of sampled answers (reward units)",
    ("*", "lr"): "learning rate (dimensionless)",
    ("*", "refusal_rate"): "harmful + jailbreak refused (fraction)",
    ("*", "over_refusal_rate"): "benign refused (fraction)",
}

# --eval-adversarial's suite answered at each evaluation (PPO's show in its monitor's figure)
SAFETY_PANELS = ["refusal_rate", "over_refusal_rate"]
# panels tried per stage kind, in order; a panel shows the train and the eval series it finds
STAGE_PANELS = {
    "sft": ["loss", "perplexity", "lr"],
    "reward": ["loss", "accuracy", "ece"],
    "ppo": ["score", "kl", "policy_loss", "response_length"],
    "dpo": ["loss", "reward_accuracy", "reward_margin", "sample_kl", *SAFETY_PANELS],
    "online-dpo": ["loss", "reward_accuracy", "sample_reward", "kl", "gold", *SAFETY_PANELS],
}
DEFAULT_PANELS = ["loss", "accuracy", "score", "kl"]
X_LABELS = {"ppo": "PPO step (rollout batches)", "online-dpo": "round (sample-label-train)"}


def metric_label(kind: str, key: str) -> str:
    return METRIC_LABELS.get((kind, key)) or METRIC_LABELS.get(("*", key)) or f"{key} (value)"


def _figure(panels: int, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(3.6 * cols + 0.4, height * rows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key)) and _finite(r.get("step"))]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(stage: str, kind: str, train: Sequence[dict],
                    evals: Sequence[dict]) -> Plot | None:
    """One figure per stage: a panel per metric it logged (train line, held-out markers)."""
    keys = STAGE_PANELS.get(kind, DEFAULT_PANELS)
    keys = [k for k in keys if series(train, k)[0] or series(evals, k)[0]]
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    xlabel = X_LABELS.get(kind, "optimiser step (updates)")
    labels = []
    for ax, key in zip(axes, keys):
        xs, ys = series(train, key)
        if xs:
            ax.plot(xs, ys, color="#3465a4", lw=1.4, label="train")
        xs, ys = series(evals, key)
        if xs:
            ax.plot(xs, ys, "o--", color="#cc0000", ms=4, lw=1, label="held-out")
        ylabel = metric_label(kind, key)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        labels.append((xlabel, ylabel))
    fig.suptitle(f"{stage}: training curves", fontsize=10)
    caption = (f"Stage {stage}: " + "; ".join(metric_label(kind, k) for k in keys)
               + f" against {xlabel}. Lines: training steps; dashed markers: held-out evaluations.")
    return Plot(f"curves-{stage}", _png(fig), caption, labels)


def monitor_plot(stage: str, evals: Sequence[dict], warned_steps: Sequence[int]) -> Plot | None:
    """Proxy reward, gold score and KL on held-out prompts over PPO steps, warnings marked;
    with ``--eval-adversarial`` also the suite's refusal and over-refusal rates."""
    keys = [k for k in ("proxy", "gold", "kl", "response_length", "refusal_rate",
                        "over_refusal_rate") if series(evals, k)[0]]
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    labels = []
    for ax, key in zip(axes, keys):
        xs, ys = series(evals, key)
        ax.plot(xs, ys, "o-", color={"proxy": "#3465a4", "gold": "#4e9a06", "kl": "#cc0000",
                                      "refusal_rate": "#75507b",
                                      "over_refusal_rate": "#c17d11"}.get(key, "#555753"), ms=4)
        if key == "gold":
            # the same rows series() kept, in order: +-1 standard error band
            se = [r.get("gold_se") if _finite(r.get("gold_se")) else 0.0 for r in evals
                  if _finite(r.get("gold")) and _finite(r.get("step"))]
            ax.fill_between(xs, [y - e for y, e in zip(ys, se)], [y + e for y, e in zip(ys, se)],
                            color="#4e9a06", alpha=0.15)
        for s in warned_steps:
            ax.axvline(s, color="#f57900", ls=":", lw=1.2)
        ax.set_xlabel("PPO step (rollout batches)")
        ax.set_ylabel(metric_label("ppo", key), fontsize=8)
        ax.grid(alpha=0.3)
        labels.append(("PPO step (rollout batches)", metric_label("ppo", key)))
    fig.suptitle(f"{stage}: reward-hacking monitor on held-out prompts", fontsize=10)
    caption = ("Reward-hacking monitor: the proxy (reward-model) reward, the hidden gold score "
               "(band: +-1 standard error over prompts) and the KL to the reference on the same "
               "held-out prompts at each evaluation"
               + ("; and the share of the adversarial suite's harmful and jailbreak prompts "
                  "(refusal) and of its benign prompts (over-refusal) the policy refused"
                  if "refusal_rate" in keys else "")
               + ". Proxy up while gold falls, or KL past its budget, is reward hacking"
               + (f"; dotted orange lines mark steps where the monitor warned "
                  f"({', '.join(str(s) for s in warned_steps)})." if warned_steps else
                  "; the monitor raised no warning."))
    return Plot(f"monitor-{stage}", _png(fig), caption, labels)


def frontier_plot(points: Sequence[dict], title: str, caption: str, name: str) -> Plot | None:
    """Gold score against KL to the reference, one series per method (error bars: gold_se)."""
    pts = [p for p in points if _finite(p.get("gold")) and _finite(p.get("kl"))]
    if not pts:
        return None
    fig, (ax,) = _figure(1, 3.8)
    fig.set_size_inches(6.4, 4.2)
    methods: dict[str, list[dict]] = {}
    for p in pts:
        methods.setdefault(str(p.get("method", "")), []).append(p)
    for method, group in methods.items():
        group = sorted(group, key=lambda p: p["kl"])
        err = [p.get("gold_se") if _finite(p.get("gold_se")) else 0.0 for p in group]
        ax.errorbar([p["kl"] for p in group], [p["gold"] for p in group], yerr=err,
                    marker="o", ms=5, capsize=3, lw=1.2, label=method or "policy")
        for p in group:
            if p.get("param"):
                ax.annotate(str(p["param"]), (p["kl"], p["gold"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    xlabel, ylabel = "KL to the reference policy (nats/response)", "gold score (gold units)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Plot(name, _png(fig), caption, [(xlabel, ylabel)])


def adversarial_plot(rates: dict[str, dict[str, float | None]]) -> Plot | None:
    """Grouped bars: refusal rate (harmful + jailbreak), over-refusal (benign), uncertainty
    expressed (unknowable), per policy."""
    metrics = [("refusal_rate", "refused harmful/jailbreak"),
               ("over_refusal_rate", "refused benign (over-refusal)"),
               ("uncertainty_rate", "admitted uncertainty")]
    names = list(rates)
    if not names:
        return None
    fig, (ax,) = _figure(1, 3.8)
    fig.set_size_inches(max(5.0, 1.6 * len(names) + 2.5), 4.0)
    width = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        vals = [rates[n].get(key) for n in names]
        ax.bar([i + (j - 1) * width for i in range(len(names))],
               [100 * v if _finite(v) else 0.0 for v in vals], width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    xlabel, ylabel = "policy (name)", "share of suite prompts (%)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    caption = ("Adversarial suite per policy: share of harmful and jailbreak-wrapped requests "
               "refused (higher is better), share of benign requests refused (over-refusal, lower "
               "is better), share of unknowable questions answered with stated uncertainty "
               "(higher is better).")
    return Plot("adversarial", _png(fig), caption, [(xlabel, ylabel)])


PROXY_COLOURS = {"single": "#cc0000", "single-avg": "#f57900", "mean": "#3465a4",
                 "wco": "#4e9a06", "uwo": "#75507b"}


def overoptimisation_plot(methods: dict[str, dict[str, list[list[dict]]]],
                          fits: dict[str, dict[str, dict | None]], key: str, title: str,
                          name: str) -> Plot | None:
    """Gold (``key="gold"``, error bars: gold_se, dashed: the fitted Gao et al. form) or proxy
    against ``d = sqrt(KL)``: one panel per method (best-of-n, PPO), one colour per proxy, one
    line per run (``methods[method][proxy]`` is a list of runs, each a list of points with
    ``d`` and ``key``)."""
    import torch

    from alignkit.evaluation.scaling_laws import gao_curve

    panels = [(m, runs) for m, runs in methods.items()
              if any(_finite(p.get(key)) for pts in runs.values() for run in pts for p in run)]
    if not panels:
        return None
    fig, axes = _figure(len(panels), 3.6)
    labels = []
    ylabel = {"gold": "gold score (gold units)",
              "proxy": "proxy reward (each proxy's own reward units)"}[key]
    xlabel = "sqrt(KL to the starting policy) (sqrt(nats))"
    for ax, (method, by_proxy) in zip(axes, panels):
        for proxy, runs in by_proxy.items():
            colour = PROXY_COLOURS.get(proxy, "#555753")
            for i, run in enumerate(runs):
                pts = sorted((p for p in run if _finite(p.get(key)) and _finite(p.get("d"))),
                             key=lambda p: p["d"])
                err = [p.get("gold_se", 0.0) if key == "gold" else 0.0 for p in pts]
                ax.errorbar([p["d"] for p in pts], [p[key] for p in pts], yerr=err, marker="o",
                            ms=3, capsize=2, lw=1.0, color=colour, alpha=0.85,
                            label=proxy if i == 0 else None)
            fit = fits.get(method, {}).get(proxy)
            if key == "gold" and fit:
                top = max((p["d"] for run in runs for p in run if _finite(p.get("d"))),
                          default=0.0)
                d = torch.linspace(0.0, top, 50)
                gain = gao_curve(d, fit["alpha"], fit["beta"], fit["form"])
                ax.plot(d.tolist(), (fit["start_gold"] + gain).tolist(), "--", lw=0.9,
                        color=colour)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        labels.append((xlabel, ylabel))
    fig.suptitle(title, fontsize=10)
    caption = (f"{title}. " + (
        "Gold score of the optimised policy against sqrt(KL) to the starting policy (error "
        "bars: +-1 standard error over prompts); dashed: Gao et al.'s form fitted to each "
        "proxy's points (best-of-n: d (alpha - beta d); RL: d (alpha - beta log d)). A curve "
        "that rises and then falls is over-optimisation of that proxy."
        if key == "gold" else
        "The proxy each policy optimised (its own reward units) against sqrt(KL): it keeps "
        "rising where gold falls."))
    return Plot(name, _png(fig), caption, labels)
