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
