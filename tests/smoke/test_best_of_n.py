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


def test_measure_policy_is_the_same_batch_by_batch(tiny_model_dir, tmp_path, monkeypatch):
    """``measure_policy`` samples and scores its answers batch by batch (all the answers' logits
    at once do not fit in memory for a few hundred): the answers, their KL to the reference,
    entropy, length and reward are the same whatever the batch size, and a policy's KL to
    itself is exactly 0."""
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.policy import logprobs_under, measure_policy
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
    reference, _ = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
    with torch.no_grad():  # a different reference, so that the KL is not 0
        next(reference.parameters()).mul_(1.5)
    prompts = load_prompts(str(write_prompts(tmp_path / "p.jsonl", 7)), tok)
    texts, ids = prompts.texts * 3, prompts.ids * 3  # 21 answers: batches of 4 leave 1
    rows = {size: measure_policy(model, tok, texts, ids, [None] * 21, logprobs_under(reference),
                                 space_share, None, SamplingConfig(12, 1.0), seed=5,
                                 batch_size=size, per_prompt=True) for size in (4, 21)}
    small, whole = rows[4], rows[21]
    assert small["proxy_per_prompt"] == pytest.approx(whole["proxy_per_prompt"], abs=1e-6)
    assert small["length_per_prompt"] == whole["length_per_prompt"]
    for key in ("kl", "entropy", "response_length", "proxy"):
        assert small[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5), key
    assert whole["kl"] > 0.01
    itself = measure_policy(model, tok, texts, ids, [None] * 21, logprobs_under(model), None,
                            None, SamplingConfig(12, 1.0), seed=5, batch_size=4)
    # its log-probs off the decoding pass, the reference's from a full forward: equal up to
    # float rounding
    assert itself["kl"] == pytest.approx(0.0, abs=1e-5)
    # under bf16 autocast the step-by-step decode rounds otherwise than a full forward (on
    # SmolLM2's matrices; this tiny model's happen to round alike): the policy's log-probs come
    # from a full forward, as the reference's, so its KL to itself is exactly 0
    from alignkit.evaluation import policy as evaluation_policy

    asked = []

    def recording(*args, **kwargs):
        asked.append(kwargs["with_decode_stats"])
        return real_sample(*args, **kwargs)

    real_sample = evaluation_policy.sample
    monkeypatch.setattr(evaluation_policy, "sample", recording)
    for name in ("fp32", "bf16"):
        row = measure_policy(model, tok, texts, ids, [None] * 21, logprobs_under(model), None,
                             None, SamplingConfig(12, 1.0), seed=5, batch_size=4,
                             precision=name)
        assert row["kl"] == (pytest.approx(0.0, abs=1e-5) if name == "fp32" else 0.0), name
        assert row["entropy"] == pytest.approx(itself["entropy"], rel=0.05), name
    assert asked == [True, False]
