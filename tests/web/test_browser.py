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

from alignkit.feedback.store import Store
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
        """The shown task's id (None: queue empty; "loading": the page is being replaced)."""
        from selenium.common.exceptions import WebDriverException

        try:
            return self.d.execute_script(
                "if (document.readyState !== 'complete') return 'loading';"
                "const t = document.getElementById('task');"
                "return t ? parseInt(t.dataset.taskId, 10) : null;")
        except WebDriverException:
            return "loading"

    def wait_task_change(self, old) -> None:
        self.wait.until(lambda d: self.task_id() not in (old, "loading"))

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

    # --- ranking by keyboard: pick the 3rd response, move it up twice -> [2, 0, 1]
    assert page.task_id() == r_key
    page.keys("3", Keys.ARROW_UP, Keys.ARROW_UP)
    order = [li.get_attribute("data-index") for li in browser.find_elements(
        "css selector", "#ranking li")]
    assert order == ["2", "0", "1"]
    page.shot("ranking-keyboard")
    page.keys(Keys.ENTER)
    page.wait_task_change(r_key)

    # --- ranking by mouse: drag the first response below the last -> [1, 2, 0]
    assert page.task_id() == r_mouse
    items = browser.find_elements("css selector", "#ranking li")
    handle = items[0].find_element("css selector", ".handle")
    (ActionChains(browser).click_and_hold(handle).move_by_offset(0, 20)
     .move_to_element_with_offset(items[2], 0, items[2].size["height"] // 2 - 2)
     .move_by_offset(0, 10).release().perform())
    order = [li.get_attribute("data-index") for li in browser.find_elements(
        "css selector", "#ranking li")]
    assert order == ["1", "2", "0"]
    page.shot("ranking-drag")
    page.css("#submit").click()
    page.wait.until(lambda d: d.find_elements("css selector", "#done-message"))
    assert page.css("#progress").text == "Done 4 of 4"
    page.shot("queue-done")

    # --- undo (u) brings the last task back; resubmit it
    page.keys("u")
    page.wait_task_change(None)
    assert page.task_id() == r_mouse and store.count_labels(pid) == 3
    page.keys("2", Keys.ARROW_UP, Keys.ENTER)  # [1, 0, 2]
    page.wait.until(lambda d: d.find_elements("css selector", "#done-message"))
    ranks = {lab["task_id"]: lab["value"] for lab in store.labels_of_user(pid, ann0)}
    assert ranks == {t_key: {"choices": {"helpful": "A", "harmless": "tie"}},
                     t_mouse: {"choices": {"helpful": "B", "harmless": "B"}},
                     r_key: {"ranking": [2, 0, 1]}, r_mouse: {"ranking": [1, 0, 2]}}

    # --- admin: agreement undefined with one annotator, then updates when ann1 labels
    page.sign_in(ADMIN_TOKEN)
    page.d.get(f"{server.url}/admin/projects/{pid}")
    assert page.css("#alpha-pairwise").text == "n/a"
    assert page.css("#label-count").text == "4"
    page.shot("dashboard-one-annotator")
    h = {"Authorization": f"Bearer {token1}"}
    for tid, value in [(t_key, {"choices": {"helpful": "A", "harmless": "tie"}}),
                       (t_mouse, {"choices": {"helpful": "A", "harmless": "B"}}),
                       (r_key, {"ranking": [2, 0, 1]}), (r_mouse, {"ranking": [1, 0, 2]})]:
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
