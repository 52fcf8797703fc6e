"""What ``--data`` names, and how a training set is drawn from it: one source or a weighted
mixture of sources, records oversampled by the value of a field, deterministic under the seed.

A source is anything ``readers.read_records`` reads on its own (a file, a saved ``datasets``
folder, a shipped name, a hub id, a ``datasets`` builder over local files). A mixture is
- ``a.jsonl:0.7,b.jsonl:0.3``: sources with weights (positive numbers, normalised to sum to 1),
  or ``a.jsonl,b.jsonl``: no weights, every record of each source once (one file in effect); or
- a ``.yaml`` / ``.yml`` file: a list of ``{path: ..., weight: ...}`` mappings (weights as
  above); a relative path is taken from the YAML file's folder when it exists there.

Drawing (``draw_records``). A record that validates gets a multiplicity: the product of the
``--oversample`` factors whose ``FIELD=VALUE`` it matches (1 when none). A source's deck holds
each of its records multiplicity times (the fraction of a non-integer multiplicity is a seeded
coin flip). N, the number of examples drawn, is ``--mixture-size``, else the size of all decks
together. Source i supplies ``N * w_i`` of them (rounded by largest remainder; without weights
w_i is its deck's share): whole passes over its deck in file order, then a seeded sample,
without repeats, of the rest. So by default every record appears exactly its multiplicity times
(``--oversample category=harmful:3`` triples each harmful record, hence that category's count),
a weighted mixture draws its weights' proportions exactly, and the seed (with the source's
position in the mixture) decides which records fill a partial pass. Records that do not
validate are never drawn; each comes back once, after the drawn ones, so that validation reports
it (or ``--skip-invalid`` drops it).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from alignkit.errors import DataError, UserError

MIXTURE_SUFFIXES = (".yaml", ".yml")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|infinity|nan)",
                     re.IGNORECASE)


@dataclass
class Draw:
    """How a stage draws its training set from ``--data``: the run's ``seed``, the
    ``--oversample`` rules and ``--mixture-size`` (None: every record its multiplicity times).
    ``report`` is filled by ``readers.read_records`` with what was drawn, for the run's setup
    metrics; it stays empty when ``--data`` is one source read as it is."""

    seed: int = 0
    oversample: Optional[str] = None
    size: Optional[int] = None
    report: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg) -> "Draw":
        """The draw a stage's config asks for (any config with ``seed`` and the data options)."""
        return cls(cfg.seed, getattr(cfg, "oversample", None), getattr(cfg, "mixture_size", None))

    def for_eval(self) -> "Draw":
        """Held-out data: mixed under the same seed, never oversampled or resized (oversampling
        is a training weight)."""
        return Draw(self.seed)

    @property
    def reshapes(self) -> bool:
        return bool(self.oversample) or bool(self.size)


@dataclass
class Source:
    spec: str
    weight: Optional[float] = None


@dataclass
class Rule:
    """``--oversample FIELD=VALUE:FACTOR``: records whose ``FIELD`` is ``VALUE`` count FACTOR
    times."""

    field: str
    value: str
    factor: float
    text: str

    def matches(self, fields: dict) -> bool:
        return _as_text(fields.get(self.field)) == self.value


def _as_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None  # lists, objects and missing fields match no rule


def _positive(text: str, what: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{what} must be a positive number, got {text}")
    return value


def parse_oversample(text: str | None) -> list[Rule]:
    """``category=harmful:3,aspect=honest:1.5`` -> rules; a malformed one is a ``UserError``
    naming the flag."""
    rules = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        pair, sep, factor = part.rpartition(":")
        name, eq, value = pair.partition("=")
        if not (sep and eq and name.strip() and _NUMBER.fullmatch(factor.strip())):
            raise UserError(f"--oversample {part!r}: expected FIELD=VALUE:FACTOR, e.g. "
                            "category=harmful:3")
        rules.append(Rule(name.strip(), value.strip(),
                          _positive(factor.strip(), f"--oversample {part!r}: the factor"), part))
    return rules


def _split_weight(part: str) -> tuple[str, float | None]:
    head, sep, tail = part.rpartition(":")
    if sep and head and _NUMBER.fullmatch(tail.strip()):
        return head.strip(), _positive(tail.strip(), f"--data {part!r}: the weight")
    return part, None


def parse_sources(spec: str) -> list[Source] | None:
    """The sources of a mixture written on the command line (``a.jsonl:0.7,b.jsonl:0.3``);
    None when ``spec`` names one source without a weight."""
    if "," not in spec:
        name, weight = _split_weight(spec.strip())
        return None if weight is None else [Source(name, weight)]
    sources = []
    for part in spec.split(","):
        if not part.strip():
            raise UserError(f"--data {spec!r}: an empty source between commas")
        sources.append(Source(*_split_weight(part.strip())))
    return _same_weighting(sources, f"--data {spec!r}")


def _same_weighting(sources: list[Source], where: str) -> list[Source]:
    given = [s.weight is not None for s in sources]
    if any(given) and not all(given):
        raise UserError(f"{where}: give every source a weight, or none (then each source's "
                        "records are all used once)")
    return sources


def read_mixture_file(path: Path, shown: str) -> list[Source]:
    """A ``.yaml`` mixture: a list of ``{path, weight}`` mappings. Problems name the file and
    line."""
    import yaml

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{shown}: cannot read the file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text (byte 0x{raw[e.start]:02x}); a mixture file "
                        "is YAML text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{shown}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") \
            from None
    except RecursionError:
        raise UserError(f"{shown}: not valid YAML (nested too deeply)") from None
    expected = ("a list of sources, one per line as '- {path: FILE, weight: 0.5}'")
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        line = f":{root.start_mark.line + 1}" if root is not None else ""
        raise UserError(f"{shown}{line}: a mixture file is {expected}")
    sources, problems = [], []
    for item in root.value:
        at = f"{shown}:{item.start_mark.line + 1}"
        if not isinstance(item, yaml.MappingNode):
            problems.append(f"{at}: expected a mapping with 'path' and 'weight'")
            continue
        entry: dict[str, Any] = {}
        for key, value in item.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in ("path", "weight"):
                problems.append(f"{shown}:{key.start_mark.line + 1}: unknown key {name!r} "
                                "(a source has 'path' and 'weight')")
            elif not isinstance(value, yaml.ScalarNode) or not value.value.strip():
                problems.append(f"{shown}:{value.start_mark.line + 1}: '{name}' must be a "
                                f"{'number' if name == 'weight' else 'path or hub id'}")
            else:
                entry[name] = (value.value.strip(), value.start_mark.line + 1)
        if "path" not in entry:
            problems.append(f"{at}: 'path' is missing")
            continue
        weight = None
        if "weight" in entry:
            text, line = entry["weight"]
            if not _NUMBER.fullmatch(text):
                problems.append(f"{shown}:{line}: 'weight' must be a number, got {text!r}")
                continue
            try:
                weight = _positive(text, f"{shown}:{line}: 'weight'")
            except UserError as e:
                problems.append(str(e))
                continue
        name = entry["path"][0]
        beside = path.parent / name
        sources.append(Source(str(beside) if not Path(name).is_absolute() and beside.exists()
                              else name, weight))
    if problems:
        raise DataError(problems)
    return _same_weighting(sources, shown)


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _pick(rng: random.Random, n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)``, seeded, in ascending order (only
    ``Random.random`` is used: its stream is the same in every Python version)."""
    keys = [rng.random() for _ in range(n)]
    return sorted(sorted(range(n), key=keys.__getitem__)[:k])


def draw_records(sources: list[Source], records: list[list], draw: Draw,
                 check: Callable[[Any], str | None] | None = None) -> tuple[list, dict]:
    """The drawn records (see the module docstring) and what was drawn, as
    ``{"data_mixture": {...}}``. ``records[i]``: the records of ``sources[i]``, each with
    ``.fields``; ``check(record)``: why a record does not validate (None: it does)."""
    rules = parse_oversample(draw.oversample)
    decks, invalid, valid_counts = [], [], []
    matched = [0] * len(rules)  # valid records each rule matches
    for i, recs in enumerate(records):
        rng = random.Random(f"{draw.seed}:{i}:deck")
        deck = []
        good = 0
        for rec in recs:
            if check is not None and check(rec) is not None:
                invalid.append(rec)
                continue
            good += 1
            m = 1.0
            for j, rule in enumerate(rules):
                if rule.matches(rec.fields):
                    matched[j] += 1
                    m *= rule.factor
            copies = int(m) + (rng.random() < m - int(m))
            deck.extend([rec] * copies)
        decks.append(deck)
        valid_counts.append(good)
        if recs and not good and (sources[i].weight or draw.size):
            # it cannot supply its share: its records' problems say why
            raise DataError([f"{rec.where}: {check(rec)}" for rec in recs] + [
                f"{sources[i].spec}: no valid record to draw from (every record above is "
                "invalid)"])
    for rule, n in zip(rules, matched):
        if not n:
            raise UserError(f"--oversample {rule.text}: no valid record of --data has "
                            f"{rule.field} = {rule.value!r}")
    sizes = [len(d) for d in decks]
    total = draw.size or sum(sizes)
    if sum(sizes) == 0:  # the caller reports the invalid records, or that there are none
        return invalid, {}
    given = [s.weight for s in sources]
    weights = ([w / sum(given) for w in given] if all(w is not None for w in given)
               else [n / sum(sizes) for n in sizes])
    counts = _largest_remainder(total, weights)
    drawn: list = []
    rows = []
    for i, (src, deck, n) in enumerate(zip(sources, decks, counts)):
        if n and not deck:  # all its records were dropped by an --oversample factor below 1
            raise UserError(f"{src.spec}: no record left to draw its share ({weights[i]:.3g}) "
                            "of the mixture")
        passes, rest = divmod(n, len(deck)) if deck else (0, 0)
        picked = deck * passes + [deck[j] for j in
                                  _pick(random.Random(f"{draw.seed}:{i}:draw"), len(deck), rest)]
        drawn.extend(picked)
        rows.append({"data": src.spec, "weight": round(weights[i], 6),
                     "records": valid_counts[i], "drawn": len(picked)})
    report = {"seed": draw.seed, "size": total, "sources": rows}
    if rules:
        report["oversample"] = [
            {"rule": f"{r.field}={r.value}", "factor": r.factor, "records": n,
             "drawn": sum(r.matches(rec.fields) for rec in drawn)}
            for r, n in zip(rules, matched)]
    return drawn + invalid, {"data_mixture": report}
