"""Agreement between annotators: Krippendorff's alpha, Cohen's kappa, per-item agreement,
aggregation of several labels into one, and an annotator's accuracy on hidden gold items. (How
far a judge agrees with gold or human labels is ``judges.accuracy``.)

Pure functions over plain Python values (no database, no torch) so that every number can be
checked by hand.

Data shapes. A *unit* is one thing that several annotators judged; ``units`` maps a unit key to
``{annotator: value}``:
- pairwise tasks: one unit per (item, aspect), value ``"A"``, ``"B"`` or ``"tie"`` -> nominal
  alpha and kappa;
- K-way rankings: for alpha, one unit per (item, response), value = the position (1 = best) the
  annotator gave that response -> **ordinal** alpha (positions are ordered, so putting the best
  response second is a smaller disagreement than putting it last); for kappa, one unit per
  (item, response pair i < j), value ``"i"`` or ``"j"`` (which of the two was ranked higher) ->
  nominal kappa on the induced pairwise preferences.

Degenerate cases (documented choices, tested in tests/unit/test_agreement.py):
- alpha is ``None`` (undefined) when no unit has two or more values (a single annotator, or no
  overlap between annotators), and when the pairable values show no variation at all (every
  value identical: expected disagreement D_e = 0, so alpha = 0/0). Krippendorff (2011) calls such
  data uninformative about reliability; reporting 1.0 would claim a reliability the data cannot
  show. Perfect agreement *with* variation is alpha = 1.0.
- Cohen's kappa is ``None`` without overlapping units, and when chance agreement p_e = 1 (both
  annotators used one and the same category throughout: 0/0).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional, Sequence

Units = Mapping[Hashable, Mapping[str, Any]]


# ----------------------------------------------------------------------------- Krippendorff


def _coincidences(values_per_unit: Iterable[Sequence[Any]]) -> dict[tuple, float]:
    """Coincidence matrix o_ck: each ordered pair of values within a unit of m_u values counts
    1 / (m_u - 1). Units with fewer than two values are not pairable and are dropped."""
    o: dict[tuple, float] = {}
    for values in values_per_unit:
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            key = (values[i], values[j])
            o[key] = o.get(key, 0.0) + 1.0 / (m - 1)
    return o


def nominal_delta(c, k, marginals=None) -> float:
    return 0.0 if c == k else 1.0


def ordinal_delta(c, k, marginals: Mapping[Any, float]) -> float:
    """Krippendorff's ordinal metric: (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 over the sorted
    values between c and k (inclusive)."""
    if c == k:
        return 0.0
    lo, hi = min(c, k), max(c, k)
    between = sum(n for g, n in marginals.items() if lo <= g <= hi)
    return (between - (marginals[c] + marginals[k]) / 2.0) ** 2


METRICS: dict[str, Callable] = {"nominal": nominal_delta, "ordinal": ordinal_delta}


def krippendorff_alpha(values_per_unit: Iterable[Sequence[Any]],
                       metric: str = "nominal") -> Optional[float]:
    """alpha = 1 - D_o / D_e = 1 - (n - 1) * sum_ck o_ck d_ck / sum_ck n_c n_k d_ck.

    ``values_per_unit``: for each unit, the values the annotators gave it (missing ones left
    out). Returns None when undefined (see the module docstring)."""
    delta = METRICS[metric]
    o = _coincidences(values_per_unit)
    if not o:
        return None
    marginals: dict[Any, float] = {}
    for (c, _), v in o.items():
        marginals[c] = marginals.get(c, 0.0) + v
    n = sum(marginals.values())
    observed = sum(v * delta(c, k, marginals) for (c, k), v in o.items())
    expected = sum(marginals[c] * marginals[k] * delta(c, k, marginals)
                   for c in marginals for k in marginals)
    if expected == 0.0:
        return None
    return 1.0 - (n - 1.0) * observed / expected


def alpha_of_units(units: Units, metric: str = "nominal",
                   without: Optional[str] = None) -> Optional[float]:
    """alpha over ``{unit: {annotator: value}}``; ``without`` leaves one annotator out."""
    return krippendorff_alpha(([v for a, v in by.items() if a != without]
                               for by in units.values()), metric)


# ----------------------------------------------------------------------------- Cohen's kappa


def cohen_kappa(first: Mapping[Hashable, Any], second: Mapping[Hashable, Any]) -> Optional[float]:
    """kappa = (p_o - p_e) / (1 - p_e) over the units both annotators labelled; p_e from each
    annotator's own category shares on those units. None when undefined."""
    shared = [u for u in first if u in second]
    if not shared:
        return None
    n = len(shared)
    p_o = sum(first[u] == second[u] for u in shared) / n
    ca, cb = Counter(first[u] for u in shared), Counter(second[u] for u in shared)
    p_e = sum(ca[c] * cb.get(c, 0) for c in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def by_annotator(units: Units) -> dict[str, dict[Hashable, Any]]:
    out: dict[str, dict[Hashable, Any]] = {}
    for unit, by in units.items():
        for annotator, value in by.items():
            out.setdefault(annotator, {})[unit] = value
    return out


def pairwise_kappas(units: Units) -> dict[tuple[str, str], dict]:
    """Cohen's kappa for every pair of annotators (sorted names) with the units they share."""
    per = by_annotator(units)
    out = {}
    for a, b in itertools.combinations(sorted(per), 2):
        shared = sum(u in per[b] for u in per[a])
        if shared:
            out[(a, b)] = {"kappa": cohen_kappa(per[a], per[b]), "shared": shared}
    return out


def mean_defined(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------- units of tasks


def pairwise_units(labels: Iterable[tuple[Hashable, str, dict]]) -> dict:
    """(item, annotator, {aspect: "A"|"B"|"tie"}) -> {(item, aspect): {annotator: choice}}."""
    units: dict = {}
    for item, annotator, choices in labels:
        for aspect, choice in choices.items():
            units.setdefault((item, aspect), {})[annotator] = choice
    return units


def ranking_position_units(labels: Iterable[tuple[Hashable, str, list[int]]]) -> dict:
    """(item, annotator, ranking best first) -> {(item, response): {annotator: position}}."""
    units: dict = {}
    for item, annotator, ranking in labels:
        for position, response in enumerate(ranking, 1):
            units.setdefault((item, response), {})[annotator] = position
    return units


def ranking_pair_units(labels: Iterable[tuple[Hashable, str, list[int]]]) -> dict:
    """(item, annotator, ranking) -> {(item, i, j): {annotator: "i" or "j"}} for i < j: which of
    the two responses the annotator ranked higher."""
    units: dict = {}
    for item, annotator, ranking in labels:
        pos = {r: p for p, r in enumerate(ranking)}
        for i, j in itertools.combinations(sorted(pos), 2):
            units.setdefault((item, i, j), {})[annotator] = "i" if pos[i] < pos[j] else "j"
    return units


# ----------------------------------------------------------------------------- per item


def item_agreement_nominal(values: Sequence[Any]) -> Optional[float]:
    """Share of ordered pairs of annotators that gave the same value (None below two values)."""
    m = len(values)
    if m < 2:
        return None
    counts = Counter(values)
    return sum(c * (c - 1) for c in counts.values()) / (m * (m - 1))


def ranking_concordance(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of response pairs that two rankings order the same way ((1 + Kendall tau) / 2)."""
    pa, pb = {r: p for p, r in enumerate(a)}, {r: p for p, r in enumerate(b)}
    pairs = list(itertools.combinations(sorted(pa), 2))
    same = sum((pa[i] < pa[j]) == (pb[i] < pb[j]) for i, j in pairs)
    return same / len(pairs) if pairs else 1.0


def item_agreement_ranking(rankings: Sequence[Sequence[int]]) -> Optional[float]:
    """Mean concordance over pairs of annotators (None below two rankings)."""
    if len(rankings) < 2:
        return None
    pairs = list(itertools.combinations(rankings, 2))
    return sum(ranking_concordance(a, b) for a, b in pairs) / len(pairs)


# ----------------------------------------------------------------------------- aggregation


def majority(values: Sequence[Any]) -> tuple[Optional[Any], bool]:
    """(the value more than half the annotators gave, True) or (None, False) without one."""
    if not values:
        return None, False
    value, count = Counter(values).most_common(1)[0]
    if count * 2 > len(values):
        return value, True
    return None, False


def aggregate_pairwise(labels: Sequence[Mapping[str, str]],
                       aspects: Sequence[str]) -> tuple[dict[str, Optional[str]], bool]:
    """Per aspect, the strict-majority choice. Returns (choices, disputed): disputed when some
    aspect that was labelled has no strict majority (its choice is then None)."""
    choices, disputed = {}, False
    for aspect in aspects:
        votes = [lab[aspect] for lab in labels if aspect in lab]
        if not votes:
            continue
        value, ok = majority(votes)
        choices[aspect] = value
        disputed = disputed or not ok
    return choices, disputed


def aggregate_ranking(rankings: Sequence[Sequence[int]]) -> tuple[list[int], bool]:
    """Borda count: responses ordered by mean position (lower is better; ties by index).
    Disputed when no response is ranked first by more than half the annotators."""
    if not rankings:
        return [], False
    k = len(rankings[0])
    total = [0.0] * k
    for ranking in rankings:
        for position, response in enumerate(ranking):
            total[response] += position
    order = sorted(range(k), key=lambda r: (total[r], r))
    _, ok = majority([r[0] for r in rankings])
    return order, not ok


# ----------------------------------------------------------------------------- gold accuracy


def gold_score_pairwise(label: Mapping[str, str], gold: Mapping[str, str]) -> Optional[float]:
    """Share of the gold item's aspects on which the label matches the known answer."""
    shared = [a for a in gold if a in label]
    if not shared:
        return None
    return sum(label[a] == gold[a] for a in shared) / len(shared)


def gold_score_ranking(ranking: Sequence[int], gold: Sequence[int]) -> float:
    """Share of response pairs ordered as the known ranking orders them."""
    return ranking_concordance(ranking, gold)
