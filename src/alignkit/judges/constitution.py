"""Constitutions: principles a model critiques and revises its answers by (the supervised stage
of Constitutional AI, Bai et al. 2022) and an AI judge compares answers by (the RL stage).

A constitution is a YAML file::

    name: my-constitution          # optional
    principles:
      - name: truthful             # unique
        aspect: honest             # optional: helpful / harmless / honest / anything
        critique: Identify any claims in the response that are false ...
        revision: Rewrite the response so that every claim is true ...
        preference: Choose the response that is more truthful ...   # optional

``default`` names the one alignkit ships (11 principles for helpful / harmless / honest). A
principle for each answer is drawn with a seeded RNG keyed by the answer, so a run repeats and
does not depend on the order the answers are processed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import UserError

REQUIRED = ("name", "critique", "revision")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str
    preference: str = ""
    aspect: str = ""

    @property
    def criterion(self) -> str:
        """What a judge compares two answers by under this principle."""
        return self.preference or self.critique


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    source: str = ""

    def draw(self, seed: int, key: str) -> Principle:
        """The principle for item ``key`` (seeded, independent of processing order)."""
        return random.Random(f"{seed}:{key}").choice(self.principles)


def default_constitution_path() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "constitutions" / "default.yaml"


def load_constitution(spec: str = "default") -> Constitution:
    """Read and validate a constitution (``default`` or a YAML path); every problem names the
    file, the principle and the field."""
    from alignkit.config import read_yaml_file

    path = default_constitution_path() if spec in ("default", "", None) else Path(spec)
    raw, lines = read_yaml_file(str(path), "constitution file")
    if not isinstance(raw, dict) or not isinstance(raw.get("principles"), list) \
            or not raw["principles"]:
        line = f":{lines[('principles',)]}" if ("principles",) in lines else ""
        raise UserError(f"{path}{line}: expected a mapping with a non-empty list 'principles'")
    principles, seen = [], set()
    for i, entry in enumerate(raw["principles"]):
        where = f"{path}:{lines[('principles', i)]}: principles[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with {', '.join(REQUIRED)}")
        unknown = sorted(str(k) for k in set(entry) - {"name", "critique", "revision",
                                                       "preference", "aspect"})
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for key in REQUIRED:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{where}: field {key!r} must be a non-empty string")
        for key in ("preference", "aspect"):
            if key in entry and not isinstance(entry[key], str):
                raise UserError(f"{where}: field {key!r} must be a string")
        if entry["name"] in seen:
            raise UserError(f"{where}: principle name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        principles.append(Principle(entry["name"].strip(), entry["critique"].strip(),
                                    entry["revision"].strip(),
                                    str(entry.get("preference", "")).strip(),
                                    str(entry.get("aspect", "")).strip()))
    return Constitution(str(raw.get("name") or path.stem), tuple(principles), str(path))
