"""Best-of-n: the kept answer is the reward model's favourite of the n drawn, the reward rises with
n, and the KL is the closed form log n - (n-1)/n."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_cli
from tests.smoke.test_ppo import space_share, write_prompts

pytestmark = pytest.mark.smoke


def test_analytic_kl():
    from alignkit.evaluation.best_of_n import analytic_kl

    assert analytic_kl(1) == 0.0
    assert analytic_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931472
    assert analytic_kl(4) == pytest.approx(0.6362944, abs=1e-7)  # log 4 - 3/4


def test_keeps_the_argmax_and_more_candidates_score_higher(tiny_model_dir, tmp_path):
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.best_of_n import best_of_n
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
    prompts = load_prompts(str(write_prompts(tmp_path / "p.jsonl", 16)), tok)
    sampling = SamplingConfig(12, 1.0)
    means = {}
    for n in (1, 8):
        out = best_of_n(model, tok, prompts, space_share, n, sampling, seed=3, device="cpu")
        assert out.rewards.shape == (16, n) and len(out.candidates[0]) == n
        for i, answer in enumerate(out.picked()):
            assert space_share(None, [answer])["combined"].item() == pytest.approx(
                float(out.rewards[i].max()))
        means[n] = float(out.rewards.max(1).values.mean())
    assert means[8] > means[1] + 0.02
    # a fixed draw: the same seed gives the same candidates (the caller's RNG is untouched)
    again = best_of_n(model, tok, prompts, space_share, 1, sampling, seed=3, device="cpu")
    assert torch.equal(again.rewards, best_of_n(model, tok, prompts, space_share, 1, sampling,
                                                seed=3, device="cpu").rewards)


def test_cli_with_a_reward_model(tiny_model_dir, tmp_path):
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 24)
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(tmp_path / "rm"), "--max-steps", "2", "--eval-fraction", "0",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "bon"
    proc = run_cli("best-of-n", "--model", str(tiny_model_dir), "--reward-model",
                   str(tmp_path / "rm" / "final"), "--data",
                   str(write_prompts(tmp_path / "p.jsonl", 6)), "--n", "3", "--max-new-tokens",
                   "6", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(ln) for ln in (out / "best.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for r in records:
        assert len(r["candidates"]) == 3 and r["response"] in r["candidates"]
        assert r["reward"] == pytest.approx(max(r["rewards"]), abs=1e-4)
    summary = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["kl_analytic"] == pytest.approx(math.log(3) - 2 / 3)
    assert summary["reward_best"] >= summary["reward_single"]
    assert "gold_best" in summary and (out / "config.yaml").is_file()
    # an existing run is not overwritten without --overwrite
    again = run_cli("best-of-n", "--model", str(tiny_model_dir), "--reward-model",
                    str(tmp_path / "rm" / "final"), "--output", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
