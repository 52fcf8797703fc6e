"""Property-based fuzzing (hypothesis, seeded): every reader and validator a user's file reaches
gives a valid result or a clean error, never another exception -- random bytes as JSONL, JSON
and CSV files; random JSON records through every record parser (SFT, prompts, pairs, rankings,
annotation tasks); random YAML as a stage's --config; constitutions and annotator panels.
Each property runs 500 generated inputs, derandomised (the same ones in every run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.errors import UserError

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=500, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# text with what breaks readers: surrogates, NUL, separators, quotes, newlines, non-ASCII
TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
KEYS = st.sampled_from(["prompt", "completion", "chosen", "rejected", "responses", "ranking",
                        "messages", "text", "margin", "annotator", "aspect", "tie", "gold",
                        "category", "role", "content", "weight"]) | TEXT
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=12)
RECORD = st.dictionaries(KEYS, JSON, max_size=6)


def clean(call):
    """Run ``call``; a clean error (``UserError``) is a pass, anything else propagates."""
    try:
        return call()
    except UserError as e:
        assert str(e).strip(), "an error with no message"
        return e


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_random_bytes_read_cleanly(folder, suffix):
    from alignkit.data.readers import read_records

    @FUZZ
    @given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8",
                                                                                "surrogatepass")))
    def check(raw):
        path = folder / f"data{suffix}"
        path.write_bytes(raw)
        clean(lambda: read_records(str(path)))

    check()


@pytest.mark.parametrize("parser", ["sft", "prompt", "preference", "ranking", "comparison",
                                    "task"])
def test_random_records_parse_cleanly(folder, parser):
    from alignkit.data.preferences import parse_comparison
    from alignkit.data.readers import read_records
    from alignkit.data.schemas import (parse_preference, parse_prompt, parse_ranking, parse_sft,
                                       validate)
    from alignkit.feedback.tasks import read_task_records

    parse = {"sft": parse_sft, "prompt": parse_prompt, "preference": parse_preference,
             "ranking": parse_ranking, "comparison": parse_comparison}.get(parser)

    @FUZZ
    @given(st.lists(RECORD, min_size=1, max_size=3))
    def check(records):
        path = folder / "records.jsonl"
        # as Python's json writes them: NaN and Infinity included, surrogates escaped
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        if parse is None:
            clean(lambda: read_task_records(str(path)))
        else:
            clean(lambda: validate(read_records(str(path)), parse))

    check()


def test_random_yaml_configs_load_cleanly(folder):
    from alignkit.cli import build_parser
    from alignkit.config import DPOConfig, build_config

    options = ["lr", "beta", "max_steps", "batch_size", "loss", "data", "seed", "lora",
               "eval_fraction", "label_smoothing", "precision", "ppo", "margin"]
    value = JSON | st.floats() | st.sampled_from(["1e-3", "inf", "nan", ".inf", "yes", "~"])

    @FUZZ
    @given(st.dictionaries(st.sampled_from(options) | TEXT, value, max_size=5)
           | JSON | st.text(max_size=60))
    def check(document):
        path = folder / "config.yaml"
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")

        def load():
            try:
                args = build_parser().parse_args(["dpo", "--model", "m", "--config", str(path)])
            except SystemExit as e:  # argparse's own clean refusal: one line, status 2
                assert e.code == 2
                return None
            return build_config(DPOConfig, args)

        clean(load)

    check()


def test_random_constitutions_and_panels_load_cleanly(folder):
    from alignkit.feedback.labelling import load_panel
    from alignkit.judges.constitution import load_constitution

    @FUZZ
    @given(JSON | st.text(max_size=80))
    def check(document):
        path = folder / "file.yaml"
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        clean(lambda: load_constitution(str(path)))
        clean(lambda: load_panel(str(path), 1.0, 0))

    check()
