"""The RLAIF labeller's bookkeeping: resume after a torn write, units, records the preference
readers accept."""

from __future__ import annotations

import json

import pytest

from alignkit.data.preferences import parse_comparison
from alignkit.data.readers import Record
from alignkit.errors import UserError
from alignkit.judges.base import Verdict
from alignkit.judges.labelling import make_record, plan_units, read_done

pytestmark = pytest.mark.unit


def test_read_done_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    good = [{"id": "000000-a", "prompt": "p"}, {"id": "000001-b", "prompt": "q"}]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good) + b'{"id": "0000')
    done = read_done(path)
    assert list(done) == ["000000-a", "000001-b"]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("}\n")
    assert read_done(tmp_path / "absent.jsonl") == {}
    path.write_text('{"id": "x"}\n{"prompt": "no id"}\n')
    with pytest.raises(UserError, match=r"labels.jsonl:2: not a labelling record"):
        read_done(path)


def test_units_skip_prompts_without_two_distinct_responses():
    items = [{"prompt": "p", "responses": ["x", "x"]}, {"prompt": "q", "responses": ["x", "y", "x"]},
             {"prompt": "r", "responses": ["a", "b", "c"]}]
    units, skipped = plan_units(items, "rankings")
    assert skipped == 1 and [u["responses"] for u in units] == [["x", "y"], ["a", "b", "c"]]
    assert [u["id"][:6] for u in units] == ["000001", "000002"]  # the input position stays
    units, _ = plan_units(items, "pairs")
    assert units[1]["responses"] == ["a", "b"]
    # the id names the content: other responses, another id
    other, _ = plan_units([{"prompt": "p", "responses": ["x", "z"]}], "pairs")
    again, _ = plan_units([{"prompt": "p", "responses": ["x", "z"]}], "pairs")
    assert other[0]["id"] == again[0]["id"] != plan_units(
        [{"prompt": "p", "responses": ["z", "x"]}], "pairs")[0][0]["id"]
    # ... and the settings that decide the label: another judge, another id
    judged = plan_units([{"prompt": "p", "responses": ["x", "z"]}], "pairs", {"judge": "gold"})
    assert judged[0][0]["id"] != plan_units([{"prompt": "p", "responses": ["x", "z"]}], "pairs",
                                            {"judge": "local:m"})[0][0]["id"]
    assert judged[0][0]["id"][:6] == "000000"


def readable(rec):
    return parse_comparison(Record("t.jsonl", 1, rec))


def test_pair_records_and_ties_are_what_the_reward_and_dpo_stages_read():
    unit = {"id": "000000-a", "prompt": "p", "responses": ["x", "y"], "format": "pairs"}
    rec = make_record(unit, [(0, 1, Verdict("b", 0.75), ["b", "a"])], "judge:t", None)
    assert (rec["chosen"], rec["rejected"], rec["confidence"]) == ("y", "x", 0.75)
    assert "tie" not in rec and rec["judgements"][0]["orders"] == ["b", "a"]
    assert readable(rec).chosen == "y"
    tie = make_record(unit, [(0, 1, Verdict("tie", 0.5), ["a", "a"])], "judge:t", None)
    assert tie["tie"] is True and readable(tie).tie


def test_ranking_records_order_by_summed_win_probability():
    unit = {"id": "000000-a", "prompt": "p", "responses": ["x", "y", "z"], "format": "rankings"}
    # P(x>y)=0.2, P(x>z)=0.6, P(y>z)=0.9 -> wins: x 0.8, y 0.8+0.9=1.7, z 0.4+0.1=0.5
    verdicts = [(0, 1, Verdict("b", 0.8), None), (0, 2, Verdict("a", 0.6), None),
                (1, 2, Verdict("a", 0.9), None)]
    rec = make_record(unit, verdicts, "judge:t", None)
    assert rec["ranking"] == [1, 0, 2]
    assert rec["confidence"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert readable(rec).ranking == [1, 0, 2]
