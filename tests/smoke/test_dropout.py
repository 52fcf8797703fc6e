"""Dropout is off while training (unless ``--keep-dropout``) in PPO, DPO and online DPO, on a tiny
Llama whose config asks for attention dropout 0.1 (the only dropout a Llama has).

Rollouts, "old" log-probs, the reference and the DPO reference log-probs come from eval-mode
forwards; the training forward runs in train mode. With a learning rate that cannot move the
weights, every pair of forwards with dropout off computes the same function: the PPO ratio is 1,
the KL to the reference 0 and the DPO loss ln 2 (implicit rewards 0). Each test also runs with
``keep_dropout=True`` and sees those numbers move, so it can fail.

The learning rate must be > 0 (``--lr`` range check), so the tests use ``LR = 1e-30``: AdamW's
first steps move a weight by about lr, far below the float32 spacing of any nonzero weight (a
weight of 1e-6 has spacing 1e-13), and its decoupled decay multiplies by 1 - lr, which rounds
to 1; a weight that starts at exactly 0 (LoRA B, the value head) becomes about 1e-30, and its
contribution vanishes in the sums it enters. Every run is fp32 (``--precision auto`` is bf16 on
CUDA): bf16 rounds the DPO reference pass, batched otherwise than the training forward, to
log-probs that differ by far more than these checks allow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.smoke.test_ppo import rows, space_share, write_prompts

pytestmark = pytest.mark.smoke

LN2 = math.log(2.0)  # 0.693147: -log sigmoid(0), the DPO loss when policy == reference
LR = 1e-30


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    out = save_tiny_model(tmp_path_factory.mktemp("dropout") / "model")
    config = json.loads((out / "config.json").read_text())
    assert config["attention_dropout"] == 0.0
    config["attention_dropout"] = 0.1
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


# ----------------------------------------------------------------------------- PPO


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_ppo_first_ratio_is_one_and_kl_zero_without_dropout(dropout_model_dir, tmp_path, lora,
                                                            ppo_epochs):
    """One rollout batch of 8, one minibatch of all 8. With ``ppo_epochs=1`` the training forward
    is also the "old" one (``single_pass``), so the ratio is 1 whatever dropout does and
    the KL (train-mode policy against the eval-mode reference) is what dropout breaks. With two
    epochs the old log-probs come from a separate eval-mode pass, so the KL (eval against eval)
    is 0 either way and the ratio (train-mode against eval-mode) is what dropout breaks."""
    from alignkit.cli import run
    from alignkit.config import PPOConfig
    from alignkit.training.ppo import single_pass

    prompts = write_prompts(tmp_path / "p.jsonl", 8)

    def first_row(keep_dropout: bool) -> dict:
        cfg = PPOConfig(model=str(dropout_model_dir), reward_model=None, data=str(prompts),
                        eval_data=None, lora=lora, batch_size=8, minibatch_size=8,
                        ppo_epochs=ppo_epochs, max_steps=1, max_new_tokens=10, lr=LR,
                        keep_dropout=keep_dropout, output=str(tmp_path / f"run-{keep_dropout}"),
                        save_every=0, progress=False, seed=4, precision="fp32")
        assert single_pass(cfg) == (ppo_epochs == 1)
        return rows(run(cfg, reward_fn=space_share)["metrics"])[0]

    off = first_row(keep_dropout=False)
    assert off["step"] == 1
    assert off["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert off["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert off["clipfrac"] == 0.0
    assert off["kl"] == pytest.approx(0.0, abs=1e-6)
    assert off["kl_k3"] == pytest.approx(0.0, abs=1e-6)

    # with dropout kept (observed: one epoch, kl 0.0197 full / -0.0162 LoRA, kl_k3 0.0011 /
    # 0.0013; two epochs, ratio 1.000146 / 0.999478, approx_kl 1.1e-4 / 9.1e-5): the attention
    # weights of a tiny random model are nearly uniform, so dropping some moves little, but far
    # more than the float noise of the runs without dropout (all exactly 1 and 0 here)
    on = first_row(keep_dropout=True)
    if ppo_epochs == 1:
        # the ratio compares the training forward with itself; the reference is eval-mode
        assert on["ratio"] == pytest.approx(1.0, abs=1e-6)
        assert abs(on["kl"]) > 1e-3 and on["kl_k3"] > 1e-4
    else:
        # old and reference log-probs are both eval-mode; the training forward drops attention
        assert on["kl"] == pytest.approx(0.0, abs=1e-6)
        assert abs(on["ratio"] - 1.0) > 1e-5 and on["approx_kl"] > 1e-5


# ----------------------------------------------------------------------------- DPO


def write_pairs(path: Path, n: int = 8) -> Path:
    from alignkit.data.readers import read_records

    recs = [r.fields for r in read_records("demo-prompts")][:n]
    path.write_text("".join(json.dumps({"prompt": r["prompt"],
                                        "chosen": "A short and helpful answer.",
                                        "rejected": f"Something else entirely, number {i}."})
                            + "\n" for i, r in enumerate(recs)))
    return path


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_first_loss_is_ln2_without_dropout(dropout_model_dir, tmp_path, lora):
    """The reference log-probs are cached from an eval-mode forward before training; with ``LR``
    and dropout off the step-1 policy log-probs equal them: every implicit reward
    beta * (log pi - log pi_ref) is 0 and the loss -log sigmoid(0) = ln 2."""
    from alignkit.config import DPOConfig
    from alignkit.cli import run

    pairs = write_pairs(tmp_path / "pairs.jsonl")

    def first_row(keep_dropout: bool) -> dict:
        cfg = DPOConfig(model=str(dropout_model_dir), data=str(pairs), lora=lora,
                        eval_fraction=0.0, sample_prompts=None, batch_size=8, max_steps=1,
                        lr=LR, keep_dropout=keep_dropout, save_every=0, progress=False,
                        precision="fp32", output=str(tmp_path / f"run-{keep_dropout}"))
        return rows(run(cfg)["metrics"])[0]

    off = first_row(keep_dropout=False)
    assert off["step"] == 1 and off["pairs"] == 8
    assert off["loss"] == pytest.approx(LN2, abs=1e-6)
    for key in ("rewards_chosen", "rewards_rejected", "reward_margin"):
        assert off[key] == pytest.approx(0.0, abs=1e-6), key

    # with dropout kept (observed: loss 0.694352 full / 0.691482 LoRA, reward margin -0.00238 /
    # 0.00336 at beta 0.1)
    on = first_row(keep_dropout=True)
    assert abs(on["loss"] - LN2) > 1e-4
    assert abs(on["rewards_chosen"]) > 1e-4 and abs(on["reward_margin"]) > 1e-4


# ----------------------------------------------------------------------------- online DPO


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_online_dpo_first_round_loss_is_ln2_without_dropout(dropout_model_dir, tmp_path, lora):
    """The round's reference log-probs come from the frozen eval-mode copy (or the adapter-free
    policy, also in eval mode); with ``LR`` and dropout off the round's DPO loss is ln 2."""
    from alignkit.config import OnlineDPOConfig
    from alignkit.cli import run

    prompts = write_prompts(tmp_path / "p.jsonl", 8)

    def first_round(keep_dropout: bool) -> dict:
        cfg = OnlineDPOConfig(model=str(dropout_model_dir), reward_model=None,
                              labeler="simulated", data=str(prompts), lora=lora, rounds=1,
                              prompts_per_round=8, samples_per_prompt=2, batch_size=4,
                              dpo_epochs=1, lr=LR, max_new_tokens=10, sample_prompts=None,
                              eval_every=0, save_every=0, keep_dropout=keep_dropout,
                              progress=False, seed=2, precision="fp32",
                              output=str(tmp_path / f"run-{keep_dropout}"))
        return rows(run(cfg)["metrics"])[0]

    off = first_round(keep_dropout=False)
    assert off["step"] == 1 and off["pairs"] >= 4  # distinct answers for most prompts
    assert off["loss"] == pytest.approx(LN2, abs=1e-6)
    assert off["reward_margin"] == pytest.approx(0.0, abs=1e-6)

    # with dropout kept the pairs' margins partly cancel in the mean (observed: loss - ln 2 =
    # 1.1e-4 full / -6.0e-6 LoRA, against 2e-9 without dropout), hence a bound of a thousand
    # times the dropout-free run's rounding
    on = first_round(keep_dropout=True)
    assert abs(on["loss"] - LN2) > 1e-6 and abs(on["reward_margin"]) > 1e-6
