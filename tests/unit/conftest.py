"""Shared fixtures of the unit tests: the tiny tokenizer / model are built once per session."""

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty temporary folder so that data files can be named relatively
    (messages then read ``data.jsonl:3: ...``)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
