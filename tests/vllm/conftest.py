"""The vLLM rollout-engine tests run in their own environment, where vLLM's CPU build is
installed beside torch 2.13 (``scripts/test_vllm.sh``; README's test command runs it). A tiny
model with 32-wide attention heads: vLLM's CPU attention kernels take head sizes of 32 and up."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("vllm-tiny") / "model", num_heads=2)
