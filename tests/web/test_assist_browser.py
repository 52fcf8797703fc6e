"""AI assist in real headless Chromium on SQLite and PostgreSQL: under ``before`` the judge's
suggestion is on the page for a shown (task, annotator) pair and absent for a control one; under
``after`` it appears only once the label is submitted, then "Next item" moves on. Screenshots go
to $ALIGNKIT_TEST_ARTIFACTS or tests/artifacts/web/ (gitignored)."""

from __future__ import annotations

import pytest

from alignkit.feedback.store import Store, assist_shown
from tests.web.test_browser import ARTIFACTS, Page, browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.web


def suggestion_shown(driver) -> bool:
    els = driver.find_elements("css selector", "#suggestion")
    return bool(els) and els[0].is_displayed()


def test_suggestion_before_for_shown_pairs_only_and_after_only_once_answered(
        server, browser, request):  # noqa: F811
    store = Store(server.db_url)
    before = store.create_project("assist before", "", ["overall"], 1, assist="before")
    after = store.create_project("assist after", "", ["overall"], 1, assist="after")
    ids = store.add_tasks(before, [{"kind": "pairwise", "prompt": f"Question {i}",
                                    "responses": [f"left {i}", f"right {i}"]}
                                   for i in range(12)])
    (after_task,) = store.add_tasks(after, [{"kind": "pairwise", "prompt": "Say hi",
                                             "responses": ["hi", "Hello!"]}])
    store.set_suggestions(before, "gold", {t: ({"choices": {"overall": "B"}}, 0.8)
                                           for t in ids})
    store.set_suggestions(after, "gold", {after_task: ({"choices": {"overall": "A"}}, 0.9)})
    user, token = store.create_user("ann")
    store.add_member(before, user.id)
    store.add_member(after, user.id)
    project = store.project(before)
    page = Page(browser, server.url, ARTIFACTS / f"assist-{request.node.callspec.id}")
    page.sign_in(token)

    # --- before: every task checked against the seeded draw until both kinds were seen
    seen = {True: 0, False: 0}
    browser.get(f"{server.url}/projects/{before}")
    for _ in ids:
        tid = page.task_id()
        assert tid in ids
        shown = assist_shown(project, tid, user.id)
        assert suggestion_shown(browser) == shown
        assert not page.css("#suggestion-after").is_displayed()
        if shown:
            assert "B is better" in page.css("#suggestion").text
            assert "80%" in page.css("#suggestion").text
        if not seen[shown]:
            page.shot("before-shown" if shown else "before-control")
        seen[shown] += 1
        if all(seen.values()):
            break
        page.keys("1")
        page.css("#submit").click()
        page.wait_task_change(tid)
    assert seen[True] and seen[False], seen
    labels = {lab["task_id"]: lab["assisted"] for lab in store.project_labels(before)}
    assert labels == {t: assist_shown(project, t, user.id) for t in labels}

    # --- after: nothing up-front; the suggestion comes with the answer, then the next item
    browser.get(f"{server.url}/projects/{after}")
    assert page.task_id() == after_task
    assert not suggestion_shown(browser)
    assert not page.css("#suggestion-after").is_displayed()
    page.shot("after-before-answering")
    page.keys("2")
    page.css("#submit").click()
    page.wait.until(lambda d: page.css("#suggestion-after").is_displayed())
    assert "A is better" in page.css("#suggestion-after").text
    assert "90%" in page.css("#suggestion-after").text
    page.shot("after-revealed")
    (lab,) = store.project_labels(after)
    assert lab["value"] == {"choices": {"overall": "B"}} and lab["assisted"] is False
    page.css("#next").click()
    page.wait_task_change(after_task)
    assert page.task_id() is None
    store.dispose()
