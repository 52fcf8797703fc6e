"""A LoRA run saves its peft adapter beside the merged weights: ``final/adapter`` loads with
``PeftModel.from_pretrained`` on the base and gives the merged model's logits; ``--model`` takes
the adapter folder (the base from its config, merged once); ``final/README.md`` is a model card."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def logits(model, tok) -> torch.Tensor:
    batch = tok(["The sky is", "Two plus two is four, and"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_lora_adapter_loads_in_peft_and_as_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))  # the merged folder goes here
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.models.loading import resolve_model

    out = tmp_path / "sft"
    proc = run_cli("sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
                   "--lora", "--lora-r", "4", "--lr", "1e-2", "--max-steps", "3",
                   "--batch-size", "4", "--eval-fraction", "0.05", "--eval-every", "0",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = out / "final" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_model_dir)
    assert (adapter / "adapter_model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    merged = AutoModelForCausalLM.from_pretrained(str(out / "final")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    before = logits(base, tok)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    want = logits(merged, tok)
    assert torch.allclose(logits(with_adapter, tok), want, atol=1e-5)
    assert (want - before).abs().max() > 1e-3  # the adapter learned something

    # --model <adapter folder>: the base named in its config with the adapter merged in
    folder = resolve_model(str(adapter))
    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert torch.allclose(logits(again, tok), want, atol=1e-5)
    assert resolve_model(str(adapter)) == folder  # merged once
    assert folder.startswith(str(tmp_path / "cache" / "models" / "adapter-final-"))
    proc = run_cli("sft", "--model", str(adapter), "--data", "demo", "--output",
                   str(tmp_path / "more"), "--max-steps", "1", "--batch-size", "2",
                   "--eval-fraction", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]

    card = (out / "final" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "alignkit sft" in card and "PeftModel.from_pretrained" in card
    assert "| `lora_r` | `4` |" in card and "| loss |" in card


def test_adapter_folder_without_base_is_a_clear_error(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4}))
    proc = run_cli("sft", "--model", str(adapter), "--data", "demo", "--output",
                   str(tmp_path / "out"), "--max-steps", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("adapter_config.json: base_model_name_or_path: missing "
                                        "(the base model the adapter was trained on)")
    assert "Traceback" not in proc.stderr


def test_lora_init_goes_on_training_saved_adapters(tiny_model_dir, tmp_path):
    """``--lora-init``: the policy starts as the saved adapters' model, trains those adapters
    (not fresh ones), and its reference (adapters disabled) is still ``--model``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.config import DPOConfig
    from alignkit.errors import UserError
    from alignkit.training.policy import load_policy

    out = tmp_path / "sft"
    proc = run_cli("sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
                   "--lora", "--lora-r", "4", "--lora-targets", "q_proj,v_proj", "--lr", "1e-2",
                   "--max-steps", "3", "--batch-size", "4", "--eval-fraction", "0.05",
                   "--eval-every", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    merged = logits(AutoModelForCausalLM.from_pretrained(str(out / "final")).eval(), tok)
    base = logits(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval(), tok)

    for init in (out / "final", out / "final" / "adapter"):  # the saved folder or its adapter/
        cfg = DPOConfig(model=str(tiny_model_dir), lora=True, lora_r=4,
                        lora_targets="v_proj,q_proj", lora_init=str(init))
        policy, _ = load_policy(cfg, "cpu")
        policy.eval()
        assert torch.allclose(logits(policy, tok), merged, atol=1e-5)
        with policy.disable_adapter():
            assert torch.allclose(logits(policy, tok), base, atol=1e-5)
        trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert len(trainable) == 2 * 2 * policy.config.num_hidden_layers  # A and B, q and v

    with pytest.raises(UserError) as err:
        load_policy(DPOConfig(model=str(tiny_model_dir), lora=True, lora_init=str(out / "final")),
                    "cpu")
    assert str(err.value) == (
        f"{out / 'final' / 'adapter' / 'adapter_config.json'}: --lora-r 16 but the adapters have "
        "4; --lora-targets ['k_proj', 'o_proj', 'q_proj', 'v_proj'] but the adapters have "
        "['q_proj', 'v_proj'] (pass the adapters' values)")
    with pytest.raises(UserError, match=r"^--lora-init .*: goes on training LoRA adapters; add "
                                        r"--lora$"):
        load_policy(DPOConfig(model=str(tiny_model_dir), lora_init=str(out / "final")), "cpu")
    with pytest.raises(UserError, match="no adapter_config.json there"):
        load_policy(DPOConfig(model=str(tiny_model_dir), lora=True, lora_init=str(tmp_path)),
                    "cpu")
