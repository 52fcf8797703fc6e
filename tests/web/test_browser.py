"""The annotation app in real headless Chromium (Debian's chromium + chromedriver, Selenium), on
SQLite and PostgreSQL: an annotator signs in, labels pairs and rankings with the keyboard and
with the mouse (drag), undoes a label; an admin sees agreement update, resolves a dispute and
exports. Screenshots go to $ALIGNKIT_TEST_ARTIFACTS or tests/artifacts/web/ (gitignored)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from alignkit.feedback.store import Store, shown_order
from tests.web.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.web

ARTIFACTS = Path(os.environ.get("ALIGNKIT_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts")) / "web"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="alignkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    def __init__(self, driver, base: str, shots: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.base, self.shots, self.n = driver, base, shots, 0
        self.wait = WebDriverWait(driver, 20)
        shots.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> None:
        self.n += 1
        self.d.save_screenshot(str(self.shots / f"{self.n:02d}-{name}.png"))

    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

    def task_id(self):
        """The shown task's id (None: queue empty), once the page has settled: a read can land
        while the page is still being replaced (after ``get`` or a submit), which is not an
        answer yet."""
        read = []
        self.wait.until(lambda d: read.append(self.task_id_now()) or read[-1] != "loading")
        return read[-1]

    def task_id_now(self):
        """The shown task's id as read now (None: queue empty; "loading": the page is being
        replaced)."""
        from selenium.common.exceptions import WebDriverException

        try:
            return self.d.execute_script(
                "if (document.readyState !== 'complete') return 'loading';"
                "const t = document.getElementById('task');"
                "return t ? parseInt(t.dataset.taskId, 10) : null;")
        except WebDriverException:
            return "loading"

    def wait_task_change(self, old) -> None:
        self.wait.until(lambda d: self.task_id_now() not in (old, "loading"))

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.d)
        for k in keys:
            chain.send_keys(k)
        chain.perform()

    def sign_in(self, token: str) -> None:
        self.d.delete_all_cookies()
        self.d.get(self.base + "/login")
        self.css("#token").send_keys(token)
        self.shot("sign-in")
        self.css("#sign-in").click()
        self.css("#who")


def ranked(driver) -> list[int]:
    """The ranking as it stands on the page, in the task's own (canonical) indices."""
    return [int(li.get_attribute("data-index"))
            for li in driver.find_elements("css selector", "#ranking li")]


def positions(driver) -> list[str]:
    """The position numbers shown beside the ranking's responses, top to bottom."""
    return [el.text for el in driver.find_elements("css selector", "#ranking li .pos")]


def test_annotator_labels_with_keyboard_and_mouse_admin_sees_agreement_and_exports(
        server, browser, request):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    store = Store(server.db_url)
    pid = store.create_project("browser <b>test</b>", "# Guidelines\n- prefer **kind** answers\n"
                               "<script>window.__pwned=1</script>", ["helpful", "harmless"], 2)
    t_key, t_mouse, r_key, r_mouse = store.add_tasks(pid, [
        {"kind": "pairwise", "prompt": "Greet me <img src=x onerror=window.__pwned=1>",
         "responses": ["Hello there!", "Whatever."]},
        {"kind": "pairwise", "prompt": "Thank me", "responses": ["No.", "You are welcome!"]},
        {"kind": "ranking", "prompt": "Rank by keyboard", "responses": ["r0", "r1", "r2"]},
        {"kind": "ranking", "prompt": "Rank by mouse", "responses": ["m0", "m1", "m2"]}])
    ann0, token0 = store.create_user("ann0")
    ann1, token1 = store.create_user("ann1")
    for u in (ann0, ann1):
        store.add_member(pid, u.id)
    page = Page(browser, server.url, ARTIFACTS / request.node.callspec.id)

    # --- sign in, open the project
    page.sign_in(token0)
    page.css("a.project-link").click()
    assert page.task_id() == t_key
    assert page.css("#progress").text == "Done 0 of 4"
    assert "prefer" in page.css("#guidelines").text
    assert browser.execute_script("return window.__pwned") is None
    page.shot("pairwise-keyboard")

    # --- pairwise by keyboard: 1 = A (helpful), 0 = tie (harmless); typing in the reason box
    # does not trigger shortcuts; Enter submits
    page.keys("1", "0")
    reason = page.css("#reason")
    reason.send_keys("A greets 1 0 2")
    page.css("#prompt").click()
    page.keys(Keys.ENTER)
    page.wait_task_change(t_key)
    mine = {lab["task_id"]: lab for lab in store.labels_of_user(pid, ann0)}
    assert mine[t_key]["value"] == {"choices": {"helpful": "A", "harmless": "tie"}}
    assert mine[t_key]["reason"] == "A greets 1 0 2"

    # --- pairwise by mouse
    assert page.task_id() == t_mouse
    assert page.css("#progress").text == "Done 1 of 4"
    page.css('tr[data-aspect="helpful"] button[data-choice="B"]').click()
    page.css('tr[data-aspect="harmless"] button[data-choice="B"]').click()
    page.shot("pairwise-mouse")
    page.css("#submit").click()
    page.wait_task_change(t_mouse)

    # --- ranking by keyboard: pick the 3rd response shown, move it up twice; shown in ann0's
    # own order (s), numbered 1..3, and stored in the task's own order
    assert page.task_id() == r_key
    s = shown_order(r_key, ann0.id, 3)
    assert positions(browser) == ["1", "2", "3"]
    assert ranked(browser) == s
    page.keys("3", Keys.ARROW_UP, Keys.ARROW_UP)
    assert ranked(browser) == [s[2], s[0], s[1]]
    assert positions(browser) == ["1", "2", "3"]  # renumbered after the move
    key_ranking = [s[2], s[0], s[1]]
    page.shot("ranking-keyboard")
    page.keys(Keys.ENTER)
    page.wait_task_change(r_key)

    # --- ranking by mouse: drag the first response shown below the last
    assert page.task_id() == r_mouse
    s = shown_order(r_mouse, ann0.id, 3)
    items = browser.find_elements("css selector", "#ranking li")
    handle = items[0].find_element("css selector", ".handle")
    (ActionChains(browser).click_and_hold(handle).move_by_offset(0, 20)
     .move_to_element_with_offset(items[2], 0, items[2].size["height"] // 2 - 2)
     .move_by_offset(0, 10).release().perform())
    assert ranked(browser) == [s[1], s[2], s[0]]
    assert positions(browser) == ["1", "2", "3"]
    page.shot("ranking-drag")
    page.css("#submit").click()
    page.wait.until(lambda d: d.find_elements("css selector", "#done-message"))
    assert page.css("#progress").text == "Done 4 of 4"
    page.shot("queue-done")

    # --- undo (u) brings the last task back; resubmit it
    page.keys("u")
    page.wait_task_change(None)
    assert page.task_id() == r_mouse and store.count_labels(pid) == 3
    assert ranked(browser) == s  # shown in the same order again
    page.keys("2", Keys.ARROW_UP, Keys.ENTER)
    mouse_ranking = [s[1], s[0], s[2]]
    page.wait.until(lambda d: d.find_elements("css selector", "#done-message"))
    ranks = {lab["task_id"]: lab["value"] for lab in store.labels_of_user(pid, ann0)}
    assert ranks == {t_key: {"choices": {"helpful": "A", "harmless": "tie"}},
                     t_mouse: {"choices": {"helpful": "B", "harmless": "B"}},
                     r_key: {"ranking": key_ranking}, r_mouse: {"ranking": mouse_ranking}}

    # --- admin: agreement undefined with one annotator, then updates when ann1 labels
    page.sign_in(ADMIN_TOKEN)
    page.d.get(f"{server.url}/admin/projects/{pid}")
    assert page.css("#alpha-pairwise").text == "n/a"
    assert page.css("#label-count").text == "4"
    page.shot("dashboard-one-annotator")
    h = {"Authorization": f"Bearer {token1}"}
    for tid, value in [(t_key, {"choices": {"helpful": "A", "harmless": "tie"}}),
                       (t_mouse, {"choices": {"helpful": "A", "harmless": "B"}}),
                       (r_key, {"ranking": key_ranking}), (r_mouse, {"ranking": mouse_ranking})]:
        r = requests.post(f"{server.url}/api/projects/{pid}/labels", headers=h,
                          json={"task_id": tid, "value": value}, timeout=30)
        assert r.status_code == 201
    page.d.refresh()
    # units: helpful (A,A) (B,A); harmless (tie,tie) (B,B). o_AA = 2, o_AB = o_BA = 1,
    # o_tt = 2, o_BB = 2; n_A = 3, n_B = 3, n_tie = 2, n = 8. Sum_{c!=k} n_c n_k =
    # 2 * (9 + 6 + 6) = 42. alpha = 1 - 7 * 2 / 42 = 2/3.
    assert page.css("#alpha-pairwise").text == "0.667"
    assert page.css("#alpha-ranking").text == "1.000"  # identical rankings
    assert page.css("#label-count").text == "8"
    assert len(browser.find_elements("css selector", ".dispute")) == 1  # t_mouse, helpful 1-1
    page.shot("dashboard-agreement")

    # --- admin resolves the dispute with the mouse
    box = page.css(".dispute")
    assert int(box.get_attribute("data-task-id")) == t_mouse
    from selenium.webdriver.support.ui import Select
    Select(box.find_element("css selector", 'select[data-aspect="helpful"]')).select_by_value("B")
    Select(box.find_element("css selector", 'select[data-aspect="harmless"]')).select_by_value("B")
    box.find_element("css selector", "button.resolve").click()
    page.css("#no-disputes")
    page.shot("dispute-resolved")

    # --- export through the browser session (cookie auth): pairs and rankings (README "Data")
    href = page.css("#export-pairs").get_attribute("href")
    text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done);", href)
    pairs = [json.loads(x) for x in text.splitlines()]
    assert len(pairs) == 4  # 2 items x 2 aspects
    resolved = [p for p in pairs if p["item_id"] == t_mouse and p["aspect"] == "helpful"]
    assert resolved[0]["chosen"] == "You are welcome!" and resolved[0]["resolved_by"] == "admin"
    assert browser.execute_script("return window.__pwned") is None
    store.dispose()


def test_two_annotators_see_a_ranking_in_their_own_orders_and_disputes_show_who_chose_what(
        server, browser, request):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    store = Store(server.db_url)
    pid = store.create_project("shuffled", "", ["helpful", "harmless"], 2)
    texts = ["w", "x", "best", "y"]
    rk, pq, gold = store.add_tasks(pid, [
        {"kind": "ranking", "prompt": "Rank these", "responses": texts},
        {"kind": "pairwise", "prompt": "Pair", "responses": ["p0", "p1"]},
        {"kind": "pairwise", "prompt": "Gold", "responses": ["g0", "g1"],
         "gold": {"choices": {"helpful": "A"}}}])
    people = [store.create_user(f"ann{i}") for i in range(2)]
    for user, _ in people:
        store.add_member(pid, user.id)
    page = Page(browser, server.url, ARTIFACTS / ("shuffled-" + request.node.callspec.id))
    want = ["x", "best", "w", "y"]  # what both annotators put in this order
    shown = {}
    for n, (user, token) in enumerate(people):
        page.sign_in(token)
        page.d.get(f"{server.url}/projects/{pid}")
        assert page.css("#task") and page.task_id() == rk
        shown[n] = [li.find_element("css selector", ".text").text
                    for li in browser.find_elements("css selector", "#ranking li")]
        assert positions(browser) == ["1", "2", "3", "4"]
        assert ranked(browser) == shown_order(rk, user.id, 4)
        assert shown[n] == [texts[i] for i in ranked(browser)]
        page.d.refresh()  # a reload shows the same order
        page.css("#task")
        assert ranked(browser) == shown_order(rk, user.id, 4)
        page.shot(f"ranking-shown-to-ann{n}")
        # ann0 drags "x" to the top with the mouse, ann1 picks it by its number; then both
        # put the rest in place by number and arrow keys
        for place, text in enumerate(want):
            now = [li.find_element("css selector", ".text").text
                   for li in browser.find_elements("css selector", "#ranking li")]
            at = now.index(text)
            if place == 0 and n == 0 and at > 0:
                items = browser.find_elements("css selector", "#ranking li")
                handle = items[at].find_element("css selector", ".handle")
                (ActionChains(browser).click_and_hold(handle).move_by_offset(0, -5)
                 .move_to_element_with_offset(items[0], 0, -items[0].size["height"] // 2 + 2)
                 .move_by_offset(0, -5).release().perform())
            else:
                page.keys(str(at + 1), *[Keys.ARROW_UP] * (at - place))
        assert [texts[i] for i in ranked(browser)] == want
        assert positions(browser) == ["1", "2", "3", "4"]
        page.shot(f"ranking-ranked-by-ann{n}")
        page.css("#submit").click()
        page.wait_task_change(rk)
    # the two were shown different orders, and both labels are the same canonical ranking
    assert shown[0] != shown[1] and shown[0][0] != shown[1][0]
    labels = store.project_labels(pid)
    assert [(lab["annotator"], lab["value"]) for lab in labels] == [
        ("ann0", {"ranking": [1, 2, 0, 3]}), ("ann1", {"ranking": [1, 2, 0, 3]})]
    assert [lab["shown_order"] for lab in labels] == [
        [texts.index(t) for t in shown[0]], [texts.index(t) for t in shown[1]]]

    # they split on the pair (helpful) and on the gold item: only the pair is disputed, and the
    # dashboard shows who chose what
    for (user, token), choice in zip(people, ("A", "B")):
        for tid in (pq, gold):
            r = requests.post(f"{server.url}/api/projects/{pid}/labels",
                              headers={"Authorization": f"Bearer {token}"},
                              json={"task_id": tid, "value": {"choices": {
                                  "helpful": choice, "harmless": "tie"}}}, timeout=30)
            assert r.status_code == 201, r.text
    page.sign_in(ADMIN_TOKEN)
    page.d.get(f"{server.url}/admin/projects/{pid}")
    boxes = browser.find_elements("css selector", ".dispute")
    assert [int(b.get_attribute("data-task-id")) for b in boxes] == [pq]
    votes = {row.get_attribute("data-annotator"): {
        cell.get_attribute("data-aspect"): cell.text
        for cell in row.find_elements("css selector", ".vote-choice")}
        for row in boxes[0].find_elements("css selector", ".vote")}
    assert votes == {"ann0": {"helpful": "A", "harmless": "tie"},
                     "ann1": {"helpful": "B", "harmless": "tie"}}
    page.shot("dispute-votes")
    store.dispose()


def test_admin_creates_a_project_and_a_user_and_uploads_tasks_in_the_browser(
        server, browser, request, tmp_path):
    store = Store(server.db_url)
    page = Page(browser, server.url, ARTIFACTS / ("admin-pages-" + request.node.callspec.id))
    page.sign_in(ADMIN_TOKEN)
    page.css("#admin-home").click()
    page.css("#project-form")
    page.shot("admin-home")

    # --- a project from the form (Markdown guidelines), then the dashboard
    page.css("#project-name").send_keys("web <b>made</b>")
    aspects = page.css("#project-aspects")
    aspects.clear()
    aspects.send_keys("helpful, harmless")
    labels = page.css("#project-labels")
    labels.clear()
    labels.send_keys("3")
    page.css("#project-guidelines").send_keys("Read [the rules](https://example.org/rules).")
    page.css("#create-project").click()
    page.css("#upload-form")
    project = store.project_by_name("web <b>made</b>")
    assert project["aspects"] == ["helpful", "harmless"] and project["labels_per_item"] == 3
    assert browser.current_url.endswith(f"/admin/projects/{project['id']}")

    # --- an upload with bad records imports nothing and lists every one as file:line
    bad = tmp_path / "tasks.csv"
    bad.write_text('prompt,chosen,rejected\nHi,Hello!,No.\n,x,y\nYo,"",z\n')
    page.css("#upload-file").send_keys(str(bad))
    page.css("#upload").click()
    page.css("#upload-problems li")
    problems = [li.text for li in browser.find_elements("css selector", "#upload-problems li")]
    assert len(problems) == 2, problems
    assert problems[0].startswith("tasks.csv:3: ") and problems[1].startswith("tasks.csv:4: ")
    assert "nothing was imported" in page.css("#upload-error").text
    assert store.tasks_of(project["id"]) == []
    page.shot("upload-bad-records")

    # --- a good JSONL file: a pair and a ranking
    good = tmp_path / "tasks.jsonl"
    good.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "No."}) + "\n"
                    + json.dumps({"prompt": "Rank", "responses": ["a", "b", "c"]}) + "\n")
    page.css("#upload-file").send_keys(str(good))
    page.css("#upload").click()
    assert "Added 2 task(s) from tasks.jsonl (1 pairwise, 1 ranking" in page.css(
        "#upload-result").text
    assert sorted(t["kind"] for t in store.tasks_of(project["id"])) == ["pairwise", "ranking"]
    page.shot("upload-done")

    # --- a user on the project: the token is shown once and signs them in
    page.d.get(server.url + "/admin")
    page.css("#user-name").send_keys("webann")
    page.css(f'input.user-project[value="{project["id"]}"]').click()
    page.css("#add-user").click()
    token = page.css("#new-token").text
    assert len(token) >= 24
    page.shot("user-token-shown-once")
    page.d.get(server.url + "/admin")
    assert not browser.find_elements("css selector", "#new-token")
    page.sign_in(token)
    page.css("a.project-link").click()
    assert page.task_id() is not None
    link = page.css("#guidelines a")
    assert link.get_attribute("href") == "https://example.org/rules"
    page.shot("annotator-on-new-project")
    store.dispose()


def test_markdown_and_code_render_as_elements_and_scripts_never_run(server, browser, request):
    store = Store(server.db_url)
    pid = store.create_project("markdown", "Guide: see [docs](https://example.org/docs) and "
                               "[bad](javascript:window.__pwned=1)\n\n```\nguide code\n```",
                               ["helpful"], 1)
    store.add_tasks(pid, [{
        "kind": "pairwise",
        "prompt": "Write **code** <script>window.__pwned=1</script>",
        "responses": ["Here:\n\n```python\nprint('hi')\n```\n\n"
                      "See [the docs](https://docs.python.org/) or [this](javascript:"
                      "window.__pwned=2).",
                      "<img src=x onerror=\"window.__pwned=3\"> <script>window.__pwned=4</script>"
                      "\n<a href=\"javascript:window.__pwned=5\">click</a>"]}])
    user, token = store.create_user("md")
    store.add_member(pid, user.id)
    page = Page(browser, server.url, ARTIFACTS / ("markdown-" + request.node.callspec.id))
    page.sign_in(token)
    page.d.get(f"{server.url}/projects/{pid}")
    page.css("#task")
    a, b = browser.find_elements("css selector", ".response .text")
    code = a.find_element("css selector", "pre > code")
    assert code.text.strip() == "print('hi')"
    links = a.find_elements("css selector", "a")
    assert [x.get_attribute("href") for x in links] == ["https://docs.python.org/"]
    assert "[this](javascript:" in a.text  # a javascript: link stays text
    assert page.css("#prompt strong").text == "code"
    assert "<script>" in page.css("#prompt").text  # shown as text, not run
    # raw HTML is text: no element, no handler
    assert not b.find_elements("css selector", "img, script, a")
    assert "<img src=x" in b.text
    guide = page.css("#guidelines")
    assert [x.get_attribute("href") for x in guide.find_elements("css selector", "a")] == [
        "https://example.org/docs"]
    assert guide.find_element("css selector", "pre > code").text.strip() == "guide code"
    for el in browser.find_elements("css selector", "a"):
        assert not (el.get_attribute("href") or "").lower().startswith("javascript:")
    assert browser.execute_script("return window.__pwned") is None
    page.shot("markdown-rendered")
    store.dispose()


def test_admin_resolves_a_disputed_ranking_by_dragging(server, browser, request):
    from selenium.webdriver.common.action_chains import ActionChains

    store = Store(server.db_url)
    pid = store.create_project("drag disputes", "", ["overall"], 2)
    (rk,) = store.add_tasks(pid, [{"kind": "ranking", "prompt": "Rank",
                                   "responses": ["zero", "one", "two"]}])
    for i, ranking in enumerate(([0, 1, 2], [2, 1, 0])):
        user, token = store.create_user(f"d{i}")
        store.add_member(pid, user.id)
        r = requests.post(f"{server.url}/api/projects/{pid}/labels",
                          headers={"Authorization": f"Bearer {token}"},
                          json={"task_id": rk, "value": {"ranking": ranking}}, timeout=30)
        assert r.status_code == 201, r.text
    page = Page(browser, server.url, ARTIFACTS / ("dispute-drag-" + request.node.callspec.id))
    page.sign_in(ADMIN_TOKEN)
    page.d.get(f"{server.url}/admin/projects/{pid}")
    box = page.css(".dispute")
    assert int(box.get_attribute("data-task-id")) == rk
    assert not box.find_elements("css selector", "input")  # no typed indices any more

    def order() -> list[int]:
        return [int(li.get_attribute("data-index"))
                for li in box.find_elements("css selector", "ol.resolve-ranking li")]

    assert order() == [0, 1, 2]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})",
                           box.find_element("css selector", "ol.resolve-ranking"))
    page.shot("dispute-ranking-before-drag")
    # drag "two" (last) to the top, then "zero" (now second) below "one"
    items = box.find_elements("css selector", "ol.resolve-ranking li")
    (ActionChains(browser).click_and_hold(items[2].find_element("css selector", ".handle"))
     .move_by_offset(0, -5)
     .move_to_element_with_offset(items[0], 0, -items[0].size["height"] // 2 + 2)
     .move_by_offset(0, -5).release().perform())
    assert order() == [2, 0, 1]
    items = box.find_elements("css selector", "ol.resolve-ranking li")
    (ActionChains(browser).click_and_hold(items[1].find_element("css selector", ".handle"))
     .move_by_offset(0, 20)
     .move_to_element_with_offset(items[2], 0, items[2].size["height"] // 2 - 2)
     .move_by_offset(0, 10).release().perform())
    assert order() == [2, 1, 0]
    assert [el.text for el in box.find_elements("css selector", ".pos")] == ["1", "2", "3"]
    page.shot("dispute-ranking-dragged")
    box.find_element("css selector", "button.resolve").click()
    page.css("#no-disputes")
    assert store.resolutions_of(pid)[rk]["value"] == {"ranking": [2, 1, 0]}
    page.shot("dispute-ranking-resolved")
    store.dispose()
