"""``alignkit serve --feedback-db``: refused where the chat page cannot run (vLLM's own server);
the page itself is tested in a browser in tests/web/test_chat_feedback.py."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def test_feedback_db_needs_the_hf_engine(tmp_path):
    proc = run_cli("serve", "--model", str(tmp_path), "--rollout-engine", "vllm",
                   "--feedback-db", str(tmp_path / "fb.db"), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--feedback-db needs --rollout-engine hf" in proc.stderr
    assert not (tmp_path / "fb.db").exists()


def test_a_second_policy_answers_beside_the_first(tiny_model_dir, tmp_path):
    import requests

    from alignkit.feedback.store import Store
    from alignkit.models.tiny import save_tiny_model
    from tests.smoke.serve_process import serve_process

    other = save_tiny_model(tmp_path / "other" / "final", seed=1)
    db = tmp_path / "fb.db"  # a bare path is a SQLite database
    store = Store(str(db))
    store.upgrade()
    _, token = store.create_user("dana")
    auth = {"Authorization": f"Bearer {token}"}
    with serve_process(tiny_model_dir, "--model-name", "tiny-policy", "--feedback-db", str(db),
                       "--feedback-model-b", str(other), "--default-max-tokens", "8") as url:
        base = url.removesuffix("/v1") + "/chat"
        sides = set()
        for _ in range(30):
            turn = requests.post(base + "/api/turns", headers=auth, timeout=60,
                                 json={"message": "Hi", "side_by_side": True}).json()
            models = [a["model"] for a in turn["answers"]]
            assert sorted(models) == ["other", "tiny-policy"]
            sides.add(models[0])
        one = requests.post(base + "/api/turns", headers=auth, timeout=60,
                            json={"message": "Hi", "conversation_id": turn["conversation_id"]})
        assert one.status_code == 201
        assert [a["model"] for a in one.json()["answers"]] == ["tiny-policy"]
        assert requests.post(base + "/api/turns", headers=auth, timeout=60,
                             json={"message": ""}).status_code == 422
    # which policy is answer A is drawn per turn (30 fair draws all on one side: p = 2**-29)
    assert len(sides) == 2
    store.dispose()


def test_feedback_model_b_needs_feedback_db(tmp_path):
    proc = run_cli("serve", "--model", str(tmp_path), "--feedback-model-b", str(tmp_path),
                   timeout=120)
    assert proc.returncode == 2 and "give both" in proc.stderr
