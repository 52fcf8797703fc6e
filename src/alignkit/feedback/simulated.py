"""Simulated annotators: the experimental stand-in for people (docs/demo-task.md).

A hidden gold scorer (:class:`alignkit.judges.gold.GoldScorer`) gives each response a score
``g``; annotators see only the responses and answer through Bradley-Terry noise:

* comparing two responses, annotator ``k`` picks ``a`` with probability
  ``P(a) = c_k / 2 + (1 - c_k) * sigmoid(s * (g_a - g_b) / T_k)``, where ``T_k`` is the
  annotator's temperature, ``c_k`` its careless rate (the share of labels it gives at random)
  and ``s`` the panel's gold scale (docs/demo-task.md: with T = 1 the demo gold gave ~70 % agreement
  with gold; scaling the gold x2 gave ~79 %). ``T = 0`` is a perfect annotator (ties at random).
* ranking K responses is Plackett-Luce sampling with the same temperature: the best is drawn
  from ``softmax(s * g / T)``, then the best of the rest, and so on (a careless label is a
  uniformly random permutation). By Luce's choice axiom the chance that response i is ranked
  above j is then exactly the pairwise probability above, so rankings and pairs share one
  Bayes-optimal accuracy.
* an annotator with a ``length_bias`` ``b`` judges by what it sees, ``g + b * words / 10``
  in place of ``g``: longer answers look better to it, as they do to people (Singhal et al.
  2023, "A Long Way to Go"; Saito et al. 2023, "Verbosity Bias in Preference Labeling").
  Such a bias is shared by the whole panel, so more labels or more annotators do not average
  it out, and a reward model learns it as if it were quality.

Because the gold is known, the best accuracy any reward model can reach on the labels is known
too: :func:`bayes_optimal_accuracy` is the expected agreement of the ideal predictor (always
predict the response the labelling annotator sees as better: the gold-better one when it has
no length bias) with the noisy labels, i.e. the mean over compared pairs of the annotator's
probability of choosing that response.

Records follow README.md "Data" -- rankings ``{"prompt", "responses", "ranking",
"annotator"}`` (``ranking`` = response indices, best first) and pairs ``{"prompt", "chosen",
"rejected", "annotator"}`` -- plus ``"gold"``: the gold scores aligned with ``responses`` (for
rankings) or with ``[chosen, rejected]`` (for pairs), kept for analysis only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from alignkit.errors import UserError

__all__ = ["Annotator", "PanelConfig", "SimulatedPanel", "DEFAULT_ANNOTATORS", "sigmoid",
           "compared_pairs", "pair_correct_probabilities", "bayes_optimal_accuracy",
           "gold_agreement", "agreement_report", "with_label_noise", "with_length_bias",
           "response_words", "compared_pair_words", "longer_chosen_share"]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def response_words(response: Any) -> int:
    """Words of an answer as an annotator reads them: a string's whitespace-separated words;
    for chat messages, those of the last message's content."""
    if isinstance(response, Mapping):
        response = response.get("content", "")
    elif isinstance(response, (list, tuple)):
        response = response[-1].get("content", "") if response and isinstance(
            response[-1], Mapping) else ""
    return len(str(response).split())


@dataclass(frozen=True)
class Annotator:
    """One simulated person. ``temperature`` >= 0 (0: always agrees with gold);
    ``careless_rate`` in [0, 1]: the share of labels given at random; ``length_bias``: gold
    units the annotator adds to an answer per 10 words (> 0: it favours longer answers)."""

    id: str
    temperature: float = 1.0
    careless_rate: float = 0.0
    length_bias: float = 0.0

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise UserError(f"annotator id must be a non-empty string, got {self.id!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"annotator {self.id}: temperature must be >= 0, got "
                            f"{self.temperature}")
        if not 0.0 <= self.careless_rate <= 1.0:
            raise UserError(f"annotator {self.id}: careless_rate must be in [0, 1], got "
                            f"{self.careless_rate}")
        if not math.isfinite(self.length_bias):
            raise UserError(f"annotator {self.id}: length_bias must be a finite number, got "
                            f"{self.length_bias}")

    def seen(self, golds: Sequence[float], words: Optional[Sequence[int]] = None) -> list[float]:
        """What the annotator judges by: the gold scores plus its length bias per 10 words
        (``words``: each response's word count; needed only when it has a bias)."""
        if self.length_bias == 0:
            return [float(g) for g in golds]
        if words is None or len(words) != len(golds):
            raise ValueError(f"annotator {self.id} has a length bias: give each response's "
                             "word count")
        return [float(g) + self.length_bias * w / 10.0 for g, w in zip(golds, words)]

    def prob_prefers(self, gold_a: float, gold_b: float, gold_scale: float = 1.0) -> float:
        """P(this annotator labels ``a`` better than ``b``) (also P(a ranked above b))."""
        diff = gold_scale * (float(gold_a) - float(gold_b))
        if self.temperature == 0:
            careful = 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
        else:
            careful = sigmoid(diff / self.temperature)
        return 0.5 * self.careless_rate + (1.0 - self.careless_rate) * careful

    def prob_correct(self, gold_a: float, gold_b: float, gold_scale: float = 1.0) -> float:
        """P(the label agrees with gold) for one compared pair: 0.5 for a gold tie."""
        if gold_a == gold_b:
            return 0.5
        p = self.prob_prefers(gold_a, gold_b, gold_scale)
        return p if gold_a > gold_b else 1.0 - p

    def first_choice_probs(self, golds: Sequence[float], gold_scale: float = 1.0) -> list[float]:
        """P(each response is ranked first): softmax(s * g / T), mixed with the careless
        uniform choice."""
        g = np.asarray(golds, dtype=np.float64) * gold_scale
        k = len(g)
        if self.temperature == 0:
            best = g == g.max()
            careful = best / best.sum()
        else:
            z = g / self.temperature
            z = np.exp(z - z.max())
            careful = z / z.sum()
        return list(self.careless_rate / k + (1.0 - self.careless_rate) * careful)


DEFAULT_ANNOTATORS = (
    Annotator("sim-0", temperature=0.5),
    Annotator("sim-1", temperature=0.75),
    Annotator("sim-2", temperature=1.0),
    Annotator("sim-3", temperature=1.5),
    Annotator("sim-careless", temperature=0.75, careless_rate=0.3),
)


def with_length_bias(annotators: Sequence[Annotator], bias: float) -> list[Annotator]:
    """The annotators, each with ``length_bias`` set to ``bias`` (gold units per 10 words)."""
    if not math.isfinite(bias):
        raise UserError(f"length bias must be a finite number, got {bias}")
    return list(annotators) if bias == 0 else [replace(a, length_bias=float(bias))
                                               for a in annotators]


def with_label_noise(annotators: Sequence[Annotator], flip_rate: float) -> list[Annotator]:
    """The annotators with extra label noise: each label they give is replaced by a uniformly
    random one with probability ``2 * flip_rate``, which flips a pairwise preference with
    probability ``flip_rate`` (Coste et al. 2023's "25% label noise" is ``flip_rate=0.25``);
    a random ranking likewise reverses each of its pairs with probability one half. Folded
    into the careless rate: ``1 - (1 - c) * (1 - 2 * flip_rate)``."""
    if not 0.0 <= flip_rate <= 0.5:
        raise UserError(f"label noise (a flip rate) must be in [0, 0.5], got {flip_rate}")
    if flip_rate == 0:  # exactly the given panel (no rounding of the careless rates)
        return list(annotators)
    keep = 1.0 - 2.0 * flip_rate
    return [replace(a, careless_rate=1.0 - (1.0 - a.careless_rate) * keep)
            for a in annotators]


class PanelError(UserError):
    """A mistake in a panel's configuration; ``key`` is where it is (``("annotators", 2)``,
    ``("gold_scale",)``), for a message that names the line of a panel file."""

    def __init__(self, key: tuple, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class PanelConfig:
    """A panel as configuration (a YAML section): annotators, gold scale, how labels are
    assigned to annotators (``random``: uniformly at random; ``round_robin``: in turn)."""

    annotators: list = field(default_factory=lambda: [asdict(a) for a in DEFAULT_ANNOTATORS])
    gold_scale: float = 1.0
    assignment: str = "random"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "PanelConfig":
        values = dict(values or {})
        unknown = sorted(str(k) for k in set(values) - {"annotators", "gold_scale", "assignment"})
        if unknown:
            raise PanelError((unknown[0],), f"annotator panel config: unknown field(s) "
                             f"{', '.join(unknown)} (known: annotators, gold_scale, assignment)")
        scale = values.get("gold_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise PanelError(("gold_scale",), f"gold_scale must be a number > 0, got {scale!r}")
        try:
            values["gold_scale"] = float(scale)
        except OverflowError:
            raise PanelError(("gold_scale",), "gold_scale is too large") from None
        if not isinstance(values.get("annotators", []), list):
            raise PanelError(("annotators",), "annotators must be a list of mappings with id, "
                             "temperature, careless_rate")
        return cls(**values)

    def build_annotators(self) -> list[Annotator]:
        out = []
        for i, a in enumerate(self.annotators):
            if isinstance(a, Annotator):
                out.append(a)
            elif isinstance(a, Mapping):
                extra = sorted(str(k) for k in set(a) - {"id", "temperature", "careless_rate",
                                                         "length_bias"})
                if extra:
                    raise PanelError(("annotators", i), f"annotator {i}: unknown field(s) "
                                     f"{', '.join(extra)} (known: id, temperature, "
                                     "careless_rate, length_bias)")
                numbers = {}
                for name, default in (("temperature", 1.0), ("careless_rate", 0.0),
                                      ("length_bias", 0.0)):
                    value = a.get(name, default)
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise PanelError(("annotators", i), f"annotator {i}: {name} must be a "
                                         f"number, got {value!r}")
                    try:
                        numbers[name] = float(value)
                    except OverflowError:
                        raise PanelError(("annotators", i), f"annotator {i}: {name} is too "
                                         "large") from None
                try:
                    out.append(Annotator(str(a.get("id", f"sim-{i}")), **numbers))
                except UserError as e:
                    raise PanelError(("annotators", i), str(e)) from None
            else:
                raise PanelError(("annotators", i), f"annotator {i}: expected a mapping with id, "
                                 f"temperature, careless_rate, got {type(a).__name__}")
        return out


class SimulatedPanel:
    """A seeded panel of simulated annotators. Same seed, same calls -> same labels.

    ``scorer``: anything with ``score(prompts, responses, categories=None, ended=None)``
    (a :class:`~alignkit.judges.gold.GoldScorer`), used when labelling without given gold scores.
    """

    def __init__(self, annotators: Sequence[Annotator] | None = None, seed: int = 0,
                 gold_scale: float = 1.0, assignment: str = "random", scorer: Any = None):
        self.annotators = list(annotators if annotators is not None else DEFAULT_ANNOTATORS)
        if not self.annotators:
            raise PanelError(("annotators",), "a simulated panel needs at least one annotator")
        ids = [a.id for a in self.annotators]
        if len(set(ids)) != len(ids):
            raise PanelError(("annotators",), f"annotator ids must be unique, got {ids}")
        if not (gold_scale > 0 and math.isfinite(gold_scale)):
            raise PanelError(("gold_scale",), f"gold_scale must be > 0, got {gold_scale}")
        if assignment not in ("random", "round_robin"):
            raise PanelError(("assignment",), "assignment must be 'random' or 'round_robin', "
                             f"got {assignment!r}")
        self.by_id = {a.id: a for a in self.annotators}
        self.seed = seed
        self.gold_scale = float(gold_scale)
        self.assignment = assignment
        self.scorer = scorer
        self.rng = np.random.default_rng(seed)
        self._turn = 0

    @classmethod
    def from_config(cls, config: PanelConfig | Mapping[str, Any] | None = None, seed: int = 0,
                    scorer: Any = None) -> "SimulatedPanel":
        cfg = config if isinstance(config, PanelConfig) else PanelConfig.from_dict(config)
        return cls(cfg.build_annotators(), seed=seed, gold_scale=cfg.gold_scale,
                   assignment=cfg.assignment, scorer=scorer)

    # -- single labels -----------------------------------------------------------------------
    def pick(self) -> Annotator:
        """The annotator for the next label."""
        if self.assignment == "round_robin":
            a = self.annotators[self._turn % len(self.annotators)]
            self._turn += 1
            return a
        return self.annotators[int(self.rng.integers(len(self.annotators)))]

    def _annotator(self, annotator: Annotator | str | None) -> Annotator:
        if annotator is None:
            return self.pick()
        if isinstance(annotator, str):
            try:
                return self.by_id[annotator]
            except KeyError:
                raise UserError(f"unknown annotator {annotator!r} (panel: "
                                f"{', '.join(self.by_id)})") from None
        return annotator

    def compare(self, gold_a: float, gold_b: float, annotator: Annotator | str | None = None,
                words: Optional[Sequence[int]] = None) -> tuple[bool, Annotator]:
        """One pairwise label: (``True`` when ``a`` is chosen, the annotator). ``words``: the
        two answers' word counts, for an annotator with a length bias."""
        ann = self._annotator(annotator)
        gold_a, gold_b = ann.seen([gold_a, gold_b], words)
        if self.rng.random() < ann.careless_rate:
            return bool(self.rng.random() < 0.5), ann
        if ann.temperature == 0:
            if gold_a == gold_b:
                return bool(self.rng.random() < 0.5), ann
            return bool(gold_a > gold_b), ann
        p = sigmoid(self.gold_scale * (float(gold_a) - float(gold_b)) / ann.temperature)
        return bool(self.rng.random() < p), ann

    def rank(self, golds: Sequence[float], annotator: Annotator | str | None = None,
             words: Optional[Sequence[int]] = None) -> tuple[list[int], Annotator]:
        """One K-way ranking (response indices, best first) by Plackett-Luce sampling.
        ``words``: the answers' word counts, for an annotator with a length bias."""
        ann = self._annotator(annotator)
        k = len(golds)
        if self.rng.random() < ann.careless_rate:
            return [int(i) for i in self.rng.permutation(k)], ann
        g = np.asarray(ann.seen(golds, words), dtype=np.float64) * self.gold_scale
        left = list(range(k))
        order = []
        while left:
            if ann.temperature == 0:
                vals = g[left]
                best = [j for j, v in zip(left, vals) if v == vals.max()]
                pick = best[int(self.rng.integers(len(best)))] if len(best) > 1 else best[0]
            else:
                z = g[left] / ann.temperature
                w = np.exp(z - z.max())
                cum = np.cumsum(w / w.sum())
                pos = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
                pick = left[min(pos, len(left) - 1)]
            order.append(pick)
            left.remove(pick)
        return order, ann

    # -- labelling datasets ------------------------------------------------------------------
    def _gold(self, prompts, responses, categories, ended) -> list[float]:
        if self.scorer is None:
            raise UserError("no gold scores given and the panel has no scorer")
        return [float(x) for x in self.scorer.score(prompts, responses, categories=categories,
                                                    ended=ended)]

    def label_rankings(self, prompts: Sequence[Any], responses: Sequence[Sequence[Any]],
                       golds: Optional[Sequence[Sequence[float]]] = None,
                       categories: Optional[Sequence[Optional[str]]] = None,
                       ended: Optional[Sequence[Sequence[Optional[bool]]]] = None) -> list[dict]:
        """Rank each prompt's responses; returns ranking records (README.md, "Data") with ``gold``.
        ``categories`` is per prompt, ``ended`` per response (as ``responses``)."""
        if len(responses) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        if golds is None:
            flat_p, flat_r, flat_c, flat_e = [], [], [], []
            for i, (p, rs) in enumerate(zip(prompts, responses)):
                for j, r in enumerate(rs):
                    flat_p.append(p)
                    flat_r.append(r)
                    flat_c.append(categories[i] if categories is not None else None)
                    flat_e.append(ended[i][j] if ended is not None else None)
            flat = self._gold(flat_p, flat_r, flat_c if categories is not None else None,
                              flat_e if ended is not None else None)
            golds, at = [], 0
            for rs in responses:
                golds.append(flat[at:at + len(rs)])
                at += len(rs)
        out = []
        for p, rs, gs in zip(prompts, responses, golds):
            if len(rs) != len(gs):
                raise ValueError(f"{len(rs)} responses but {len(gs)} gold scores")
            order, ann = self.rank(gs, words=[response_words(r) for r in rs])
            out.append({"prompt": p, "responses": list(rs), "ranking": order,
                        "annotator": ann.id, "gold": [round(float(g), 6) for g in gs]})
        return out

    def label_pairs(self, prompts: Sequence[Any], responses_a: Sequence[Any],
                    responses_b: Sequence[Any], gold_a: Optional[Sequence[float]] = None,
                    gold_b: Optional[Sequence[float]] = None,
                    categories: Optional[Sequence[Optional[str]]] = None,
                    ended_a: Optional[Sequence[Optional[bool]]] = None,
                    ended_b: Optional[Sequence[Optional[bool]]] = None) -> list[dict]:
        """Compare ``responses_a[i]`` with ``responses_b[i]``; returns preference records
        (README.md, "Data") with ``gold`` = [gold of chosen, gold of rejected]."""
        n = len(prompts)
        if len(responses_a) != n or len(responses_b) != n:
            raise ValueError("prompts, responses_a and responses_b must have the same length")
        if gold_a is None or gold_b is None:
            cats = list(categories) * 2 if categories is not None else None
            ends = (list(ended_a) + list(ended_b)) if ended_a is not None and ended_b is not None \
                else None
            both = self._gold(list(prompts) * 2, list(responses_a) + list(responses_b), cats, ends)
            gold_a, gold_b = both[:n], both[n:]
        out = []
        for p, a, b, ga, gb in zip(prompts, responses_a, responses_b, gold_a, gold_b):
            a_wins, ann = self.compare(ga, gb, words=[response_words(a), response_words(b)])
            chosen, rejected, gc, gr = (a, b, ga, gb) if a_wins else (b, a, gb, ga)
            out.append({"prompt": p, "chosen": chosen, "rejected": rejected,
                        "annotator": ann.id, "gold": [round(float(gc), 6), round(float(gr), 6)]})
        return out


# ---------------------------------------------------------------------------------------------
# what the labels are worth

AnnotatorsLike = Union[SimulatedPanel, Mapping[str, Annotator], Sequence[Annotator]]


def _resolve(annotators: AnnotatorsLike, gold_scale: float | None) -> tuple[dict, float]:
    if isinstance(annotators, SimulatedPanel):
        return annotators.by_id, annotators.gold_scale if gold_scale is None else gold_scale
    if isinstance(annotators, Mapping):
        return dict(annotators), 1.0 if gold_scale is None else gold_scale
    return {a.id: a for a in annotators}, 1.0 if gold_scale is None else gold_scale


def compared_pairs(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[float, float, str]]:
    """Every compared pair of labelled records as (gold of the preferred, gold of the other,
    annotator id): one per preference record, K(K-1)/2 per ranking record."""
    for i, rec in enumerate(records):
        gold = rec.get("gold")
        if gold is None:
            raise UserError(f"record {i}: no \"gold\" field (only simulated labels carry it)")
        ann = rec.get("annotator")
        if "ranking" in rec:
            order = rec["ranking"]
            for x in range(len(order)):
                for y in range(x + 1, len(order)):
                    yield float(gold[order[x]]), float(gold[order[y]]), ann
        else:
            yield float(gold[0]), float(gold[1]), ann


def compared_pair_words(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, int]]:
    """The word counts of every compared pair of :func:`compared_pairs`, in its order:
    (words of the preferred, words of the other)."""
    for rec in records:
        if "ranking" in rec:
            order, words = rec["ranking"], [response_words(r) for r in rec["responses"]]
            for x in range(len(order)):
                for y in range(x + 1, len(order)):
                    yield words[order[x]], words[order[y]]
        else:
            yield response_words(rec["chosen"]), response_words(rec["rejected"])


def pair_correct_probabilities(records: Iterable[Mapping[str, Any]], annotators: AnnotatorsLike,
                               gold_scale: float | None = None) -> list[float]:
    """For every compared pair: P(the labelling annotator prefers the response it sees as
    better): the gold-better one, or with a length bias the better of gold + bias."""
    by_id, scale = _resolve(annotators, gold_scale)
    records = list(records)
    out = []
    for (g_pref, g_other, ann), words in zip(compared_pairs(records),
                                             compared_pair_words(records)):
        if ann not in by_id:
            raise UserError(f"annotator {ann!r} of a record is not in the panel "
                            f"({', '.join(by_id)})")
        annotator = by_id[ann]
        out.append(annotator.prob_correct(*annotator.seen([g_pref, g_other], words), scale))
    return out


def longer_chosen_share(records: Iterable[Mapping[str, Any]]) -> dict:
    """Of the compared pairs whose answers differ in length: the share whose label preferred
    the longer answer, and the share gold prefers it (a length bias shows as the gap)."""
    records = list(records)
    labels, gold = [], []
    for (g_pref, g_other, _), (w_pref, w_other) in zip(compared_pairs(records),
                                                       compared_pair_words(records)):
        if w_pref == w_other:
            continue
        labels.append(1.0 if w_pref > w_other else 0.0)
        gold_longer = g_pref - g_other if w_pref > w_other else g_other - g_pref
        gold.append(1.0 if gold_longer > 0 else 0.0 if gold_longer < 0 else 0.5)
    if not labels:
        return {"pairs": 0, "labels": float("nan"), "gold": float("nan")}
    return {"pairs": len(labels), "labels": float(np.mean(labels)), "gold": float(np.mean(gold))}


def bayes_optimal_accuracy(records: Iterable[Mapping[str, Any]], annotators: AnnotatorsLike,
                           gold_scale: float | None = None) -> float:
    """Expected accuracy of the best possible predictor (predict the response the labelling
    annotator sees as better: the gold-better one without a length bias) on these labels: mean
    over compared pairs of the annotator's probability of choosing it (ties count 0.5).
    ``gold_scale`` defaults to the panel's (1.0 for a plain annotator list)."""
    probs = pair_correct_probabilities(records, annotators, gold_scale)
    if not probs:
        raise UserError("no compared pairs: cannot compute a Bayes-optimal accuracy")
    return float(np.mean(probs))


def gold_agreement(records: Iterable[Mapping[str, Any]]) -> float:
    """Share of compared pairs whose label agrees with gold (gold ties count 0.5)."""
    hits = [1.0 if a > b else 0.0 if a < b else 0.5 for a, b, _ in compared_pairs(records)]
    if not hits:
        raise UserError("no compared pairs: cannot compute agreement with gold")
    return float(np.mean(hits))


def agreement_report(records: Sequence[Mapping[str, Any]], annotators: AnnotatorsLike,
                     gold_scale: float | None = None) -> dict:
    """Overall and per-annotator counts, agreement with gold, Bayes-optimal accuracy, and the
    standard deviation of the agreement expected from label noise alone; how often the labels
    and gold prefer the longer answer (``longer_chosen``)."""
    pairs = list(compared_pairs(records))
    probs = pair_correct_probabilities(records, annotators, gold_scale)
    if not pairs:
        raise UserError("no compared pairs to report on")

    def summary(idx: list[int]) -> dict:
        p = np.array([probs[i] for i in idx])
        hits = [1.0 if pairs[i][0] > pairs[i][1] else 0.0 if pairs[i][0] < pairs[i][1] else 0.5
                for i in idx]
        return {"pairs": len(idx), "gold_agreement": float(np.mean(hits)),
                "bayes_optimal": float(p.mean()),
                "noise_std": float(math.sqrt((p * (1 - p)).sum()) / len(idx))}

    report = summary(list(range(len(pairs))))
    report["records"] = len(records)
    report["longer_chosen"] = longer_chosen_share(records)
    per: dict[str, list[int]] = {}
    for i, (_, _, ann) in enumerate(pairs):
        per.setdefault(ann, []).append(i)
    report["per_annotator"] = {ann: summary(idx) for ann, idx in sorted(per.items())}
    if any(rec.get("aspect") is not None for rec in records):  # labels of each aspect apart
        by_aspect: dict[str, list[int]] = {}
        at = 0
        for rec in records:
            k = len(rec["ranking"]) if "ranking" in rec else 2
            by_aspect.setdefault(rec.get("aspect") or "(none)", []).extend(
                range(at, at + k * (k - 1) // 2))
            at += k * (k - 1) // 2
        report["per_aspect"] = {a: summary(idx) for a, idx in sorted(by_aspect.items())}
    return report
