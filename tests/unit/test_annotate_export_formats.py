"""``alignkit annotate export --format jsonl|parquet|datasets``: each writes pairs and rankings
that ``alignkit reward`` / ``alignkit dpo`` load through ``load_preference_groups`` (the readers
of ``--data``), with the annotator weights beside them; prompts and responses render as safe
Markdown with their line breaks."""

from __future__ import annotations

import json

import pytest

from alignkit.config import AnnotateExportConfig
from alignkit.data.preferences import annotator_weights_beside, load_preference_groups
from alignkit.data.readers import read_records
from alignkit.feedback.export import write_records
from alignkit.feedback.markdown import render_text
from alignkit.feedback.store import Store


@pytest.fixture
def labelled_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    store = Store(url)
    store.upgrade()
    pid = store.create_project("fmt", "", ["helpful"], 1)
    pair, rank = store.add_tasks(pid, [
        {"kind": "pairwise", "prompt": "Say hi", "responses": ["Hello there", "Go away"]},
        {"kind": "ranking", "prompt": "Count", "responses": ["one", "two", "three"]}])
    user, _ = store.create_user("ann")
    store.add_member(pid, user.id)
    store.submit(pid, user, pair, {"choices": {"helpful": "A"}})
    store.submit(pid, user, rank, {"ranking": [1, 0, 2]})
    store.dispose()
    return url


@pytest.mark.parametrize("fmt,pairs_name", [("jsonl", "pairs.jsonl"),
                                            ("parquet", "pairs.parquet"),
                                            ("datasets", "pairs")])
def test_cli_export_formats_load_as_reward_data(labelled_db, tmp_path, tiny_tokenizer, fmt,
                                                pairs_name, capsys):
    from alignkit.cli import run

    out = tmp_path / f"out-{fmt}"
    counts = run(AnnotateExportConfig(db=labelled_db, project="fmt", output=str(out),
                                      format=fmt))
    assert counts["pairs"] == 1 and counts["rankings"] == 1
    assert pairs_name in capsys.readouterr().out
    pairs = out / pairs_name
    records = [r.fields for r in read_records(str(pairs))]
    assert [(r["chosen"], r["rejected"], r["aspect"]) for r in records] == [
        ("Hello there", "Go away", "helpful")]
    assert "tie" not in records[0]  # a column another record lacks is no value here
    rankings = out / pairs_name.replace("pairs", "rankings")
    assert [r.fields["ranking"] for r in read_records(str(rankings))] == [[1, 0, 2]]
    for data in (pairs, rankings):
        groups, skipped = load_preference_groups(str(data), tiny_tokenizer)
        assert len(groups) == 1 and skipped == []
    # reward picks the weights up beside a data file; beside a datasets folder it does not yet
    # (data.preferences.annotator_weights_beside takes files only)
    assert (annotator_weights_beside(str(pairs)) is not None) == (fmt != "datasets")
    assert (out / "annotator_weights.json").is_file()


def test_mixed_columns_and_bad_format(tmp_path):
    from alignkit.errors import UserError

    recs = [{"prompt": "p", "chosen": "a", "rejected": "b", "tie": True},
            {"prompt": "q", "chosen": "c", "rejected": "d", "annotators": ["x", "y"]}]
    for fmt, name in (("parquet", "m.parquet"), ("datasets", "m")):
        path = write_records(recs, tmp_path / name, fmt)
        assert [r.fields for r in read_records(str(path))] == recs
        write_records(recs[:1], path, fmt)  # replaced whole, atomically
        assert len(read_records(str(path))) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    with pytest.raises(UserError, match="format"):
        write_records(recs, tmp_path / "x", "xml")
    mixed = [{"prompt": "p", "chosen": "a", "rejected": "b"},
             {"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": "d"}]
    with pytest.raises(UserError, match="JSONL"):
        write_records(mixed, tmp_path / "mixed.parquet", "parquet")
    assert json.loads(write_records(mixed, tmp_path / "mixed.jsonl").read_text().splitlines()[1])


def test_task_text_keeps_line_breaks_and_code_and_stays_inert():
    html = render_text("line one\nline two\n\n```\ncode <b>\n```\n[ok](https://x.org) "
                       "[no](javascript:alert(1)) <img src=x onerror=alert(1)>")
    assert "line one<br" in html
    assert "<pre><code>code &lt;b&gt;\n</code></pre>" in html
    assert '<a href="https://x.org"' in html and "javascript:" not in html.split("[no]")[0]
    assert "<img" not in html and "&lt;img" in html
