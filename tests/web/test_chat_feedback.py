"""Feedback from deployment: ``alignkit serve --feedback-db`` and its chat page.

The store part (conversations, picks, thumbs, privacy, review tasks, the export's preference
records) runs on SQLite and PostgreSQL; the acceptance test runs a real ``alignkit serve`` of the
tiny policy and real headless Chromium: a user signs in, chats, picks one of two answers side by
side, gives a thumbs-down with a reason; ``alignkit annotate export --source feedback`` writes
both as preference pairs, on which ``alignkit dpo`` and ``alignkit reward`` train. The chat page's
screenshots go to $ALIGNKIT_TEST_ARTIFACTS or tests/artifacts/web/ and the test's tmp dir."""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from alignkit.feedback.export import deployment_records
from alignkit.feedback.store import ChatFeedback, Invalid, NotFound, Store
from tests.conftest import run_cli
from tests.smoke.serve_process import serve_process
from tests.web.test_browser import ARTIFACTS, Page, browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.web

PROVENANCE = {"model": "tiny-policy", "temperature": 0.8, "top_p": 0.95, "max_tokens": 16}


def answers(*texts: str, seed: int = 1) -> list[dict]:
    return [{"content": t, **PROVENANCE, "seed": seed + i} for i, t in enumerate(texts)]


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.upgrade()
    yield s
    s.dispose()


def test_chat_feedback_store_export_privacy_and_review(store):
    chats = ChatFeedback(store)
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    admin, _ = store.create_user("boss", role="admin")

    # turn 1: side by side, A picked; the next prompt continues with the picked answer
    conv, prompt = chats.next_prompt(alice, None, "Hi <b>there</b>")
    assert prompt == [{"role": "user", "content": "Hi <b>there</b>"}]
    t1 = chats.add_turn(conv, prompt, answers("Hello!", "Go away."))
    a1, b1 = (a["id"] for a in t1["answers"])
    chats.pick(alice, t1["turn_id"], b1)
    chats.pick(alice, t1["turn_id"], a1)  # a second pick replaces the first
    _, prompt2 = chats.next_prompt(alice, conv, "And now?")
    assert [m["content"] for m in prompt2] == ["Hi <b>there</b>", "Hello!", "And now?"]
    # turn 2: side by side, thumbs down on B with a reason, up on A; turn 3: a lone thumbs-down
    t2 = chats.add_turn(conv, prompt2, answers("Sure.", "No.", seed=7))
    a2, b2 = (a["id"] for a in t2["answers"])
    chats.rate(alice, b2, "down", "rude")
    chats.rate(alice, a2, "up")
    _, prompt3 = chats.next_prompt(alice, conv, "Bye")
    t3 = chats.add_turn(conv, prompt3, answers("Whatever.", seed=9))
    chats.rate(alice, t3["answers"][0]["id"], "down", "dismissive")

    # another user's ids name nothing; bad input is refused
    with pytest.raises(NotFound):
        chats.pick(bob, t1["turn_id"], a1)
    with pytest.raises(NotFound):
        chats.rate(bob, a1, "up")
    with pytest.raises(NotFound):
        chats.next_prompt(bob, conv, "hijack")
    with pytest.raises(Invalid):
        chats.rate(alice, a1, "meh")
    with pytest.raises(Invalid):
        chats.pick(alice, t3["turn_id"], t3["answers"][0]["id"])  # a lone answer has no pick
    with pytest.raises(Invalid):
        chats.next_prompt(alice, conv, "   ")

    # the export: the pick and the thumbs as pairs with provenance, the lone rating apart
    pairs, ratings, counts = deployment_records(store)
    assert counts["pick_pairs"] == 1 and counts["thumbs_pairs"] == 1 and counts["ratings"] == 1
    pick, thumbs = pairs
    assert (pick["kind"], pick["chosen"], pick["rejected"]) == ("pick", "Hello!", "Go away.")
    assert pick["prompt"] == prompt
    assert pick["chosen_provenance"]["seed"] == 1 and pick["rejected_provenance"]["seed"] == 2
    assert pick["chosen_provenance"]["model"] == "tiny-policy"
    assert "created_at" in pick["chosen_provenance"]
    assert (thumbs["kind"], thumbs["chosen"], thumbs["rejected"], thumbs["reason"]) == (
        "thumbs", "Sure.", "No.", "rude")
    assert thumbs["prompt"] == prompt2
    assert ratings[0]["rating"] == "down" and ratings[0]["reason"] == "dismissive"

    # export and deletion are per user
    mine = chats.conversations_of(alice)
    assert len(mine) == 1 and len(mine[0]["turns"]) == 3 and chats.conversations_of(bob) == []
    assert mine[0]["turns"][1]["answers"][1]["ratings"][0]["reason"] == "rude"

    # an admin sends the conversation to review: its side-by-side turns become pairwise tasks
    pid = store.create_project("chat review", "Compare", ["helpful"], 1)
    ids = chats.send_to_review(conv, pid, admin)
    tasks = store.tasks_of(pid)
    assert [t["id"] for t in tasks] == ids and len(ids) == 2
    assert tasks[0]["kind"] == "pairwise" and tasks[0]["responses"] == ["Hello!", "Go away."]
    assert tasks[1]["prompt"] == prompt2 and tasks[1]["meta"]["provenance"][0]["seed"] == 7

    bob_conv, bob_prompt = chats.next_prompt(bob, None, "Mine")
    chats.add_turn(bob_conv, bob_prompt, answers("ok"))
    with pytest.raises(NotFound):
        chats.delete(bob, conv)
    assert chats.delete(alice) == 1
    assert chats.conversations_of(alice) == [] and len(chats.conversations_of(bob)) == 1
    assert deployment_records(store)[2]["pairs"] == 0
    assert len(store.tasks_of(pid)) == 2  # review tasks are the project's now


def test_serve_without_feedback_db_has_no_chat_page(tiny_model_dir):
    with serve_process(tiny_model_dir) as url:
        base = url.removesuffix("/v1")
        assert requests.get(base + "/chat/", timeout=10).status_code == 404
        assert requests.get(base + "/health", timeout=10).status_code == 200


def test_chat_page_in_chromium_then_export_trains_dpo_and_reward(tiny_model_dir, browser,
                                                                  tmp_path):
    from selenium.webdriver.common.by import By

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    store.upgrade()
    store.create_user("carol", password="correct horse battery")
    _, admin_token = store.create_user("boss", role="admin")
    pid = store.create_project("chat review", "Compare", ["helpful"], 1)
    shots = [ARTIFACTS / "chat-feedback", tmp_path / "screenshots"]

    with serve_process(tiny_model_dir, "--model-name", "tiny-policy", "--feedback-db", db,
                       "--default-max-tokens", "12") as url:
        base = url.removesuffix("/v1")
        page = Page(browser, base, shots[0])

        # --- not signed in: the chat page sends to sign-in; sign in with name + password
        browser.get(base + "/chat/")
        assert browser.current_url.endswith("/chat/login")
        page.css("#name").send_keys("carol")
        page.css("#password").send_keys("correct horse battery")
        page.css("#password-sign-in").click()
        notice = page.css("#stored-notice")
        assert "stored" in notice.text and notice.is_displayed()
        assert page.css("#user").text == "carol"
        assert page.css("#export-mine").get_attribute("href").endswith("/chat/api/me/conversations")

        def send(message: str, side_by_side: bool) -> list:
            turns = len(browser.find_elements(By.CSS_SELECTOR, ".turn"))
            page.css("#message").send_keys(message)
            box = page.css("#side-by-side")
            if box.is_selected() != side_by_side:
                box.click()
            page.css("#send").click()
            page.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn")) > turns)
            turn = browser.find_elements(By.CSS_SELECTOR, ".turn")[-1]
            return turn.find_elements(By.CSS_SELECTOR, ".answer")

        # --- a message with two answers side by side; pick A
        first = send("How do I boil an <b>egg</b>?", True)
        assert len(first) == 2
        assert "seed" in first[0].find_element(By.CSS_SELECTOR, ".provenance").text
        first[0].find_element(By.CSS_SELECTOR, "button.pick").click()
        page.wait.until(lambda d: "picked" in first[0].get_attribute("class"))

        # --- another side by side: thumbs-down on B with a reason, thumbs-up on A
        second = send("And a potato?", True)
        second[1].find_element(By.CSS_SELECTOR, "input.reason").send_keys("too vague")
        second[1].find_element(By.CSS_SELECTOR, "button.thumb-down").click()
        page.wait.until(lambda d: second[1].get_attribute("data-rating") == "down")
        second[0].find_element(By.CSS_SELECTOR, "button.thumb-up").click()
        page.wait.until(lambda d: second[0].get_attribute("data-rating") == "up")

        # --- one answer alone, thumbs-down with a reason: a single rated record
        (third,) = send("Thanks", False)
        third.find_element(By.CSS_SELECTOR, "input.reason").send_keys("off topic")
        third.find_element(By.CSS_SELECTOR, "button.thumb-down").click()
        page.wait.until(lambda d: third.get_attribute("data-rating") == "down")
        assert browser.execute_script("return document.querySelector('.user-message b')") is None
        page.shot("chat")
        shots[1].mkdir(parents=True, exist_ok=True)
        shutil.copy(shots[0] / "01-chat.png", shots[1] / "chat.png")

        # --- the API under the page: same security rules as the annotation app
        cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
        mine = requests.get(base + "/chat/api/me/conversations", cookies=cookies, timeout=10)
        assert mine.status_code == 200 and "attachment" in mine.headers["content-disposition"]
        assert mine.headers["x-frame-options"] == "DENY"
        assert len(mine.json()["conversations"][0]["turns"]) == 3
        evil = requests.delete(base + "/chat/api/me/conversations", cookies=cookies, timeout=10,
                               headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        form = requests.post(base + "/chat/api/turns", cookies=cookies, timeout=10,
                             data={"message": "x"})
        assert form.status_code == 415
        assert requests.get(base + "/chat/api/me/conversations", timeout=10).status_code == 401
        admin = {"Authorization": f"Bearer {admin_token}"}
        conv_id = mine.json()["conversations"][0]["id"]
        assert requests.post(f"{base}/chat/api/admin/conversations/{conv_id}/review",
                             json={"project_id": pid}, cookies=cookies,
                             timeout=10).status_code == 403
        assert requests.get(base + "/chat/api/admin/conversations", headers=admin,
                            timeout=10).status_code == 200

        # --- an admin sends the conversation to the review project from the admin page
        browser.delete_all_cookies()
        browser.get(base + "/chat/login")
        page.css("#token").send_keys(admin_token)
        page.css("#sign-in").click()
        page.css("#admin-link").click()
        page.css(f'button.review[data-conversation-id="{conv_id}"]').click()
        page.wait.until(lambda d: "Sent 2 task(s)" in d.find_element(By.ID, "status").text)
        page.shot("admin")
        assert [t["kind"] for t in store.tasks_of(pid)] == ["pairwise", "pairwise"]
        assert store.tasks_of(pid)[0]["meta"]["conversation_id"] == conv_id

        # --- export: both as preference records with provenance
        out = tmp_path / "export"
        proc = run_cli("annotate", "export", "--source", "feedback", "--db", db, "--output",
                       str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]

        # --- privacy: the user deletes their conversations from the page
        browser.delete_all_cookies()
        browser.get(base + "/chat/login")
        page.css("#name").send_keys("carol")
        page.css("#password").send_keys("correct horse battery")
        page.css("#password-sign-in").click()
        page.css("#delete-mine").click()
        browser.switch_to.alert.accept()
        page.wait.until(lambda d: "Deleted 1" in d.find_element(By.ID, "status").text)
        left = requests.get(base + "/chat/api/me/conversations", cookies=cookies, timeout=10)
        assert left.json()["conversations"] == []

    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    ratings = [json.loads(x) for x in (out / "ratings.jsonl").read_text().splitlines()]
    assert sorted(p["kind"] for p in pairs) == ["pick", "thumbs"], pairs
    thumbs = next(p for p in pairs if p["kind"] == "thumbs")
    assert thumbs["reason"] == "too vague"
    assert all(p["prompt"][-1]["role"] == "user" and p["chosen_provenance"]["model"]
               == "tiny-policy" and p["chosen_provenance"]["seed"]
               != p["rejected_provenance"]["seed"] for p in pairs)
    assert [(r["rating"], r["reason"]) for r in ratings] == [("down", "off topic")]
    common = ["--model", str(tiny_model_dir), "--data", str(out / "pairs.jsonl"),
              "--max-steps", "2", "--eval-fraction", "0", "--no-progress"]
    proc = run_cli("dpo", *common, "--output", str(tmp_path / "dpo"), "--sample-prompts", "")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("reward", *common, "--output", str(tmp_path / "rm"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dpo" / "final").is_dir() and (tmp_path / "rm" / "final").is_dir()
    store.dispose()
