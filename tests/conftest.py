"""Shared fixtures: a tiny random Llama-style model folder, built once per test session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# keep tests on the CPU numerics they were written for, and off any network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``alignkit`` as a real subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "alignkit", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def run_cli_until_killed(*args: str, when: Path, timeout: float = 300) -> None:
    """Start ``alignkit`` and SIGKILL it (no chance to clean up) as soon as ``when`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not when.exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, f"{when} did not appear within {timeout}s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
