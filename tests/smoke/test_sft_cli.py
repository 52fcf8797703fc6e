"""``alignkit sft`` as a subprocess on a tiny model: it trains, writes what it promises and
rejects bad data cleanly (a killed run's exact resume: ``test_kill_anywhere``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines() if ln]


def train_losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(path) if r["split"] == "train"}


def test_sft_trains_and_writes_run_layout(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    yaml_cfg = tmp_path / "cfg.yaml"
    yaml_cfg.write_text("lr: 0.003\nmax_steps: 5\neval_every: 10\n")
    proc = run_cli("sft", "--config", str(yaml_cfg), "--model", str(tiny_model_dir), "--data",
                   "demo", "--output", str(out), "--max-steps", "20", "--seed", "3",
                   "--save-every", "10", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    # flags override YAML, YAML overrides defaults; the resolved config is saved
    import yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 20 and saved["lr"] == 0.003 and saved["seed"] == 3
    assert saved["eval_every"] == 10 and saved["batch_size"] == 8
    # metrics: 20 train rows, held-out eval at 0, 10, 20, and the held-out loss falls
    rows = read_metrics(out)
    assert sorted(train_losses(out)) == list(range(1, 21))
    evals = {r["step"]: r for r in rows if r["split"] == "eval"}
    assert sorted(evals) == [0, 10, 20]
    assert evals[20]["loss"] < evals[0]["loss"] - 0.5
    assert evals[20]["perplexity"] == pytest.approx(2.718281828 ** evals[20]["loss"], rel=1e-6)
    assert all(r["tokens_per_s"] > 0 for r in rows if r["split"] == "train")
    # checkpoint of step 10 kept (20 is the end: final/ instead), TensorBoard events written
    assert (out / "checkpoints" / "step-10" / "trainable.safetensors").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # final/ is a plain HF folder that transformers loads directly
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert (out / "final" / "model.safetensors").is_file()
    assert model.config.vocab_size == len(tok)


def test_sft_refuses_to_clobber_and_seed_fixes_the_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
            "--max-steps", "4", "--no-progress", "--eval-fraction", "0"]
    assert run_cli(*args).returncode == 0
    first = train_losses(out)
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0
    assert train_losses(out) == first  # same seed, same run, bit for bit


def test_lora_sft_final_is_merged_plain_model(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    proc = run_cli("sft", "--model", str(tiny_model_dir), "--data", "demo", "--output", str(out),
                   "--max-steps", "3", "--lora", "--lr", "0.01", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    setup = next(r for r in read_metrics(out) if r["split"] == "setup")
    assert setup["lora"] is True and setup["trainable_params"] < setup["total_params"] / 5
    from alignkit.models.precision import numerics_name
    assert setup["numerics"] == numerics_name("cpu", "auto")  # what --precision auto ran as
    assert not (out / "final" / "adapter_config.json").exists()
    from safetensors.torch import load_file
    trained = load_file(str(out / "final" / "model.safetensors"))
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    changed = [k for k in base if "q_proj" in k and not (trained[k] == base[k]).all()]
    assert changed, "LoRA deltas were not merged into final/"
    assert all((trained[k] == base[k]).all() for k in base if "mlp" in k)  # untouched by LoRA


def test_bad_data_exits_2_with_location_and_no_traceback(tiny_model_dir, tmp_path):
    bad = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "Hi", "completion": "Hello!"})
    bad.write_text("\n".join([good] * 16 + [json.dumps({"prompt": "Hi"})]) + "\n")
    proc = run_cli("sft", "--model", str(tiny_model_dir), "--data", str(bad), "--output",
                   str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 2
    assert f'{bad}:17: field "completion" is missing' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "final").exists()
