"""Checkpoint selection without gold in DPO and online DPO (``--select-by``): at each evaluation
the held-out answers are scored, the best reading's model is kept as ``best/``, and the choice
with its gold regret is in metrics.jsonl; bad flag combinations are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.smoke.test_online_dpo import base_settings, space_reward_model  # noqa: F401
from tests.smoke.test_ppo import write_prompts
from tests.smoke.test_reward_cli import write_prefs

pytestmark = pytest.mark.smoke


def split_rows(path: Path, split: str) -> list[dict]:
    return [r for r in (json.loads(ln) for ln in Path(path).read_text().splitlines())
            if r["split"] == split]


def lcb(row: dict) -> float:
    return row["sample_proxy_mean"] - row["sample_proxy_std"]


def check_choice(out: dict, key) -> dict:
    """The last best row chose the evaluation with the highest ``key`` and scored its regret
    against the gold-best evaluation."""
    evals = [r for r in split_rows(out["metrics"], "eval") if "sample_gold" in r]
    best = split_rows(out["metrics"], "best")
    assert best, "no best rows"
    chosen = max(evals, key=key)
    gold_best = max(evals, key=lambda r: r["sample_gold"])
    last = best[-1]
    assert last["selected_step"] == chosen["step"]
    assert last["best_value"] == pytest.approx(key(chosen))
    assert last["gold_best_step"] == gold_best["step"]
    assert last["selection_regret"] == pytest.approx(gold_best["sample_gold"]
                                                     - chosen["sample_gold"])
    assert Path(out["best"]).is_dir() and (Path(out["best"]) / "config.json").is_file()
    return last


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dpo_keeps_the_lcb_best_and_scores_its_regret(tiny_model_dir, space_reward_model,
                                                       tmp_path):
    from alignkit.cli import run
    from alignkit.config import DPOConfig

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    out = run(DPOConfig(model=str(tiny_model_dir), data=str(prefs), output=str(tmp_path / "run"),
                        max_steps=6, lr=3e-3, beta=0.1, batch_size=8, eval_every=3,
                        save_every=0, sample_count=4, max_new_tokens=6, progress=False, seed=1,
                        select_by="lcb", select_reward_model=str(space_reward_model)))
    evals = [r for r in split_rows(out["metrics"], "eval") if "sample_gold" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    last = check_choice(out, lcb)
    # best/ is the model of the chosen evaluation: the starting one or the final one here
    if last["selected_step"] == 0:
        assert same_weights(Path(out["best"]), Path(tiny_model_dir))
    elif last["selected_step"] == 6:
        assert same_weights(Path(out["best"]), Path(out["final"]))
    else:
        assert not same_weights(Path(out["best"]), Path(out["final"]))
    # by gold (the simulation's oracle) the regret is 0 by construction
    oracle = run(DPOConfig(model=str(tiny_model_dir), data=str(prefs),
                           output=str(tmp_path / "gold"), max_steps=6, lr=3e-3, beta=0.1,
                           batch_size=8, eval_every=3, save_every=0, sample_count=4,
                           max_new_tokens=6, progress=False, seed=1, select_by="gold"))
    assert check_choice(oracle, lambda r: r["sample_gold"])["selection_regret"] == 0.0


def test_online_dpo_selects_with_its_labeler(tiny_model_dir, space_reward_model, tmp_path):
    from alignkit.cli import run
    from alignkit.config import OnlineDPOConfig

    prompts = write_prompts(tmp_path / "p.jsonl", 16)
    out = run(OnlineDPOConfig(**base_settings(tiny_model_dir, space_reward_model, prompts,
                                              tmp_path / "run", rounds=4, eval_every=2,
                                              sample_count=4, select_by="lcb")))
    assert [r["step"] for r in split_rows(out["metrics"], "eval")] == [0, 2, 4]
    check_choice(out, lcb)


@pytest.mark.parametrize("stage, flags, message", [
    ("dpo", ["--select-by", "lcb"], "--select-by lcb needs --select-reward-model"),
    ("dpo", ["--select-by", "gold", "--no-gold"], "--select-by gold needs the gold scorer"),
    ("dpo", ["--select-by", "proxy", "--sample-prompts", ""], "--select-by proxy weighs the "
                                                             "policy's held-out answers"),
    ("online-dpo", ["--select-by", "lcb", "--labeler", "simulated"],
     "--select-by lcb needs --select-reward-model"),
])
def test_bad_selection_flags(stage, flags, message, tiny_model_dir, tmp_path):
    prefs = write_prefs(tmp_path / "prefs.jsonl", 8)
    data = str(prefs) if stage == "dpo" else str(write_prompts(tmp_path / "p.jsonl", 4))
    proc = run_cli(stage, "--model", str(tiny_model_dir), "--data", data, "--output",
                   str(tmp_path / "run"), *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
