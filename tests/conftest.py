"""Shared fixtures: a tiny random Llama-style model folder, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys

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
