"""Guidelines, prompts and responses as safe HTML: CommonMark rendered by markdown-it-py, then
sanitised by nh3.

Raw HTML in the source is never passed through (markdown-it's ``html`` option is off, so tags show
as text); links become links only to http, https or mailto addresses (anything else stays text)
and open in a new tab, so an annotator never loses the task page; images are not rendered
(``![alt](url)`` shows as a link to the image, nothing is fetched by the annotator's browser).
Headings move two levels down (``#`` is ``<h3>``) because the guidelines sit under the page's
own ``<h1>``/``<h2>``. nh3 then keeps only the tags and attributes listed below, whatever the
renderer produced. Task text (``render_text``) keeps its line breaks (a model's answer is rarely
written as Markdown paragraphs), and fenced or indented code stays ``<pre><code>``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

LINK_SCHEMES = frozenset({"http", "https", "mailto"})
HEADING_SHIFT = 2
ALLOWED_TAGS = frozenset({"p", "br", "hr", "h3", "h4", "h5", "h6", "strong", "em", "code", "pre",
                          "blockquote", "ul", "ol", "li", "a"})
ALLOWED_ATTRIBUTES = {"a": {"href", "title", "target"}, "ol": {"start"}}


def _is_allowed_link(url: str) -> bool:
    try:
        return urlsplit(url).scheme.lower() in LINK_SCHEMES
    except ValueError:  # e.g. a malformed IPv6 host
        return False


@lru_cache(maxsize=2)
def _parser(breaks: bool = False) -> MarkdownIt:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "breaks": breaks}).disable("image")
    md.validateLink = _is_allowed_link
    return md


def render_markdown(text: str, breaks: bool = False) -> str:
    """HTML for the guidelines ``text`` (Markdown); safe to insert into a page as is.
    ``breaks``: a single newline is a line break, as the writer of a plain answer meant."""
    import nh3

    md = _parser(breaks)
    tokens = md.parse(text or "")
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + HEADING_SHIFT, 6)}"
        for child in token.children or ():
            if child.type == "link_open":
                child.attrSet("target", "_blank")
    html = md.renderer.render(tokens, md.options, {})
    return nh3.clean(html, tags=set(ALLOWED_TAGS), attributes=ALLOWED_ATTRIBUTES,
                     url_schemes=set(LINK_SCHEMES), link_rel="noopener noreferrer")


def render_text(text: str) -> str:
    """HTML for a task's prompt or response (Markdown, code blocks, links; line breaks kept)."""
    return render_markdown(text, breaks=True)
