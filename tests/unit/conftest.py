"""Unit-test fixtures: the tiny tokenizer / model are built once per session (the tiny model
folder, ``tiny_model_dir``, comes from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignkit.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from alignkit.models.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer).eval()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty temporary folder so that data files can be named relatively
    (messages then read ``data.jsonl:3: ...``)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
