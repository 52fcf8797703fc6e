"""The guidelines renderer (markdown-it-py, then nh3): raw HTML stays inert text, links only to
http/https/mailto, headings two levels down; task records from add-tasks files keep file:line
errors."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import DataError
from alignkit.feedback.markdown import render_markdown
from alignkit.feedback.tasks import read_task_records, to_store_tasks

pytestmark = pytest.mark.unit

LINK_ATTRS = 'target="_blank" rel="noopener noreferrer"'


def test_markdown_subset():
    html = render_markdown("# Title\nSome **bold** and *it* and `x<y`.\n\n- one\n- two\n\n"
                           "1. first\n> quoted\n```\n<b>code</b>\n```")
    assert html.splitlines() == [
        "<h3>Title</h3>", "<p>Some <strong>bold</strong> and <em>it</em> and <code>x&lt;y</code>.</p>",
        "<ul>", "<li>one</li>", "<li>two</li>", "</ul>", "<ol>", "<li>first</li>", "</ol>",
        "<blockquote>", "<p>quoted</p>", "</blockquote>",
        "<pre><code>&lt;b&gt;code&lt;/b&gt;", "</code></pre>"]
    assert render_markdown("") == render_markdown(None) == ""


def test_fenced_code_block_keeps_text_and_drops_language_class():
    html = render_markdown("Before\n\n```python\nif a < b:\n    print('<b>')\n```\nAfter")
    assert html == ("<p>Before</p>\n<pre><code>if a &lt; b:\n    print('&lt;b&gt;')\n"
                    "</code></pre>\n<p>After</p>\n")


def test_web_and_mail_links_render_as_links_opening_a_new_tab():
    assert render_markdown("See [the rubric](https://example.org/r?a=1&b=2 \"Rubric\").") == (
        '<p>See <a href="https://example.org/r?a=1&amp;b=2" title="Rubric" '
        f'{LINK_ATTRS}>the rubric</a>.</p>\n')
    assert render_markdown("[ask](mailto:lead@example.org) or <http://example.org>") == (
        f'<p><a href="mailto:lead@example.org" {LINK_ATTRS}>ask</a> or '
        f'<a href="http://example.org" {LINK_ATTRS}>http://example.org</a></p>\n')


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JavaScript:alert(1)",
                                 "data:text/html,hi", "vbscript:msgbox(1)", "file:///etc/passwd",
                                 "/projects/1/export", "ftp://example.org/x"])
def test_links_to_other_schemes_stay_text(url):
    html = render_markdown(f"[click]({url})")
    assert "<a" not in html and "href" not in html
    assert html.startswith("<p>[click](")


def test_raw_img_onerror_is_neutralised():
    html = render_markdown('Look: <img src=x onerror="alert(1)"> here')
    assert html == '<p>Look: &lt;img src=x onerror="alert(1)"&gt; here</p>\n'
    # the markdown image syntax loads nothing either: it becomes a link to the picture
    html = render_markdown("![diagram](https://example.org/d.png)")
    assert "<img" not in html
    assert html == f'<p>!<a href="https://example.org/d.png" {LINK_ATTRS}>diagram</a></p>\n'


@pytest.mark.parametrize("evil", ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">',
                                  "**<a href='javascript:alert(1)'>x</a>**", "`</code><script>`",
                                  "<div onclick=alert(1)>\n\nhi\n\n</div>",
                                  "[x](javascript:alert(1))", "<javascript:alert(1)>"])
def test_markdown_is_inert(evil):
    html = render_markdown(evil)
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "<div" not in html and "javascript:alert(1)\"" not in html
    assert "&lt;" in html or "[x]" in html


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
