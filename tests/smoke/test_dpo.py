"""``alignkit dpo`` on a tiny random policy: every loss learns an easy preference, LoRA keeps the
reference as the adapter-free model, bad pairs get file:line errors or counted skips, and an output
folder reused by another run never hands it the earlier run's reference log-probs."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.smoke.test_reward_cli import write_prefs

pytestmark = pytest.mark.smoke


def rows(path: Path, split: str = "train") -> list[dict]:
    return [r for r in (json.loads(ln) for ln in Path(path).read_text().splitlines())
            if r["split"] == split]


def settings(model, data, out, **kw) -> dict:
    base = dict(model=str(model), data=str(data), output=str(out), max_steps=12, lr=1e-3,
                beta=0.1, batch_size=8, eval_every=6, save_every=0, sample_count=4,
                max_new_tokens=6, progress=False, seed=1)
    base.update(kw)
    return base


def test_dpo_learns_the_preference_and_reports_it(tiny_model_dir, tmp_path):
    from alignkit.config import DPOConfig
    from alignkit.cli import run

    prefs = write_prefs(tmp_path / "prefs.jsonl", 64)
    out = run(DPOConfig(**settings(tiny_model_dir, prefs, tmp_path / "run")))
    setup = rows(out["metrics"], "setup")[0]
    assert setup["mode"].startswith("full: reference log-probs cached")
    assert setup["train_pairs"] + setup["heldout_pairs"] == 64
    evals = rows(out["metrics"], "eval")
    assert [r["step"] for r in evals] == [0, 6, 12]
    first, last = evals[0], evals[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert first["sample_kl"] == pytest.approx(0.0, abs=1e-5)
    assert last["loss"] < math.log(2) - 0.2 and last["reward_accuracy"] >= 0.8
    assert last["reward_margin"] > 0.5
    assert math.isfinite(last["sample_kl"]) and "sample_gold" in last
    train = rows(out["metrics"])
    assert sum(r["loss"] for r in train[-3:]) / 3 < sum(r["loss"] for r in train[:3]) / 3 - 0.15
    assert all({"rewards_chosen", "rewards_rejected", "logps_chosen", "pairs_per_s"} <= set(r)
               for r in train)
    assert (Path(out["final"]) / "config.json").is_file()
    assert (tmp_path / "run" / "reference_logps.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize("extra", [{"loss": "ipo", "beta": 0.5}, {"loss": "hinge"},
                                   {"loss": "robust", "label_smoothing": 0.1},
                                   {"loss": "sigmoid", "label_smoothing": 0.1, "rpo_alpha": 0.5},
                                   {"reference_free": True}])
def test_each_loss_learns(tiny_model_dir, tmp_path, extra):
    from alignkit.config import DPOConfig
    from alignkit.cli import run

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    out = run(DPOConfig(**settings(tiny_model_dir, prefs, tmp_path / "run", eval_every=0,
                                        sample_prompts=None, **extra)))
    evals = rows(out["metrics"], "eval")
    assert evals[-1]["reward_margin"] > evals[0]["reward_margin"] + 0.1
    assert evals[-1]["loss"] < evals[0]["loss"]
    train = rows(out["metrics"])
    assert all(math.isfinite(r["loss"]) for r in train)
    if extra.get("rpo_alpha"):
        assert "rpo_loss" in train[0] and train[0]["loss"] > train[0]["dpo_loss"]


def test_lora_reference_is_the_adapter_free_policy(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignkit.config import DPOConfig
    from alignkit.cli import run

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    out = run(DPOConfig(**settings(tiny_model_dir, prefs, tmp_path / "run", lora=True,
                                        lr=5e-3, max_steps=6, eval_every=0)))
    assert rows(out["metrics"], "setup")[0]["mode"].startswith("lora: reference = adapters")
    evals = rows(out["metrics"], "eval")
    assert evals[0]["sample_kl"] == pytest.approx(0.0, abs=1e-5)
    assert evals[-1]["reward_margin"] > evals[0]["reward_margin"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    final = AutoModelForCausalLM.from_pretrained(str(out["final"])).state_dict()
    assert set(final) == set(base)  # a plain model, adapters merged
    assert any(not torch.equal(final[k], base[k]) for k in base if "q_proj" in k)


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"prompt": "Say hi", "chosen": "Hi! How can I help?", "rejected": "Go away."}


def test_bad_pairs_get_file_line_errors_or_counted_skips(tiny_model_dir, tmp_path):
    common = ["--model", str(tiny_model_dir), "--max-steps", "1", "--no-progress",
              "--sample-prompts", "", "--eval-fraction", "0"]
    bad = write(tmp_path / "bad.jsonl", [
        GOOD,
        {"prompt": "Say hi", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Rank", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]},
        {"prompt": "Missing", "chosen": "x"},
    ])
    proc = run_cli("dpo", "--data", str(bad), "--output", str(tmp_path / "r1"), *common)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:2" in proc.stderr and "identical" in proc.stderr
    assert f"{bad}:3" in proc.stderr and "ranking" in proc.stderr
    assert f"{bad}:4" in proc.stderr and "rejected" in proc.stderr
    assert not (tmp_path / "r1" / "final").exists()

    long_prompt = write(tmp_path / "long.jsonl", [GOOD, {**GOOD, "prompt": "word " * 400}])
    proc = run_cli("dpo", "--data", str(long_prompt), "--output", str(tmp_path / "r2"),
                   "--max-length", "128", *common)
    assert proc.returncode == 2 and f"{long_prompt}:2" in proc.stderr
    assert "--max-length 128" in proc.stderr

    # --skip-invalid: the bad records are dropped and counted; an empty response is skipped
    mixed = write(tmp_path / "mixed.jsonl", [GOOD, {**GOOD, "rejected": ""},
                                              {**GOOD, "prompt": "word " * 400},
                                              {"prompt": "Hi", "chosen": "x", "rejected": "x"}])
    out = tmp_path / "r3"
    proc = run_cli("dpo", "--data", str(mixed), "--output", str(out), "--max-length", "128",
                   "--skip-invalid", *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    setup = rows(out / "metrics.jsonl", "setup")[0]
    assert setup["skipped_records"] == 2 and setup["skipped_empty_pairs"] == 1
    assert setup["train_pairs"] == 1
    assert math.isfinite(rows(out / "metrics.jsonl")[0]["loss"])


def same_shape_other_data(prefs: Path, path: Path) -> Path:
    """The prompts of ``prefs`` with other responses: as many groups of two responses each."""
    recs = [json.loads(ln) for ln in prefs.read_text().splitlines()]
    return write(path, [{"prompt": r["prompt"], "chosen": "Sure: " + r["chosen"][::-1],
                         "rejected": "No."} for r in recs])


def assert_starts_at_the_reference(metrics: Path) -> None:
    """Policy == reference at step 0: the DPO loss is ln 2 and every implicit reward 0 (exactly
    on held-out pairs, batched as the reference pass batches them; up to float32 rounding of
    the summed log-probs in the first training step, whose micro-batch packs other groups)."""
    first_eval = [r for r in rows(metrics, "eval") if r["step"] == 0][0]
    first_train = rows(metrics)[0]
    for row, tolerance in ((first_eval, 0.0), (first_train, 1e-4)):
        assert row["loss"] == pytest.approx(math.log(2), abs=1e-5)
        for name in ("rewards_chosen", "rewards_rejected", "reward_margin"):
            assert row[name] == pytest.approx(0.0, abs=tolerance), (row["split"], name)


def test_reference_cache_is_reused_only_for_the_same_computation(tiny_model_dir, tmp_path,
                                                                 caplog):
    from alignkit.config import DPOConfig
    from alignkit.cli import run as run_stage

    caplog.set_level(logging.INFO, logger="alignkit.dpo")
    first = write_prefs(tmp_path / "first.jsonl", 16)
    second = same_shape_other_data(first, tmp_path / "second.jsonl")
    out = tmp_path / "run"
    cache = out / "reference_logps.pt"

    def run(data, **kw):
        caplog.clear()
        return run_stage(DPOConfig(**settings(
            tiny_model_dir, data, out, **{"max_steps": 2, "batch_size": 4, "eval_every": 0,
                                          "eval_fraction": 0.25, "sample_prompts": None,
                                          # ln 2 to 1e-5 is fp32's (auto: bf16 on CUDA)
                                          "precision": "fp32", **kw})))

    run(first)
    assert_starts_at_the_reference(out / "metrics.jsonl")
    # --overwrite with other data of the same shape: the earlier cache is deleted
    run(second, overwrite=True)
    assert_starts_at_the_reference(out / "metrics.jsonl")
    assert "computed and cached" in caplog.text

    # a run killed after caching leaves only config.yaml and the cache; the next run into the
    # folder needs no flag, and another --seed splits the data differently: recomputed
    for name in ("metrics.jsonl", "final", "checkpoints", "tensorboard"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink(missing_ok=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "reference_logps.pt"]
    run(second, seed=5, save_every=1, keep_checkpoints=0)
    assert_starts_at_the_reference(out / "metrics.jsonl")
    assert "recomputing" in caplog.text and "the data" in caplog.text

    # a resumed run is the same computation: the cache is read, not written
    stamp = cache.stat().st_mtime_ns
    keys = ("step", "loss", "reward_margin", "logps_chosen", "grad_norm")
    want = [{k: r[k] for k in keys} for r in rows(out / "metrics.jsonl")]
    run(second, seed=5, save_every=1, keep_checkpoints=0, resume=True)
    assert "resuming from" in caplog.text and "reusing" in caplog.text
    assert "computed and cached" not in caplog.text and cache.stat().st_mtime_ns == stamp
    assert [{k: r[k] for k in keys} for r in rows(out / "metrics.jsonl")] == want


def test_ties_are_soft_labels_for_sigmoid_and_skipped_for_other_losses():
    from alignkit.data.preferences import Comparison, PreferenceGroup
    from alignkit.training.preference import drop_ties

    g1 = PreferenceGroup("p", pairs=[Comparison(0, 1, label=0.5), Comparison(0, 2)])
    g2 = PreferenceGroup("q", pairs=[Comparison(0, 1, label=0.5)])
    kept, dropped = drop_ties([g1, g2])
    assert dropped == 2 and kept == [g1] and [p.label for p in g1.pairs] == [1.0]


def test_each_evaluation_answers_the_adversarial_suite(tiny_model_dir, tmp_path):
    """--eval-adversarial: every evaluation answers the suite (at most N per category) and logs
    the rates its own answers give, so one run draws refusal over training (the report's DPO
    curves show it); a suite with a mistake, or no held-out evaluation to answer it at, stops
    the run before any training."""
    from alignkit.cli import run
    from alignkit.config import DPOConfig
    from alignkit.evaluation.adversarial import load_suite
    from alignkit.evaluation.plots import training_curves
    from tests.smoke.test_ppo import assert_rates_are_its_answers, write_suite

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    suite = write_suite(tmp_path / "suite.jsonl")
    out = run(DPOConfig(**settings(tiny_model_dir, prefs, tmp_path / "run", max_steps=4,
                                   eval_every=2, lora=True, eval_adversarial=str(suite),
                                   eval_adversarial_prompts=1)))
    evals = rows(out["metrics"], "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]
    firsts = {}
    for item in load_suite(str(suite)):
        firsts.setdefault(item.category, item)
    for r in evals:
        assert_rates_are_its_answers(r, list(firsts.values()))
        assert "sample_kl" in r  # the held-out answers are measured as before
    figure = training_curves("dpo", "dpo", rows(out["metrics"]), evals)
    assert "harmful + jailbreak refused" in figure.caption and "benign refused" in figure.caption

    common = ("--model", str(tiny_model_dir), "--data", str(prefs), "--max-steps", "1",
              "--no-progress")
    proc = run_cli("dpo", *common, "--sample-prompts", "none", "--eval-adversarial", str(suite),
                   "--output", str(tmp_path / "no-prompts"))
    assert proc.returncode == 2 and "--sample-prompts" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "no-prompts").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "category": "harmful"}\n')
    proc = run_cli("dpo", *common, "--eval-adversarial", str(bad),
                   "--output", str(tmp_path / "bad-run"))
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "expect" in proc.stderr
    assert not (tmp_path / "bad-run").exists()
