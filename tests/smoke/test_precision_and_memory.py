"""The training engine's numerics and memory knobs, switched on in one place for every trainer.

``--gradient-checkpointing`` changes memory, not arithmetic: the recomputed forward is the same
fp32 computation, so each step's loss and gradient norm equal the run without it, and so do the
final weights. ``--precision fp16`` autocasts with fp32 weights and a gradient scaler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.smoke


def train_rows(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def setup_row(out: Path) -> dict:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["split"] == "setup")


def assert_same_run(plain: Path, checkpointed: Path, keys=("loss", "grad_norm")) -> None:
    a, b = train_rows(plain), train_rows(checkpointed)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 3
    for key in keys:
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-6, abs=1e-9)
    assert setup_row(plain)["gradient_checkpointing"] is False
    assert setup_row(checkpointed)["gradient_checkpointing"] is True


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sft_full_fine_tuning(tiny_model_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils

    from alignkit.cli import run
    from alignkit.config import SFTConfig

    # count the recomputed layers: the run with the flag really checkpoints, the other not
    real, calls = transformers.modeling_utils.checkpoint, []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    outs, counted = {}, {}
    for on in (False, True):
        outs[on] = tmp_path / f"sft-{on}"
        calls.clear()
        run(SFTConfig(model=str(tiny_model_dir), data="demo", max_steps=4, batch_size=4,
                      lr=3e-3, eval_every=0, save_every=0, progress=False,
                      output=str(outs[on]), gradient_checkpointing=on))
        counted[on] = len(calls)
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert counted == {False: 0, True: 4 * layers}  # every layer of every training forward
    assert_same_run(outs[False], outs[True])
    assert_same_weights(outs[False] / "final", outs[True] / "final")


def with_and_without_checkpointing(make_config, root: Path) -> dict[bool, Path]:
    """Run the stage ``make_config(output, gradient_checkpointing)`` configures both ways."""
    from alignkit.cli import run

    outs = {on: root / f"checkpointing-{on}" for on in (False, True)}
    for on, out in outs.items():
        run(make_config(str(out), on))
    return outs


def test_dpo_with_lora(tiny_model_dir, tmp_path):
    from alignkit.config import DPOConfig
    from tests.smoke.test_dpo import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 24)
    outs = with_and_without_checkpointing(lambda out, on: DPOConfig(
        model=str(tiny_model_dir), data=str(prefs), output=out, max_steps=4, lr=1e-2,
        batch_size=8, lora=True, eval_every=0, save_every=0, sample_prompts=None,
        progress=False, gradient_checkpointing=on), tmp_path)
    assert_same_run(outs[False], outs[True], keys=("loss", "grad_norm", "reward_margin"))
    assert_same_weights(outs[False] / "final", outs[True] / "final")


def test_reward_ensemble(tiny_model_dir, tmp_path):
    from alignkit.config import RewardConfig
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    outs = with_and_without_checkpointing(lambda out, on: RewardConfig(
        model=str(tiny_model_dir), data=str(prefs), output=out, ensemble=2, max_steps=4,
        batch_size=8, lr=3e-3, eval_fraction=0.0, save_every=0, progress=False,
        gradient_checkpointing=on), tmp_path)
    assert_same_run(outs[False], outs[True], keys=("loss", "grad_norm", "loss_member0"))
    assert_same_weights(outs[False] / "final", outs[True] / "final")


def test_fp16_trains_with_loss_scaling_and_resumes_its_scale(tiny_model_dir, tmp_path):
    """``--precision fp16``: autocast in fp16 with fp32 weights and a grad scaler. The losses
    follow the fp32 run's closely (fp16 rounding, not another computation), the scale is logged,
    and it is part of the checkpoint (a resumed run continues with the same scale)."""
    from alignkit.cli import run
    from alignkit.config import SFTConfig

    def settings(out, **kw):
        return SFTConfig(model=str(tiny_model_dir), data="demo", max_steps=4, batch_size=4,
                         lr=3e-3, eval_every=0, progress=False, output=str(out), **kw)

    run(settings(tmp_path / "fp32", save_every=0, precision="fp32"))
    run(settings(tmp_path / "fp16", save_every=2, keep_checkpoints=0, precision="fp16"))
    a, b = train_rows(tmp_path / "fp32"), train_rows(tmp_path / "fp16")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=2e-2)
    assert [r["loss"] for r in b] != [r["loss"] for r in a]  # it really ran in fp16
    assert all(r["loss_scale"] > 1 for r in b) and "loss_scale" not in a[0]
    state = json.loads((tmp_path / "fp16" / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["grad_scaler"]["scale"] == b[1]["loss_scale"]
    weights = final_weights(tmp_path / "fp16" / "final")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
