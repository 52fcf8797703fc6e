"""Fault injection: every resumable stage (sft, a reward ensemble, dpo, ppo, online-dpo) is
killed with SIGKILL three times at seeded random points -- after a random number of metrics
rows plus a random delay, so kills land in training steps, evaluations, checkpoint writes and
the metrics rewrite of a resume -- and resumed with --resume each time, then to the end. The
result is bit-identical to an uninterrupted run: final weights, and every training and
evaluation row's numbers (rows once each, in order)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, usable_cores
from tests.smoke.test_online_dpo import space_reward_model  # noqa: F401 (fixture)
from tests.smoke.test_ppo import tiny_reward_model, write_prompts  # noqa: F401 (fixture)

pytestmark = pytest.mark.smoke

KILLS = 3


def stage_args(stage: str, model: Path, work: Path, rm: Path | None) -> list[str]:
    from tests.smoke.test_dpo import write_prefs as dpo_prefs
    from tests.smoke.test_reward_cli import write_prefs as reward_prefs

    run = ["--save-every", "1", "--keep-checkpoints", "2", "--no-progress"]
    if stage == "sft":
        return ["sft", "--model", str(model), "--data", "demo", "--max-steps", "8",
                "--batch-size", "4", "--lr", "3e-3", "--eval-every", "3", *run]
    if stage == "reward":
        return ["reward", "--model", str(model), "--data",
                str(reward_prefs(work / "prefs.jsonl", 32)), "--ensemble", "2",
                "--max-steps", "8", "--batch-size", "4", "--lr", "3e-3", "--eval-every", "3",
                *run]
    if stage == "dpo":  # with gradient accumulation: a kill can land between micro-steps
        return ["dpo", "--model", str(model), "--data", str(dpo_prefs(work / "prefs.jsonl", 32)),
                "--max-steps", "8", "--batch-size", "4", "--grad-accum", "2", "--lr", "2e-3",
                "--eval-every", "3", *run]
    prompts = write_prompts(work / "p.jsonl", 16)
    if stage == "ppo":
        return ["ppo", "--model", str(model), "--reward-model", str(rm), "--data", str(prompts),
                "--eval-data", str(prompts), "--eval-prompts", "4", "--no-gold",
                "--max-steps", "6", "--batch-size", "4", "--minibatch-size", "2",
                "--max-new-tokens", "8", "--eval-every", "3", "--adaptive-kl", "--lr", "3e-3",
                *run]
    return ["online-dpo", "--model", str(model), "--reward-model", str(rm), "--data",
            str(prompts), "--rounds", "5", "--prompts-per-round", "4", "--samples-per-prompt",
            "3", "--batch-size", "2", "--lr", "3e-3", "--max-new-tokens", "6",
            "--sample-count", "3", "--eval-every", "3", *run]


def kill_after(args: list[str], metrics: Path, rows: int, delay: float, timeout: float = 300):
    """Start the run and SIGKILL it once ``metrics`` has ``rows`` lines and ``delay`` seconds
    more have passed (or let it end, if it ends first)."""
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None:
        lines = metrics.read_bytes().count(b"\n") if metrics.is_file() else 0
        if lines >= rows:
            time.sleep(delay)
            break
        assert time.time() < deadline, "the run neither progressed nor ended"
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def numbers(folder: Path) -> list[dict]:
    """Every training and evaluation row, all but the clock's readings."""
    rows = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")}
            for r in rows if r["split"] in ("train", "eval")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((folder / "final").rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo", "online-dpo"])
def test_killed_anywhere_resumes_bit_exactly(stage, tiny_model_dir, tiny_reward_model,  # noqa: F811
                                             space_reward_model, tmp_path):  # noqa: F811
    rm = space_reward_model if stage == "online-dpo" else tiny_reward_model
    args = stage_args(stage, tiny_model_dir, tmp_path, rm)
    whole = tmp_path / "whole"
    done = run_cli(*args, "--output", str(whole))
    assert done.returncode == 0, done.stderr[-3000:]
    total_rows = (whole / "metrics.jsonl").read_text().count("\n")

    rng = random.Random(f"kill-{stage}")
    killed = tmp_path / "killed"
    points = sorted(rng.randint(1, total_rows - 1) for _ in range(KILLS))
    for rows in points:
        resume = ["--resume"] if killed.exists() else []
        kill_after([*args, "--output", str(killed), *resume], killed / "metrics.jsonl", rows,
                   rng.uniform(0.0, 0.5))
    final = run_cli(*args, "--output", str(killed), "--resume")
    assert final.returncode == 0, final.stderr[-3000:]

    got, want = numbers(killed), numbers(whole)
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    assert got == want, [(w, g) for w, g in zip(want, got) if w != g][:3]
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]

    if stage == "sft":
        # each checkpoint records the process's CPU threads (CPU reductions split their work by
        # thread); a resume with another count says that its numbers may then differ
        last = max(killed.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
        threads = json.loads((last / "state.json").read_text())["torch_threads"]
        assert threads == torch.get_num_threads()  # the CLI's default: this process's count
        # another count: one fewer, or two where the run had one (a parallel test worker's
        # share of the cores); torch takes no more threads than cores
        count = threads - 1 if threads > 1 else min(2, usable_cores())
        other = run_cli(*args, "--output", str(killed), "--resume",
                        env={"OMP_NUM_THREADS": str(count)})
        assert other.returncode == 0, other.stderr[-3000:]
        warned = (f"the checkpoint was written with {threads} CPU threads and this process has "
                  f"{count}") in other.stderr
        assert warned == (count != threads), other.stderr[-3000:]
