"""The guidelines renderer escapes everything first (script, tags, attributes stay inert), then
renders a small Markdown subset; task records from add-tasks files keep file:line errors."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import DataError
from alignkit.feedback.markdown import render_markdown
from alignkit.feedback.tasks import read_task_records, to_store_tasks

pytestmark = pytest.mark.unit


def test_markdown_subset():
    html = render_markdown("# Title\nSome **bold** and *it* and `x<y`.\n\n- one\n- two\n\n"
                           "1. first\n> quoted\n```\n<b>code</b>\n```")
    assert html.splitlines() == [
        "<h3>Title</h3>", "<p>Some <strong>bold</strong> and <em>it</em> and <code>x&lt;y</code>.</p>",
        "<ul>", "<li>one</li>", "<li>two</li>", "</ul>", "<ol>", "<li>first</li>", "</ol>",
        "<blockquote>quoted</blockquote>", "<pre><code>&lt;b&gt;code&lt;/b&gt;</code></pre>"]


@pytest.mark.parametrize("evil", ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">',
                                  "**<a href='javascript:alert(1)'>x</a>**", "`</code><script>`"])
def test_markdown_is_inert(evil):
    html = render_markdown(evil)
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "&lt;" in html


def test_task_records_and_shuffled_gold(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "p"}, {"prompt": "q", "chosen": "good", "rejected": "bad", "gold": True},
            {"prompt": "r", "responses": ["a", "b", "c"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = read_task_records(str(path))
    assert [r["responses"] for r in recs] == [None, ["good", "bad"], ["a", "b", "c"]]
    recs[0]["responses"] = ["x", "y"]
    seen = set()
    for seed in range(20):  # whichever order is shown, the gold answer names "good"
        tasks = to_store_tasks([dict(r) for r in recs], ["h", "s"], True, seed)
        gold = tasks[1]
        better = gold["gold"]["choices"]["h"]
        assert gold["responses"]["AB".index(better)] == "good"
        assert gold["gold"]["choices"] == {"h": better, "s": better}
        seen.add(gold["responses"][0])
        assert tasks[2]["kind"] == "ranking" and tasks[2]["gold"] is None
    assert seen == {"good", "bad"}  # both orders occur
    assert to_store_tasks([dict(recs[1])], ["h"], False)[0]["responses"] == ["good", "bad"]


def test_task_record_problems_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "gold": "yes"})
                    + "\n" + json.dumps({"responses": ["a", "b"]}) + "\n")
    with pytest.raises(DataError) as info:
        read_task_records(str(path))
    assert info.value.problems == [
        f'{path}:1: field "gold" must be true or false',
        f'{path}:2: field "prompt" is missing']
