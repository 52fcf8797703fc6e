"""Every stage that samples, with ``--rollout-engine vllm`` on vLLM's CPU build: GRPO and PPO
raise a learnable reward as the own sampler does (same seed), a resumed run continues exactly,
online DPO pushes every round's weights, eval and critique write the own sampler's greedy
answers, best-of-n and label run on the engine alone, and ``alignkit serve`` answers through
vLLM's OpenAI server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.smoke.test_ppo import rows, space_share, write_prompts

pytestmark = pytest.mark.smoke


def ppo_settings(model, tmp_path, **kw) -> dict:
    settings = dict(model=str(model), reward_model=None,
                    data=str(write_prompts(tmp_path / "p.jsonl")), eval_data=None,
                    samples_per_prompt=4, batch_size=4, minibatch_size=16, ppo_epochs=1,
                    max_steps=24, max_new_tokens=12, lr=5e-3, kl_coef=0.01,
                    missing_eos_penalty=0.0, save_every=0, progress=False, seed=3,
                    schedule="constant")
    settings.update(kw)
    return settings


@pytest.mark.parametrize("advantage,extra", [
    ("grpo", {}),
    ("gae", {"samples_per_prompt": 1, "batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2}),
])
def test_rl_raises_the_reward_like_the_own_sampler(vllm_tiny_dir, tmp_path, advantage, extra):
    """Same seed, same reward (the share of spaces a tiny random policy writes): both engines
    raise it by at least 0.05 over 24 steps and end within 0.06 of each other (their draws
    differ: each engine has its own random streams); the engine took the weights before every
    step and its fp32 log-probs are within 1e-4 of the training forward's."""
    from alignkit.cli import run
    from alignkit.config import PPOConfig

    last4 = {}
    for engine in ("hf", "vllm"):
        out = run(PPOConfig(**ppo_settings(vllm_tiny_dir, tmp_path, advantage=advantage,
                                           output=str(tmp_path / engine), rollout_engine=engine,
                                           **extra)), reward_fn=space_share)
        train = rows(out["metrics"])
        scores = [r["score"] for r in train]
        first, last4[engine] = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
        assert last4[engine] - first > 0.05, (engine, first, last4[engine])
        if engine == "vllm":
            assert [r["rollout_pushes"] for r in train] == list(range(1, 25))
            assert max(r["engine_logprob_gap_max"] for r in train) < 1e-4
            assert all(r["engine_seq_logprob_gap"] < 1e-3 for r in train)
        else:
            assert "engine_logprob_gap" not in train[0]
    assert abs(last4["vllm"] - last4["hf"]) < 0.06, last4


def test_bf16_rollouts_show_their_gap_and_take_tis_weights(vllm_tiny_dir, tmp_path):
    """bf16 rollouts beside fp32 training: the logged gap is bf16's, not fp32's, and with
    --rollout-is-cap every token's weight min(pi_trainer / pi_engine, 2) is in (0, 2]."""
    from alignkit.cli import run
    from alignkit.config import PPOConfig

    out = run(PPOConfig(**ppo_settings(vllm_tiny_dir, tmp_path, advantage="grpo", max_steps=4,
                                       output=str(tmp_path / "bf16"), rollout_engine="vllm",
                                       rollout_dtype="bf16", rollout_is_cap=2.0)),
              reward_fn=space_share)
    train = rows(out["metrics"])
    assert max(r["engine_logprob_gap_max"] for r in train) > 1e-3
    assert all(0 < r["is_weight"] <= 2.0 and 0 <= r["is_truncated"] <= 1 for r in train)


def test_resume_with_the_engine_and_adapter_sync(vllm_tiny_dir, tmp_path):
    """A LoRA run stopped after step 1 and resumed ends where the uninterrupted run ends: the
    resumed engine starts from --model and takes the checkpoint's adapter before it samples."""
    from alignkit.cli import run
    from alignkit.config import PPOConfig

    settings = ppo_settings(vllm_tiny_dir, tmp_path, advantage="grpo", lora=True, lr=2e-2,
                            rollout_engine="vllm", rollout_sync="adapter", save_every=1)
    whole = run(PPOConfig(**settings | {"max_steps": 3, "output": str(tmp_path / "whole")}),
                reward_fn=space_share)
    run(PPOConfig(**settings | {"max_steps": 1, "output": str(tmp_path / "split")}),
        reward_fn=space_share)
    resumed = run(PPOConfig(**settings | {"max_steps": 3, "output": str(tmp_path / "split"),
                                          "resume": True}), reward_fn=space_share)
    a, b = rows(whole["metrics"]), rows(resumed["metrics"])
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("score", "kl", "policy_loss", "response_length"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5, abs=1e-6)
    assert b[-1]["rollout_pushes"] == 2  # the resumed engine: steps 2 and 3


def test_online_dpo_pushes_every_round(vllm_tiny_dir, tmp_path):
    from alignkit.cli import run
    from alignkit.config import OnlineDPOConfig

    out = run(OnlineDPOConfig(
        model=str(vllm_tiny_dir), data=str(write_prompts(tmp_path / "p.jsonl", 16)),
        output=str(tmp_path / "online"), labeler="simulated", rounds=3, prompts_per_round=8,
        samples_per_prompt=4, batch_size=4, lr=1e-2, max_new_tokens=10, sample_count=4,
        eval_every=0, save_every=0, progress=False, seed=2, schedule="constant",
        rollout_engine="vllm"))
    train = rows(out["metrics"])
    assert [r["rollout_pushes"] for r in train] == [1, 2, 3]
    assert all(r["pairs"] + r["pairs_identical"] == 8 for r in train)
    evals = rows(out["metrics"], "eval")
    assert evals and "sample_gold" in evals[-1]


def test_eval_and_critique_write_the_own_samplers_greedy_answers(vllm_tiny_dir, tmp_path):
    from alignkit.cli import run
    from alignkit.config import CritiqueConfig, EvalConfig

    def answers(engine):
        run(EvalConfig(policies=f"a={vllm_tiny_dir}", baseline="a", max_prompts=6,
                       max_adversarial=2, max_new_tokens=8, temperature=0.0, seed=5,
                       output=str(tmp_path / f"eval-{engine}"), rollout_engine=engine))
        lines = (tmp_path / f"eval-{engine}" / "samples.jsonl").read_text().splitlines()
        return [json.loads(ln) for ln in lines]

    assert answers("vllm") == answers("hf")

    def revised(engine):
        out = tmp_path / f"critique-{engine}.jsonl"
        run(CritiqueConfig(model=str(vllm_tiny_dir), max_prompts=3, max_new_tokens=8,
                           temperature=0.0, output=str(out), rollout_engine=engine))
        return out.read_text()

    assert revised("vllm") == revised("hf")


def test_best_of_n_and_label_sample_through_the_engine(vllm_tiny_dir, tmp_path):
    from alignkit.cli import run
    from alignkit.config import BestOfNConfig, LabelConfig, RewardConfig
    from tests.smoke.test_reward_cli import write_prefs

    run(RewardConfig(model=str(vllm_tiny_dir), data=str(write_prefs(tmp_path / "prefs.jsonl", 16)),
                     output=str(tmp_path / "rm"), max_steps=2, eval_fraction=0.0, save_every=0,
                     progress=False))

    def best_of(output):
        return run(BestOfNConfig(model=str(vllm_tiny_dir),
                                 reward_model=str(tmp_path / "rm" / "final"), n=4, max_prompts=6,
                                 max_new_tokens=8, output=str(tmp_path / output),
                                 rollout_engine="vllm"))["summary"]

    def kept(summary):
        return {k: v for k, v in summary.items() if k != "seconds"}

    first = best_of("bon")
    picked = [json.loads(ln) for ln in (tmp_path / "bon" / "best.jsonl").read_text().splitlines()]
    assert len(picked) == 6 and first["reward_best"] >= first["reward_single"]
    assert kept(best_of("bon2")) == kept(first)  # seeded: the same candidates again
    out = tmp_path / "labels.jsonl"
    run(LabelConfig(model=str(vllm_tiny_dir), max_prompts=4, num_responses=3, max_new_tokens=8,
                    output=str(out), rollout_engine="vllm"))
    labelled = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(labelled) == 4 and all(len(r["responses"]) == 3 for r in labelled)


def test_serve_answers_through_vllms_openai_server(vllm_tiny_dir):
    """``alignkit serve --rollout-engine vllm``: vLLM's server on a free port answers the
    official client with the greedy answer alignkit's own sampler writes, and wants the key."""
    from openai import OpenAI

    from alignkit.generation.simple import generate
    from alignkit.models.loading import load_model_and_tokenizer

    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "serve", "--model",
                             str(vllm_tiny_dir), "--port", "0", "--rollout-engine", "vllm",
                             "--model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "ALIGNKIT_API_KEY": "k1"})
    try:
        url, deadline = None, time.time() + 400
        for line in proc.stdout:
            if line.startswith("listening on "):
                url = line.split()[2]
            if line.startswith("ready"):
                break
            assert time.time() < deadline
        assert url and proc.poll() is None
        client = OpenAI(base_url=url, api_key="k1")
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=12,
            temperature=0.0)
        model, tok = load_model_and_tokenizer(str(vllm_tiny_dir))
        own = generate(model, tok, [[{"role": "user", "content": "hello there"}]], 12)[0]
        assert reply.choices[0].message.content.strip() == own.text
        with pytest.raises(Exception, match="401|[Uu]nauthori"):
            OpenAI(base_url=url, api_key="wrong").models.list()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
