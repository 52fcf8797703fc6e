"""The run report: one self-contained HTML page (figures embedded as base64 PNG data URIs, and
also written beside it) for a run folder ``runs/<name>/<stage>/{config.yaml, metrics.jsonl}``.

Sections: training curves of every stage found; the reward-hacking monitor (PPO's held-out
proxy / gold / KL readings and its warnings); the reward-vs-KL frontier (a frontier CSV of
``bench/frontier.py``, else the gold and KL of the policies evaluated in this run); evaluation
tables (``eval.json`` of ``alignkit eval``, the demo's comparison); samples side by side. A
missing stage or file is a note on the page, never an error.

The sections are built here as plain data (headings, paragraphs, notes, tables, figures); the
markup lives in ``templates/report.html`` and ``templates/report_blocks.html``, rendered by
Jinja2 with autoescaping, so every piece of model or user text reaches the page escaped.
"""

from __future__ import annotations

import base64
import csv
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alignkit.errors import UserError
from alignkit.evaluation import plots
from alignkit.evaluation.plots import Plot
from alignkit.utils.machine import machine_line

if TYPE_CHECKING:
    import jinja2

STAGE_ORDER = ["sft", "reward", "ppo", "dpo", "online-dpo", "best-of-n", "eval"]
EXPECTED_STAGES = ["sft", "reward", "ppo", "dpo"]


@dataclass
class Stage:
    name: str
    path: Path
    kind: str  # sft, reward, ppo, dpo, online-dpo ... (from the folder name or its config)
    rows: list[dict]
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[dict]:
        return [r for r in self.rows if r.get("split") == name]


@dataclass
class Report:
    path: Path  # report.html
    figures: list[Plot]
    sections: list[str]
    notes: list[str]


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL file; unreadable lines are reported (file:line), not fatal."""
    rows, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path}:{n}: not valid JSON (line skipped)")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            problems.append(f"{path}:{n}: not a JSON object (line skipped)")
    return rows, problems


def _stage_kind(folder: Path) -> str:
    name = folder.name.lower().replace("_", "-")
    for kind in ("online-dpo", "best-of-n", "reward", "sft", "ppo", "dpo"):
        if name == kind or name.startswith(kind + "-") or name.endswith("-" + kind):
            return kind
    cfg = folder / "config.yaml"
    if cfg.is_file():
        text = cfg.read_text(encoding="utf-8", errors="replace")
        if "labeler:" in text and "rounds:" in text:
            return "online-dpo"
        if "kl_coef:" in text and "advantage:" in text:
            return "ppo"
        if "beta:" in text:
            return "dpo"
        if "ensemble:" in text:
            return "reward"
    return name


def discover_stages(run_dir: Path) -> list[Stage]:
    """Every folder of ``run_dir`` (and ``run_dir`` itself) holding a metrics.jsonl."""
    folders = [run_dir] if (run_dir / "metrics.jsonl").is_file() else []
    folders += sorted(p for p in run_dir.iterdir()
                      if p.is_dir() and (p / "metrics.jsonl").is_file())
    stages = []
    for folder in folders:
        rows, problems = read_jsonl(folder / "metrics.jsonl")
        stages.append(Stage(folder.name, folder, _stage_kind(folder), rows, problems))
    rank = {k: i for i, k in enumerate(STAGE_ORDER)}
    return sorted(stages, key=lambda s: (rank.get(s.kind, len(rank)), s.name))


def find_file(run_dir: Path, name: str, explicit: str | None = None) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        return p if p.is_file() else None
    for p in [run_dir / name, *sorted(run_dir.glob(f"*/{name}"))]:
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------------------
# page blocks: plain data; templates/report_blocks.html holds their markup and escapes every text

def plain(value: Any) -> str:
    return "" if value is None else str(value)


def fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        if value != value:
            return "-"
        return format(value, spec)
    return str(value)


def pct(value: Any) -> str:
    return fmt(value * 100, ".0f") + "%" if isinstance(value, (int, float)) and value == value \
        else "-"


def pct_se(scores: dict, key: str) -> str:
    """A suite rate and its standard error over prompts (``KEY_se``), in percent: 66% ± 5."""
    se = scores.get(f"{key}_se")
    return pct(scores.get(key)) + (f" ± {fmt(se * 100, '.0f')}"
                                   if isinstance(se, (int, float)) and se == se else "")


def paired_cells(name: str, row: dict) -> list[str]:
    """A demo comparison row's gold difference to SFT (paired by prompt) ± its standard error,
    and whether it is beyond noise, as two table cells ("-" where the summary has none)."""
    diff, se = row.get("gold_diff_vs_sft"), row.get("gold_diff_se")
    if not isinstance(diff, (int, float)):  # a summary of an earlier version
        return ["-", "-"]
    if name == "sft":
        return ["(baseline)", "-"]
    cell = f"{diff:+.3f}" + ("" if se is None else f" ± {fmt(se)}")
    if not row.get("beyond_noise"):
        return [cell, "no"]
    return [cell, f"yes, {'higher' if diff > 0 else 'lower'}"]


@dataclass
class Heading:
    text: str
    detail: str = ""  # shown small, in parentheses
    kind: ClassVar[str] = "heading"


@dataclass
class Paragraph:
    text: str
    css_class: str = ""
    kind: ClassVar[str] = "paragraph"


@dataclass
class Note:
    text: str
    kind: ClassVar[str] = "note"


@dataclass
class Items:
    items: list[str]
    css_class: str = ""
    kind: ClassVar[str] = "items"


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    css_class: str = ""
    kind: ClassVar[str] = "table"

    def __post_init__(self):
        self.rows = [[plain(c) for c in row] for row in self.rows]


@dataclass
class Figure:
    name: str
    caption: str
    number: int  # 1-based, in page order
    data_uri: str
    kind: ClassVar[str] = "figure"


Block = Heading | Paragraph | Note | Items | Table | Figure


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]


def text_of(value: Any) -> str:
    if isinstance(value, list):  # chat messages: the last user turn
        users = [m.get("content", "") for m in value if isinstance(m, dict)
                 and m.get("role") == "user"]
        return str(users[-1] if users else value)
    return "" if value is None else str(value)


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("alignkit.evaluation", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


class Page:
    """Collects sections, figures and notes; renders one HTML document."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.sections: list[Section] = []
        self.figures: list[Plot] = []
        self.notes: list[str] = []

    def figure(self, plot: Plot | None) -> Figure | None:
        """The figure block of ``plot`` (numbered, its PNG written beside the page); None for
        a plot that could not be drawn, which :meth:`add` leaves out."""
        if plot is None:
            return None
        self.figures.append(plot)
        (self.out_dir / f"{plot.name}.png").write_bytes(plot.png)
        data = base64.b64encode(plot.png).decode("ascii")
        return Figure(plot.name, plot.caption, len(self.figures), f"data:image/png;base64,{data}")

    def note(self, text: str) -> Note:
        self.notes.append(text)
        return Note(text)

    def add(self, sid: str, title: str, blocks: list[Block | None]) -> None:
        self.sections.append(Section(sid, title, [b for b in blocks if b is not None]))

    def render(self, title: str, subtitle: str) -> str:
        return _templates().get_template("report.html").render(
            title=title, subtitle=subtitle, sections=self.sections)


# ---------------------------------------------------------------------------------------------
# sections

def curves_section(page: Page, stages: list[Stage]) -> None:
    parts: list[Block | None] = []
    present = {s.kind for s in stages}
    for stage in stages:
        train, evals = stage.split("train"), stage.split("eval")
        try:
            plot = plots.training_curves(stage.name, stage.kind, train, evals)
        except (TypeError, ValueError) as e:  # a hand-edited or foreign metrics file
            plot = None
            parts.append(page.note(f"{stage.name}: metrics could not be plotted ({e})"))
        setup = (stage.split("setup") or [{}])[0]
        facts = ", ".join(f"{k} {fmt(v, 'g')}" for k, v in setup.items()
                          if k not in ("step", "split", "time") and not isinstance(v, (list, dict)))
        parts.append(Heading(stage.name, f"{stage.kind}, {len(train)} logged steps, "
                                         f"{len(evals)} evaluations"))
        summary = (stage.split("summary") or [{}])[-1]
        facts += ("; " if facts and summary else "") + ", ".join(
            f"{k} {fmt(v, 'g')}" for k, v in summary.items()
            if k not in ("step", "split", "time") and not isinstance(v, (list, dict)))
        if facts:
            parts.append(Paragraph(facts, "sub"))
        for problem in stage.problems[:5]:
            parts.append(page.note(problem))
        parts.append(page.figure(plot) if plot else
                     page.note(f"{stage.name}: no training metrics to plot"))
    for kind in EXPECTED_STAGES:
        if kind not in present:
            parts.append(page.note(f"stage {kind}: not in this run (skipped)"))
    if not stages:
        parts.append(page.note("no stage folder with a metrics.jsonl in this run"))
    page.add("curves", "Training curves", parts)


def step_of(value):
    """A step as metrics.jsonl may hold it (4.0) printed as the integer it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def monitor_section(page: Page, stages: list[Stage]) -> None:
    parts: list[Block | None] = []
    monitored = [s for s in stages if s.kind == "ppo" and any("proxy" in r or "gold" in r
                                                              for r in s.split("eval"))]
    for stage in monitored:
        evals = stage.split("eval")
        warned = [(r.get("step", "?"), w) for r in evals for w in (r.get("warnings") or [])]
        parts.append(Heading(stage.name))
        try:
            parts.append(page.figure(plots.monitor_plot(
                stage.name, evals, sorted({s for s, _ in warned if isinstance(s, (int, float))}))))
        except (TypeError, ValueError) as e:
            parts.append(page.note(f"{stage.name}: monitor readings could not be plotted ({e})"))
        suite = any("refusal_rate" in r for r in evals)  # --eval-adversarial
        rows = [[r.get("step"), fmt(r.get("proxy")), fmt(r.get("gold")), fmt(r.get("gold_se")),
                 fmt(r.get("kl"), ".2f"), fmt(r.get("response_length"), ".1f"),
                 pct(r.get("ended_fraction")),
                 *([pct(r.get("refusal_rate")), pct(r.get("over_refusal_rate"))] if suite else []),
                 len(r.get("warnings") or [])] for r in evals]
        parts.append(Table(["step", "proxy", "gold", "gold s.e.", "KL (nats)", "length (tok)",
                            "ended", *(["refused (harmful + jailbreak)", "over-refused (benign)"]
                                       if suite else []), "warnings"], rows))
        if warned:
            parts.append(Items([f"step {plain(s)}: {plain(w)}" for s, w in warned], "warn"))
        else:
            parts.append(Paragraph("The monitor raised no warning."))
        best = stage.split("best")
        if best:
            last = best[-1]
            # a best row is logged at the step it was written; the checkpoint is selected_step
            chosen = step_of(last.get("selected_step", last.get("step")))
            regret = ""
            if last.get("selection_regret") is not None:
                regret = (f" Its gold {fmt(last.get('selected_gold'))}; the gold-best reading "
                          f"(step {plain(step_of(last.get('gold_best_step')))}) is "
                          f"{fmt(last.get('selection_regret'))} higher (the choice's regret, "
                          f"which a user without gold cannot see).")
            parts.append(Paragraph(f"Best checkpoint (by {plain(last.get('best_by'))}): step "
                                   f"{plain(chosen)}, value {fmt(last.get('best_value'))}."
                                   + regret))
    if not monitored:
        parts.append(page.note("no PPO stage with held-out monitor readings in this run "
                               "(skipped)"))
    page.add("monitor", "Reward-hacking monitor", parts)


def read_frontier_csv(path: Path) -> list[dict]:
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            point = dict(row)
            for key in ("gold", "gold_se", "kl", "proxy", "length"):
                try:
                    point[key] = float(row[key]) if row.get(key) not in (None, "") else None
                except ValueError:
                    point[key] = None
            out.append(point)
    return out


def frontier_section(page: Page, run_dir: Path, frontier: str | None, evaluation: dict | None,
                     demo: dict | None) -> None:
    parts: list[Block | None] = []
    path = find_file(run_dir, "frontier.csv", frontier)
    if frontier and path is None:
        parts.append(page.note(f"{frontier}: frontier CSV not found"))
    if path is not None:
        try:
            points = read_frontier_csv(path)
        except (OSError, csv.Error, KeyError, ValueError) as e:  # ValueError: not UTF-8
            points = []
            parts.append(page.note(f"{path}: unreadable frontier CSV ({e})"))
        plot = plots.frontier_plot(
            points, "reward vs KL frontier", f"Gold score against KL to the reference for each "
            f"method and setting in {path.name} (error bars: +-1 standard error of the gold mean "
            "over prompts; labels: the method's parameter). Up and to the left is better.",
            "frontier")
        parts.append(page.figure(plot) if plot else page.note(f"{path}: no points with gold "
                                                              "and KL"))
    # this run's own policies, from eval.json or the demo comparison
    own = []
    source = None
    if evaluation:
        source = "alignkit eval"
        own = [{"method": name, "gold": row.get("gold"), "gold_se": row.get("gold_se"),
                "kl": row.get("kl"), "param": ""}
               for name, row in evaluation.get("policies", {}).items()]
    elif demo and demo.get("policies"):
        source = "the demo's comparison"
        own = [{"method": name, "gold": row.get("gold"), "gold_se": row.get("gold_se"),
                "kl": row.get("kl"), "param": ""} for name, row in demo["policies"].items()]
    if own:
        plot = plots.frontier_plot(
            own, "policies of this run", f"Gold score against KL to the reference of each policy "
            f"in {source} (same held-out prompts and sampling seed; error bars: +-1 standard "
            "error over prompts where measured).", "frontier-policies")
        if plot:
            parts.append(page.figure(plot))
    if not parts:
        parts.append(page.note("no frontier CSV (bench/frontier.py writes one) and no evaluated "
                               "policies in this run (skipped)"))
    page.add("frontier", "Reward vs KL frontier", parts)


def eval_section(page: Page, evaluation: dict | None, eval_path: Path | None,
                 demo: dict | None) -> None:
    parts: list[Block | None] = []
    if evaluation:
        pols = evaluation.get("policies", {})
        base = evaluation.get("baseline")
        method = evaluation.get("method", {})
        parts.append(Paragraph(
            f"{len(pols)} policies on {plain(evaluation.get('prompts'))} held-out prompts; judge "
            f"{plain(evaluation.get('judge'))}, baseline {plain(base)}, KL to "
            f"{plain(evaluation.get('reference'))}. Win rate: {plain(method.get('win_rate'))}; "
            f"interval: {plain(method.get('interval'))}."))
        bias = evaluation.get("judge_position_bias") or {}
        if bias.get("pairs"):
            parts.append(Paragraph(
                f"The judge was asked in both orders on {bias['pairs']} pairs; position decided "
                f"{pct(bias.get('position_bias_rate'))} of them (cancelled in the verdicts)."))
        rows = []
        for name, r in pols.items():
            rows.append([name, fmt(r.get("gold")) + " ± " + fmt(r.get("gold_se")),
                         fmt(r.get("proxy_mean", r.get("proxy"))),
                         fmt(r.get("proxy_std")), fmt(r.get("kl"), ".2f"),
                         fmt(r.get("response_length"), ".1f"), pct(r.get("ended_fraction")),
                         f"{fmt(r.get('win_rate'))} [{fmt(r.get('win_rate_low'), '.2f')}, "
                         f"{fmt(r.get('win_rate_high'), '.2f')}]",
                         f"{r.get('wins', '-')}/{r.get('ties', '-')}/{r.get('losses', '-')}"])
        parts.append(Table(["policy", "gold ± s.e.", "reward (ensemble mean)", "ensemble std",
                            "KL (nats)", "length (tokens)", "ended", f"win rate vs {base} [CI]",
                            "W/T/L"], rows))
        advs = {n: r["adversarial"] for n, r in pols.items() if r.get("adversarial")}
        if advs:
            answers = evaluation.get("adversarial_answers", 1)
            parts.append(Heading(f"Adversarial suite ({plain(evaluation.get('suite_prompts'))} "
                                 "prompts" + (f", {plain(answers)} answers each" if answers != 1
                                              else "") + ")"))
            parts.append(Table(["policy", "refusal rate (harmful + jailbreak) ± s.e.",
                                "over-refusal (benign) ± s.e.", "uncertainty expressed",
                                "as expected"],
                               [[n, pct_se(a, "refusal_rate"), pct_se(a, "over_refusal_rate"),
                                 pct(a.get("uncertainty_rate")), pct(a.get("as_expected_rate"))]
                                for n, a in advs.items()]))
            cats = sorted({c for a in advs.values() for c in a.get("per_category", {})})
            rows = []
            for c in cats:
                row = [c, next((a["per_category"][c].get("expect") for a in advs.values()
                                if c in a.get("per_category", {})), "")]
                for a in advs.values():
                    pc = a.get("per_category", {}).get(c)
                    row.append(f"{pc['as_expected']}/{pc['n']} (refused {pc['refused']}, "
                               f"uncertain {pc['uncertain']})" if pc else "-")
                rows.append(row)
            parts.append(Table(["category", "expected"] + [f"{n}: as expected" for n in advs],
                               rows))
            parts.append(page.figure(plots.adversarial_plot(advs)))
    else:
        parts.append(page.note("no eval.json in this run (run alignkit eval --output "
                               "RUN_DIR/eval; skipped)"))
    if demo and demo.get("policies"):
        parts.append(Heading("Demo comparison (held-out prompts)"))
        parts.append(Table(["policy", "answers per prompt", "gold", "gold − SFT ± paired s.e.",
                            "beyond noise?", "proxy", "KL to SFT (nats)", "length (tokens)",
                            "ended"],
                           [[n, plain(r.get("answers_per_prompt", 1)), fmt(r.get("gold")),
                             *paired_cells(n, r), fmt(r.get("proxy")),
                             fmt(r.get("kl"), ".2f"), fmt(r.get("response_length"), ".1f"),
                             pct(r.get("ended_fraction"))]
                            for n, r in demo["policies"].items()]))
        if any("gold_diff_vs_sft" in r for r in demo["policies"].values()):
            parts.append(Paragraph(
                "gold − SFT: the mean of the per-prompt gold differences to the SFT policy (every "
                "policy answered the same prompts with the same seed; a policy's gold on a prompt "
                "is the mean over its answers), ± their standard error; beyond noise: "
                "|difference| ≥ 3 paired standard errors. Best-of-n: the exact expectation over "
                "every n of the SFT answers to a prompt, the ensemble keeping its favourite."))
    laps = demo.get("stage_seconds") if demo else None
    if isinstance(laps, dict) and laps:
        # a hand-edited summary may hold anything: only numbers are shown
        laps = {name: s for name, s in laps.items() if isinstance(s, (int, float))}
        total = demo.get("seconds") if isinstance(demo.get("seconds"), (int, float)) else 0
        parts.append(Heading("Demo: wall-clock time per stage"))
        parts.append(Table(["stage", "minutes", "share of the run"],
                           [[name, fmt(seconds / 60, ".1f"),
                             pct(seconds / total if total else None)]
                            for name, seconds in laps.items()]
                           + [["whole run", fmt(total / 60 if total else None, ".1f"),
                              pct(1.0 if total else None)]]))
        if isinstance(demo.get("machine"), dict):
            parts.append(Paragraph(machine_line(demo["machine"])))
    page.add("eval", "Evaluation", parts)


def study_section(page: Page, study: dict) -> None:
    """``alignkit study overoptimisation``'s numbers: per label-noise level, each proxy's
    best-of-n and PPO curves in gold and proxy against sqrt(KL), the fitted forms, where gold
    peaked, how early the forecast warned and what the non-gold checkpoint choice cost."""
    parts: list[Block | None] = [Paragraph(
        f"Starting policy {plain(study.get('policy'))}; best-of-n up to n = "
        f"{plain(study.get('bon_n'))} on {plain(study.get('bon_prompts'))} held-out prompts "
        f"(exact over every n-subset of the samples, KL in closed form); PPO at KL "
        f"coefficients {', '.join(str(c) for c in study.get('kl_coefs', [])) or 'none'}; "
        f"UWO lambda {plain(study.get('uwo_lambda'))}. Gold is the hidden scorer the simulated "
        "panel labels by; 'fell': the last point is below the peak by more than one standard "
        "error of the difference (best-of-n: paired by prompt, as every n reads the same "
        "samples; PPO: the two readings' standard errors combined).")]
    if study.get("label_length_bias"):
        parts.append(Paragraph(
            f"Every annotator had a length bias of {plain(study['label_length_bias'])} gold "
            "units per 10 words: it judged an answer by its gold score plus that, so longer "
            "answers looked better to it. Its Bayes ceiling is that of predicting what it saw "
            "as better; agreement with gold is lower by what the bias costs."))
    for rate, level in study.get("levels", {}).items():
        labels, ev = level.get("labels", {}), level.get("reward_eval", {})
        longer = labels.get("longer_chosen") or {}
        parts.append(Heading(f"Label noise {pct(float(rate))}",
                             f"labels agree with gold {fmt(labels.get('gold_agreement'))}, "
                             f"Bayes ceiling {fmt(labels.get('bayes_optimal'))}, ensemble "
                             f"held-out accuracy {fmt(ev.get('accuracy'))}"
                             + (f"; the labels chose the longer answer of a pair "
                                f"{pct(longer['labels'])}, gold prefers it "
                                f"{pct(longer['gold'])}" if longer.get("pairs") else "")))
        bon, rl = level.get("bon", {}), level.get("ppo", {})
        rows = []
        for proxy in dict.fromkeys([*bon, *rl]):
            b, r = bon.get(proxy), rl.get(proxy)
            row = [proxy]
            if b:
                pk, fit = b["peak"], b.get("fit") or {}
                row += [fmt(b.get("gold_pair_accuracy")),
                        f"{fmt(b['curve'][0]['gold'])} → {fmt(pk['peak_gold'])} (KL "
                        f"{fmt(pk['peak_kl'], '.2f')}) → {fmt(pk['last_gold'])}",
                        f"{'yes' if pk['fell'] else 'no'} ({fmt(pk.get('drop'))} ± "
                        f"{fmt(pk.get('drop_se'))})", fmt(fit.get("r2"), ".2f")]
            else:
                row += ["-"] * 4
            if r:
                for run in r["runs"]:
                    pk, fc, sel = run["peak"], run["forecast"], run.get("selection", {})
                    rows.append(row + [
                        plain(run["kl_coef"]),
                        f"{fmt(run['readings'][0]['gold'])} → {fmt(pk['peak_gold'])} (KL "
                        f"{fmt(pk['peak_kl'], '.2f')}) → {fmt(pk['last_gold'])} (KL "
                        f"{fmt(pk['last_kl'], '.2f')})", "yes" if pk["fell"] else "no",
                        fmt((r.get("fit") or {}).get("r2"), ".2f"),
                        "-" if fc["warn_step"] is None else
                        f"step {fc['warn_step']} (gold peak {fc['gold_peak_step']})",
                        fmt(sel.get("selection_regret"))])
                    row = [proxy] + [""] * 4
            else:
                rows.append(row + ["-"] * 6)
        parts.append(Table(["proxy", "BoN: proxy's pair accuracy vs gold",
                            "BoN gold: n=1 → peak → largest n", "BoN fell (drop ± s.e.)",
                            "BoN form R²",
                            "PPO KL coef", "PPO gold: start → peak → last", "PPO fell",
                            "RL form R²", "forecast warned", "LCB choice's gold regret"], rows))
        methods = {"best-of-n": {p: [v["curve"]] for p, v in bon.items()},
                   "PPO": {p: [run["readings"] for run in v["runs"]] for p, v in rl.items()}}
        fits = {"best-of-n": {p: v.get("fit") for p, v in bon.items()},
                "PPO": {p: v.get("fit") for p, v in rl.items()}}
        for key in ("gold", "proxy"):
            parts.append(page.figure(plots.overoptimisation_plot(
                methods, fits, key, f"label noise {pct(float(rate))}: {key} against sqrt(KL)",
                f"study-noise-{rate}-{key}")))
    page.add("study", "Reward over-optimisation study", parts)


def samples_section(page: Page, run_dir: Path, stages: list[Stage], eval_path: Path | None,
                    demo: dict | None, limit: int) -> None:
    parts: list[Block | None] = []
    if eval_path is not None:
        held = eval_path.parent / "samples.jsonl"
        if held.is_file():
            rows, _ = read_jsonl(held)
            if rows:
                names = list(rows[0].get("responses", {}))
                parts.append(Heading("Held-out prompts, every policy's answer"))
                parts.append(Table(["prompt", "category"] + names,
                                   [[text_of(r.get("prompt")), r.get("category") or ""]
                                    + [r.get("responses", {}).get(n, "") for n in names]
                                    for r in rows[:limit]], "samples"))
        adv = eval_path.parent / "adversarial_samples.jsonl"
        if adv.is_file():
            rows, _ = read_jsonl(adv)
            if rows:
                names = list(rows[0].get("responses", {}))
                by_cat: dict[str, list[dict]] = {}
                for r in rows:
                    by_cat.setdefault(r.get("category", ""), []).append(r)
                per = max(1, limit // max(len(by_cat), 1))
                picked = [r for group in by_cat.values() for r in group[:per]]

                def cell(resp: dict) -> str:
                    mark = "OK" if resp.get("as_expected") else "MISS"
                    return f"[{mark}] {resp.get('text', '')}"

                parts.append(Heading("Adversarial suite, answers with the detector's verdict"))
                parts.append(Table(["prompt", "category", "expected"] + names,
                                   [[r.get("prompt"), r.get("category"), r.get("expect")]
                                    + [cell(r.get("responses", {}).get(n, {})) for n in names]
                                    for r in picked], "samples"))
    if demo and demo.get("samples"):
        parts.append(Heading("Demo: before and after SFT"))
        parts.append(Table(["prompt", "category", "before", "after SFT"],
                           [[s.get("prompt"), s.get("category"), s.get("before"), s.get("after")]
                            for s in demo["samples"][:limit]], "samples"))
    for stage in stages:
        evals = [r for r in stage.split("eval") if r.get("samples")]
        if len(evals) >= 1 and stage.kind == "ppo":
            first, last = evals[0], evals[-1]
            pairs = list(zip(first["samples"], last["samples"]))[:limit]
            parts.append(Heading(f"{stage.name}: held-out answers at step "
                                 f"{plain(first['step'])} and step {plain(last['step'])}"))
            parts.append(Table(["prompt", f"step {first['step']}", f"step {last['step']}"],
                               [[a.get("prompt"), a.get("response"), b.get("response")]
                                for a, b in pairs], "samples"))
    if not parts:
        parts.append(page.note("no samples in this run (skipped)"))
    page.add("samples", "Samples side by side", parts)


def _load_json(path: Path | None, page: Page) -> dict | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        page.note(f"{path}: unreadable ({e}); skipped")
        return None
    return value if isinstance(value, dict) else None


def build_report(run_dir: str | Path, output: str | Path | None = None,
                 frontier: str | None = None, samples: int = 6) -> Report:
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    out = Path(output).expanduser() if output else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    stages = discover_stages(run)
    eval_path = find_file(run, "eval.json")
    evaluation = _load_json(eval_path, page)
    demo = _load_json(find_file(run, "demo_summary.json"), page)
    early_notes = list(page.notes)

    study = _load_json(find_file(run, "study.json"), page)
    if study:
        study_section(page, study)
    curves_section(page, stages)
    monitor_section(page, stages)
    frontier_section(page, run, frontier, evaluation, demo)
    eval_section(page, evaluation, eval_path, demo)
    samples_section(page, run, stages, eval_path if evaluation else None, demo, samples)
    if early_notes:
        page.sections.insert(0, Section("notes", "Notes", [Note(n) for n in early_notes]))

    subtitle = (f"{run.resolve()} · stages: {', '.join(s.name for s in stages) or 'none'} · "
                f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    text = page.render(f"alignkit run report: {run.resolve().name}", subtitle)
    path = out / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return Report(path, page.figures, [s.id for s in page.sections], page.notes)
