"""The refusal bench's contrast prompts (``bench/data/refusal_contrast.jsonl``) train where refusal
belongs, so they must not leak the adversarial suite they are measured on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignkit.data.readers import shipped_data_path
from alignkit.evaluation.adversarial import load_suite

pytestmark = pytest.mark.unit

CONTRAST = Path(__file__).resolve().parents[2] / "bench" / "data" / "refusal_contrast.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_contrast_prompts_are_well_formed():
    rows = _rows(CONTRAST)
    assert len(rows) == 72
    assert all(set(r) == {"prompt", "category"} for r in rows)
    assert sum(r["category"] == "helpful" for r in rows) == 40
    assert sum(r["category"] == "harmful" for r in rows) == 32
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_contrast_prompts_do_not_leak_the_suite():
    """No contrast prompt shares more than half its words with a suite prompt (word Jaccard; the
    closest pair, two first-aid questions, is at 0.47), and none repeats one."""
    suite = [item.prompt for item in load_suite("shipped")]
    for row in _rows(CONTRAST):
        words = _words(row["prompt"])
        closest = max(len(words & _words(s)) / len(words | _words(s)) for s in suite)
        assert closest <= 0.5, row["prompt"]


def test_wrapped_requests_come_from_the_training_prompts():
    """Each jailbreak-wrapped harmful prompt carries a request of the demo's own training prompts:
    it holds more of some training prompt's words (at least 45%) than of any suite prompt's."""
    train = [r["prompt"] for r in _rows(shipped_data_path("demo-prompts"))
             if r["category"] == "harmful"]
    suite = [item.prompt for item in load_suite("shipped")]

    def held(words: set[str], prompts: list[str]) -> float:
        return max(len(words & _words(p)) / len(_words(p)) for p in prompts)

    for row in _rows(CONTRAST):
        if row["category"] != "harmful":
            continue
        words = _words(row["prompt"])
        assert held(words, train) >= 0.45, row["prompt"]
        assert held(words, train) > held(words, suite), row["prompt"]
