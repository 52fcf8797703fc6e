"""FSDP2 (``--distributed fsdp``) under torchrun, 2 processes, gloo on CPU: each rank holds half
of every parameter, gradient and optimiser state, and the run computes what one process
computes. The first step's loss is exactly the one-process loss (the same micro-batches through
the same weights, the sums in float64); after that the reduce-scattered gradients differ from one
process's in the last bits of the float sums, so the later losses, gradient norms and the final
weights agree within ``REL``. Checkpoints are sharded (``torch.distributed.checkpoint``) and
resume at another world size and strategy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.smoke.test_distributed import (REL, assert_same_training, reward_model,  # noqa: F401
                                         rows, run_ranks)

pytestmark = pytest.mark.smoke

FSDP = ("--distributed", "fsdp")


def sft_args(model: Path) -> list[str]:
    # a checkpoint after step 2 only (the run's last step writes final/ instead)
    return ["sft", "--model", str(model), "--data", "demo", "--max-steps", "4", "--batch-size",
            "4", "--grad-accum", "2", "--lr", "3e-3", "--eval-every", "2", "--save-every", "2",
            "--keep-checkpoints", "0", "--no-progress"]


@pytest.fixture(scope="module")
def sft_runs(tiny_model_dir, tmp_path_factory):
    """The same sft run in one process and under FSDP on 2 ranks, there with gradient
    checkpointing (each layer's recomputation in the backward gathers that layer again; it
    computes the same) and --fsdp-cpu-offload (nothing changes in a run on the CPU):
    (folder, FSDP stderr)."""
    root = tmp_path_factory.mktemp("fsdp-sft")
    run_ranks(1, *sft_args(tiny_model_dir), "--output", str(root / "one"))
    proc = run_ranks(2, *sft_args(tiny_model_dir), *FSDP, "--gradient-checkpointing",
                     "--fsdp-cpu-offload", "--output", str(root / "fsdp"))
    return root, proc.stderr


def killed_after_step_2(run: Path, into: Path) -> Path:
    """A copy of ``run`` as if killed right after its checkpoint of step 2."""
    shutil.copytree(run, into)
    shutil.rmtree(into / "final")
    kept = [ln for ln in (into / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["step"] <= 2]
    (into / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    return into


def test_sft_with_gradient_checkpointing_under_fsdp_equals_one_process(sft_runs):
    root, stderr = sft_runs
    one, fsdp = root / "one", root / "fsdp"
    assert_same_training(one, fsdp, ("loss", "grad_norm"), ("tokens", "target_tokens"))
    assert rows(fsdp, "setup")[0]["gradient_checkpointing"] is True
    assert rows(fsdp)[0]["loss"] == rows(one)[0]["loss"]
    # held-out evaluation (outside the wrapper's forward) as in one process, written once
    assert [r["loss"] for r in rows(fsdp, "eval")] == pytest.approx(
        [r["loss"] for r in rows(one, "eval")], rel=REL)
    assert stderr.count("saved ") == 1
    # each rank wrote its shards, the first the rest; nothing half-written is left behind
    ckpt = fsdp / "checkpoints" / "step-2"
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp",
                                                                           "__1_0.distcp"]
    assert not (ckpt / "trainable.safetensors").exists() and (ckpt / "state.json").is_file()
    assert [p.name for p in (fsdp / "checkpoints").iterdir()] == ["step-2"]


@pytest.mark.parametrize("first, then, strategy", [("fsdp", 1, "fsdp"), ("one", 2, "fsdp"),
                                                   ("fsdp", 2, "ddp")])
def test_resume_across_world_sizes(sft_runs, tiny_model_dir, tmp_path, first, then, strategy):
    """Killed after step 2 under FSDP on 2 ranks and resumed in one process (the shards read
    into whole tensors), or the reverse (whole tensors sharded as they load; a DDP checkpoint is
    the same whole tensors), or under DDP: the per-step losses and the final weights of the
    uninterrupted run."""
    root, _ = sft_runs
    split = killed_after_step_2(root / first, tmp_path / "split")
    proc = run_ranks(then, *sft_args(tiny_model_dir), "--distributed", strategy, "--resume",
                     "--output", str(split))
    assert "resuming from" in proc.stderr and "assuming the intent" not in proc.stderr
    assert_same_training(root / "one", split, ("loss", "grad_norm"), ("tokens",))


def test_dpo_with_lora_under_fsdp_equals_one_process(tiny_model_dir, tmp_path):
    """LoRA: frozen base weights and trainable adapters in one sharded layer. The held-out
    evaluation runs outside the wrapper's forward, and its sampling gives each rank a share of
    the prompts, sampled to their own lengths."""
    from tests.smoke.test_distributed_sampling import write_prompts
    from tests.smoke.test_dpo import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    common = ["dpo", "--model", str(tiny_model_dir), "--data", str(prefs), "--max-steps", "4",
              "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-2", "--lora",
              "--eval-fraction", "0.25", "--eval-every", "2", "--save-every", "0",
              "--sample-prompts", str(prompts), "--max-new-tokens", "8", "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, *FSDP, "--output", str(tmp_path / "two"))
    # Adam's lr-sized moves carry the shards' rounding into the adapters (see adam_lr)
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "grad_norm", "reward_margin", "reward_accuracy"),
                         ("pairs", "tokens"), adam_lr=1e-2)
    assert rows(tmp_path / "two")[0]["loss"] == rows(tmp_path / "one")[0]["loss"]
    evals = [rows(tmp_path / d, "eval") for d in ("one", "two")]
    for key in ("loss", "sample_kl", "sample_response_length"):
        assert [r[key] for r in evals[1]] == pytest.approx([r[key] for r in evals[0]], rel=REL,
                                                           abs=1e-6), key


def test_reward_ensemble_under_fsdp_equals_one_process(tiny_model_dir, tmp_path):
    """Two members with their own backbones and batches: a member's layers sit out the other's
    micro-batches, and its accumulated gradients are reduced at the step's last one."""
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    common = ["reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--ensemble", "2",
              "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2", "--lr", "3e-3",
              "--eval-fraction", "0", "--save-every", "0", "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    proc = run_ranks(2, *common, *FSDP, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "loss_member0", "loss_member1", "grad_norm"), ("pairs",))
    # the normalisation after training (outside the wrapper's forward) as in one process
    spec = [json.loads((tmp_path / d / "final" / "reward_config.json").read_text())
            for d in ("one", "two")]
    for key in ("offset", "scale"):
        assert sum(spec[1][key], []) == pytest.approx(sum(spec[0][key], []), rel=REL)
    assert "returned a view tensor" not in proc.stderr


def test_reward_lora_under_fsdp_equals_one_process(tiny_model_dir, tmp_path):
    """--lora on the members' backbones: frozen base weights beside trainable adapters in each
    sharded layer, and the final folders' folded weights (W + scale * B @ A) gathered from the
    shards equal one process's."""
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    common = ["reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--ensemble", "2",
              "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-2",
              "--lora", "--lora-r", "4", "--lora-alpha", "8", "--eval-fraction", "0",
              "--save-every", "0", "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, *FSDP, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "loss_member0", "loss_member1", "grad_norm"), ("pairs",),
                         adam_lr=1e-2)
    assert rows(tmp_path / "two")[0]["loss"] == rows(tmp_path / "one")[0]["loss"]
    assert rows(tmp_path / "two", "setup")[0]["trainable_params"] == \
        rows(tmp_path / "one", "setup")[0]["trainable_params"]


def test_fsdp_flag_mistakes_are_one_line(tmp_path, capsys):
    import torch

    from alignkit.cli import main
    from alignkit.errors import UserError
    from alignkit.training.distributed import shard
    from alignkit.utils.distributed import World

    out = tmp_path / "out"
    assert main(["sft", "--fsdp-cpu-offload", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--fsdp-cpu-offload applies to --distributed fsdp only")
    assert not out.exists()
    assert main(["sft", "--distributed", "fsdp", "--max-tokens-per-micro-batch", "512",
                 "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--max-tokens-per-micro-batch works with --distributed ddp (under fsdp every process "
        "must run the same number of micro-batches)")
    assert not out.exists()
    with pytest.raises(UserError, match="no Hugging Face decoder layers to shard"):
        shard(torch.nn.Linear(2, 2), "cpu", World(0, 2, 0), what="linear")


@pytest.mark.parametrize("estimator", [
    # GAE with LoRA (the adapter-free reference), the value head on the policy, the monitor
    # (best/ gathered from the shards), 2 PPO epochs
    ["--advantage", "gae", "--lora", "--lr", "1e-2", "--ppo-epochs", "2", "--eval-every", "2",
     "--eval-data"],
    # GRPO, full fine-tuning (the frozen reference is a whole copy on each process)
    ["--advantage", "grpo", "--samples-per-prompt", "2", "--lr", "3e-3", "--eval-every", "0",
     "--eval-data", ""],
], ids=["gae-lora", "grpo-full"])
def test_ppo_under_fsdp_equals_one_process(tiny_model_dir, reward_model, tmp_path, estimator):
    """Sampling and the no-grad passes run on the gathered weights (each process its share of
    the prompts, to its own lengths), the update on the shards; 3 micro-batches per minibatch
    over 2 processes, so one process runs a zero-weighted pass to keep the layer gathers in
    lockstep."""
    from tests.smoke.test_ppo import write_prompts

    prompts = write_prompts(tmp_path / "p.jsonl", 16)
    if estimator[-1] == "--eval-data":
        estimator = [*estimator, str(prompts)]
    common = ["ppo", "--model", str(tiny_model_dir), "--reward-model", str(reward_model),
              "--data", str(prompts), "--eval-prompts", "4", "--no-gold", "--max-steps", "3",
              "--batch-size", "3", "--minibatch-size", "6", "--grad-accum", "3",
              "--max-new-tokens", "8", "--adaptive-kl", "--kl-target", "0.5", "--save-every",
              "0", "--no-progress", *estimator]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, *FSDP, "--output", str(tmp_path / "two"))
    lr = float(estimator[estimator.index("--lr") + 1])
    keys = ("score", "kl", "policy_loss", "response_length", "grad_norm", "entropy")
    assert_same_training(tmp_path / "one", tmp_path / "two", keys,
                         ("rollouts", "optimizer_steps"), adam_lr=lr, abs_tol=1e-5)
    if "gae" in estimator:
        assert [r["step"] for r in rows(tmp_path / "two", "eval")] == [0, 2, 3]
        assert (tmp_path / "two" / "best" / "value_head.safetensors").is_file()


def test_online_dpo_under_fsdp_equals_one_process(tiny_model_dir, tmp_path):
    """Rounds sampled and scored by the reference on the gathered weights, DPO steps on the
    shards; a step of one group leaves one process with an empty pass (still one forward and
    backward, as FSDP's lockstep gathers need)."""
    from tests.smoke.test_ppo import write_prompts

    prompts = write_prompts(tmp_path / "p.jsonl", 10)
    common = ["online-dpo", "--model", str(tiny_model_dir), "--data", str(prompts),
              "--labeler", "simulated", "--lora", "--rounds", "3", "--prompts-per-round", "5",
              "--samples-per-prompt", "3", "--batch-size", "4", "--lr", "1e-3",
              "--max-new-tokens", "8", "--eval-every", "0", "--save-every", "0", "--seed", "4",
              "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, *FSDP, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "grad_norm", "sample_reward", "response_length"),
                         ("pairs", "pairs_identical"), adam_lr=1e-3)
    assert any(r["pairs"] % 4 == 1 for r in rows(tmp_path / "two"))
