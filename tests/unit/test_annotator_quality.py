"""Annotator quality control without a server: the calibration state from gold scores, quality
scores and the loss weights they give, and ``alignkit reward`` reading the weights file that
``alignkit annotate export`` writes beside the labels."""

from __future__ import annotations

import json

import pytest

from alignkit.data.preferences import annotator_weights_beside
from alignkit.errors import UserError
from alignkit.feedback.quality import (annotator_states, annotator_weight, calibration_state,
                                       counted_labels)

PROJECT = {"aspects": ["overall"], "calibration_items": 4, "calibration_accuracy": 0.75,
           "attention_rate": 0.1}


def test_calibration_state_follows_the_first_n_gold_answers():
    assert calibration_state(PROJECT, [1, 1])["status"] == "calibrating"
    passed = calibration_state(PROJECT, [1, 1, 1, 0, 0, 1])
    assert passed["status"] == "passed" and passed["calibration_accuracy"] == 0.75
    # the answers after the calibration are attention checks, never a second chance
    assert passed["attention_checks"] == 2 and passed["attention_accuracy"] == 0.5
    failed = calibration_state(PROJECT, [1, 0, 1, 0, 1, 1, 1, 1])
    assert failed["status"] == "failed_calibration" and failed["calibration_accuracy"] == 0.5
    assert calibration_state({**PROJECT, "calibration_items": 0}, [0, 0])["status"] == \
        "not_required"


def test_weight_is_distance_from_a_coin_flip():
    assert annotator_weight(1.0) == 1.0 and annotator_weight(0.5) == 0.0
    assert annotator_weight(0.3) == 0.0 and annotator_weight(0.75) == pytest.approx(0.5)
    assert annotator_weight(None) == 1.0  # no evidence: as an annotator absent from the flag


def _lab(i, task, who, choice):
    return {"id": i, "task_id": task, "annotator": who,
            "value": {"choices": {"overall": choice}}}


def test_states_weigh_the_sloppy_annotator_down_and_exclude_the_failed_one():
    project = {**PROJECT, "calibration_items": 2, "calibration_accuracy": 1.0}
    tasks = {t: {"id": t, "kind": "pairwise", "is_gold": True,
                 "gold": {"choices": {"overall": c}}} for t, c in ((1, "A"), (2, "B"))}
    tasks.update({t: {"id": t, "kind": "pairwise", "is_gold": False, "gold": None}
                  for t in range(3, 9)})
    labels, n = [], 0
    for who, gold_answers in (("good", "AB"), ("good2", "AB"), ("sloppy", "AB"), ("bad", "BA")):
        for t, c in zip((1, 2), gold_answers):
            n += 1
            labels.append(_lab(n, t, who, c))
    for t in range(3, 9):  # the good ones agree on everything, the sloppy one half the time
        for who, c in (("good", "A"), ("good2", "A"), ("sloppy", "A" if t % 2 else "B")):
            n += 1
            labels.append(_lab(n, t, who, c))
    states = annotator_states(project, tasks, labels)
    assert states["bad"]["status"] == "failed_calibration" and states["bad"]["weight"] == 0
    assert states["good"]["weight"] == 1.0 and states["good2"]["weight"] == 1.0
    assert states["sloppy"]["agreement_with_others"] == 0.5
    assert 0 < states["sloppy"]["weight"] < 1
    assert {lab["annotator"] for lab in counted_labels(project, tasks, labels)} == {
        "good", "good2", "sloppy"}


def test_reward_reads_the_weights_beside_the_data(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b",
                                "annotator": "ann-0"}) + "\n")
    assert annotator_weights_beside(str(data)) is None  # none beside: as before
    assert annotator_weights_beside("demo") is None  # not a file: a named or mixed source
    (tmp_path / "annotator_weights.json").write_text(json.dumps({"ann-0": 0.25, "ann-1": 1}))
    assert annotator_weights_beside(str(data)) == {"ann-0": 0.25, "ann-1": 1.0}
    (tmp_path / "annotator_weights.json").write_text(json.dumps({"ann-0": -1}))
    with pytest.raises(UserError, match="annotator_weights.json"):
        annotator_weights_beside(str(data))
    (tmp_path / "annotator_weights.json").write_text("not json")
    with pytest.raises(UserError, match="annotator_weights.json"):
        annotator_weights_beside(str(data))
