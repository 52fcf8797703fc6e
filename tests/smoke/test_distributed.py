"""Data parallelism under torchrun (2 processes, gloo on CPU): the same command on 2 ranks
computes what it computes in one process. Each rank runs half of a step's micro-batches, the
losses are normalised by the whole step's counts, and DDP averages the gradients, so the per-step
losses and the final weights equal the one-process run's up to the order of float sums. Only the
first rank writes: one ``final/``, one ``metrics.jsonl`` with one row per step and global
counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.smoke

# rank-independent float sums differ from one process's in the last bits only
REL = 1e-5
# those sums are fp32's: under bf16 autocast (--precision auto on CUDA) the rounding depends on
# the batch layout (a rank's share against the whole batch) by far more than REL, and can even
# change a sampled token; every stage that has the option runs fp32 here
FP32_STAGES = {"sft", "reward", "ppo", "dpo", "online-dpo", "best-of-n", "eval"}


def run_ranks(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    if args and args[0] in FP32_STAGES and not any(a.startswith("--precision") for a in args):
        args = (*args, "--precision", "fp32")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}", "-m", "alignkit"] if nproc > 1
                else [sys.executable, "-m", "alignkit"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def rows(out: Path, split: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in (json.loads(ln) for ln in lines) if r["split"] == split]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def assert_same_training(one: Path, two: Path, keys: tuple[str, ...],
                         counts: tuple[str, ...], adam_lr: float | None = None,
                         abs_tol: float = 1e-7) -> None:
    """Per-step metrics within ``REL`` (``abs_tol`` absolute for metrics near 0, such as a
    KL), global counts equal, final weights within ``REL``. With ``adam_lr``: Adam moves a
    weight by about ``lr * g / |g|`` whatever the size of its gradient, so an entry whose
    gradient is zero up to rounding may step either way; the weights then agree within 1% of
    the largest movement Adam allows over the run (a lost or doubled micro-batch moves them by
    whole steps, and a wrong gradient scale shows in ``grad_norm``)."""
    a, b = rows(one), rows(two)
    assert [r["step"] for r in b] == [r["step"] for r in a] and len(a) >= 3
    for key in keys:
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=REL,
                                                     abs=abs_tol), key
    for key in counts:  # global counts, not one rank's
        assert [r[key] for r in b] == [r[key] for r in a], key
    wa, wb = weights(one / "final"), weights(two / "final")
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        if adam_lr is None:
            torch.testing.assert_close(wb[name], wa[name], rtol=REL, atol=1e-6, msg=name)
            continue
        steps = sum(r.get("optimizer_steps", 1) for r in a)
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0.01 * adam_lr * steps,
                                   msg=name)
    assert not list(two.glob("*rank*")) and [p.name for p in two.iterdir() if p.name == "final"]


def test_sft_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    common = ["sft", "--model", str(tiny_model_dir), "--data", "demo", "--max-steps", "4",
              "--batch-size", "4", "--grad-accum", "2", "--lr", "3e-3", "--eval-every", "2",
              "--save-every", "0", "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    proc = run_ranks(2, *common, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss", "grad_norm"),
                         ("tokens", "target_tokens"))
    # held-out evaluation as in one process, written once
    assert [r["loss"] for r in rows(tmp_path / "two", "eval")] == pytest.approx(
        [r["loss"] for r in rows(tmp_path / "one", "eval")], rel=REL)
    assert proc.stderr.count("saved ") == 1


def test_dpo_with_lora_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    from tests.smoke.test_dpo import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 32)
    common = ["dpo", "--model", str(tiny_model_dir), "--data", str(prefs), "--max-steps", "4",
              "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-2", "--lora",
              "--eval-fraction", "0.25", "--eval-every", "2", "--save-every", "0",
              "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "grad_norm", "reward_margin", "reward_accuracy"),
                         ("pairs", "tokens"))
    assert (tmp_path / "two" / "reference_logps.pt").is_file()


def test_reward_ensemble_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    from tests.smoke.test_reward_cli import write_prefs

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    common = ["reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--ensemble", "2",
              "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2", "--lr", "3e-3",
              "--eval-fraction", "0", "--save-every", "0", "--no-progress"]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, "--output", str(tmp_path / "two"))
    assert_same_training(tmp_path / "one", tmp_path / "two",
                         ("loss", "loss_member0", "loss_member1", "grad_norm"), ("pairs",))


def test_a_grad_accum_the_ranks_cannot_share_is_refused(tiny_model_dir, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "alignkit"]
    proc = subprocess.run([*launcher, "sft", "--model", str(tiny_model_dir), "--data", "demo",
                           "--max-steps", "2", "--grad-accum", "3", "--output",
                           str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "--grad-accum 3 must be a multiple of the 2 processes" in proc.stderr
    assert "Traceback" not in proc.stderr.split("alignkit sft: error")[0][-2000:]


def test_a_process_in_a_group_ends_without_the_interpreters_teardown(tmp_path):
    """A stage that leaves a process group ends the process at once with its exit code (a gloo
    thread alive during the interpreter's teardown can abort a finished process): what it
    printed is flushed, the user error keeps code 2, and no exit handler runs."""
    script = (
        "import atexit, socket, sys, torch.distributed as dist\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
        "dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, "
        "world_size=1)\n"
        "atexit.register(print, 'the interpreter tore down')\n"
        "print('in the group', end='')\n"
        "from alignkit.cli import main\n"
        f"sys.exit(main(['sft', '--data', '{tmp_path / 'missing.jsonl'}', '--max-steps', '1', "
        f"'--output', '{tmp_path / 'out'}']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "in the group"
    assert "alignkit sft: error" in proc.stderr and "missing.jsonl" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_token_budget_micro_batches_train_the_same_steps(tiny_model_dir, tmp_path):
    """``--max-tokens-per-micro-batch`` changes how a step's examples are cut (by padded
    tokens, shared out evenly over the processes), not what the step computes: one process with
    it, and two with it and a --grad-accum the processes could not share by count, equal the
    plain run (the batches differ, so the float sums do: weights within Adam's tolerance,
    see ``assert_same_training``)."""
    common = ["sft", "--model", str(tiny_model_dir), "--data", "demo", "--max-steps", "3",
              "--batch-size", "6", "--lr", "3e-3", "--eval-every", "0", "--save-every", "0",
              "--no-progress"]
    run_ranks(1, *common, "--grad-accum", "1", "--output", str(tmp_path / "plain"))
    run_ranks(1, *common, "--grad-accum", "1", "--max-tokens-per-micro-batch", "120",
              "--output", str(tmp_path / "budget"))
    run_ranks(2, *common, "--grad-accum", "1", "--max-tokens-per-micro-batch", "120",
              "--output", str(tmp_path / "two"))
    for out in ("budget", "two"):
        assert_same_training(tmp_path / "plain", tmp_path / out, ("loss", "grad_norm"),
                             ("tokens", "target_tokens"), adam_lr=3e-3)
    # the plain run's step is one micro-batch of 6; the budget cut each into several
    assert [r["micro_batches"] for r in rows(tmp_path / "plain")] == [1, 1, 1]
    assert all(r["micro_batches"] >= 3 for r in rows(tmp_path / "budget"))
    assert all(r["micro_batches"] >= 3 for r in rows(tmp_path / "two"))


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, tmp_path_factory):
    from tests.smoke.test_reward_cli import write_prefs

    work = tmp_path_factory.mktemp("rm")
    prefs = write_prefs(work / "prefs.jsonl", 32)
    run_ranks(1, "reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
              str(work / "rm"), "--max-steps", "3", "--lr", "0.003", "--eval-fraction", "0",
              "--no-progress")
    return work / "rm" / "final"


@pytest.mark.parametrize("estimator", [
    # GAE, full fine-tuning (a frozen reference copy), shared value head, 2 PPO epochs,
    # the held-out monitor
    ["--advantage", "gae", "--ppo-epochs", "2", "--eval-every", "2"],
    # GRPO with LoRA (the adapter-free reference), 2 samples per prompt, the KL as a loss term
    ["--advantage", "grpo", "--samples-per-prompt", "2", "--lora", "--lr", "1e-2",
     "--eval-every", "0"],
], ids=["gae", "grpo"])
def test_ppo_on_two_ranks_equals_one_process(tiny_model_dir, reward_model, tmp_path, estimator):
    """Each rank samples, scores and runs the no-grad passes for half of a batch's prompts
    (every response seeded by its place in the batch, so both runs draw the same tokens), the
    shares are gathered, advantages and whitening are computed on the whole batch, and each rank
    trains on every second micro-batch of each minibatch. Each rank scores its own share, so a
    reward differs from the one-process score in the last bits (its batch is padded otherwise);
    GRPO's division by a group's spread magnifies that, hence 1e-5 absolute on the metrics."""
    from tests.smoke.test_ppo import write_prompts

    prompts = write_prompts(tmp_path / "p.jsonl", 16)
    common = ["ppo", "--model", str(tiny_model_dir), "--reward-model", str(reward_model),
              "--data", str(prompts), "--eval-data", str(prompts), "--eval-prompts", "4",
              "--no-gold", "--max-steps", "3", "--batch-size", "4", "--minibatch-size", "4",
              "--grad-accum", "2", "--max-new-tokens", "8", "--lr", "3e-3", "--adaptive-kl",
              "--kl-target", "0.5", "--save-every", "0", "--no-progress", *estimator]
    run_ranks(1, *common, "--output", str(tmp_path / "one"))
    run_ranks(2, *common, "--output", str(tmp_path / "two"))
    keys = ("score", "kl", "kl_coef", "policy_loss", "response_length", "grad_norm", "entropy")
    if "gae" in estimator:
        keys += ("value_loss", "explained_variance")
    lr = float(common[common.index("--lr") + 1] if "--lr" not in estimator
               else estimator[estimator.index("--lr") + 1])
    assert_same_training(tmp_path / "one", tmp_path / "two", keys, ("rollouts", "optimizer_steps"),
                         adam_lr=lr, abs_tol=1e-5)
    if "gae" in estimator:  # the monitor read the same held-out answers; one best/ written
        one, two = rows(tmp_path / "one", "eval"), rows(tmp_path / "two", "eval")
        assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 2, 3]
        # the KL (nats per answer) is a small difference of log-probs: 1e-5 absolute
        for key in ("proxy", "kl", "response_length"):
            assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=REL,
                                                          abs=1e-5), key
        assert (tmp_path / "two" / "best" / "value_head.safetensors").is_file()


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_at_another_world_size_continues_the_same_run(tiny_model_dir, tmp_path, first,
                                                             then):
    """A checkpoint holds the whole state whatever the world size that wrote it: a run killed
    after step 2 on ``first`` processes, resumed on ``then``, has the per-step losses and the
    final weights of the uninterrupted one-process run."""
    common = ["sft", "--model", str(tiny_model_dir), "--data", "demo", "--max-steps", "4",
              "--batch-size", "4", "--grad-accum", "2", "--lr", "3e-3", "--eval-every", "0",
              "--no-progress"]
    run_ranks(1, *common, "--save-every", "0", "--output", str(tmp_path / "whole"))
    split = tmp_path / "split"
    run_ranks(first, *common, "--save-every", "2", "--keep-checkpoints", "0",
              "--output", str(split))
    # as if killed after the checkpoint of step 2: the later metrics and final/ never written
    import shutil

    shutil.rmtree(split / "final")
    kept = [ln for ln in (split / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["step"] <= 2]
    (split / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    proc = run_ranks(then, *common, "--save-every", "2", "--keep-checkpoints", "0", "--resume",
                     "--output", str(split))
    assert "resuming from" in proc.stderr
    assert_same_training(tmp_path / "whole", split, ("loss", "grad_norm"), ("tokens",))


@pytest.mark.parametrize("stage", ["score", "critique", "demo"])
def test_stages_that_do_not_shard_yet_refuse_several_processes(stage, tmp_path, capsys,
                                                               monkeypatch):
    """Under torchrun a stage that is not data-parallel would run N copies writing the same
    files; it stops with one clear line instead, before anything is written."""
    from alignkit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    assert main([stage, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignkit {stage}: error: launched as 2 processes")
    assert "launch it without torchrun" in err and not out.exists()
