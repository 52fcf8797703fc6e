"""The sampling stages under torchrun (2 processes, gloo on CPU) compute what one process
computes: each rank samples and scores its share of the prompts (every response drawn from its own
seeded stream, so the tokens do not depend on which process draws them), the results are gathered
in prompt order and the first rank alone writes. label, eval and best-of-n write the files one
process writes; online DPO (each rank samples, labels and scores the reference for its share of a
round, each DPO step's groups shared out, a rank left without one joining the gradient average
with an empty pass) has the per-step metrics and final weights of one process, and resumes from
its checkpoint in one process. The one-process runs go through ``alignkit.cli.run`` in this
process (no second interpreter start). Every run is fp32 (``test_distributed.FP32_STAGES``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.smoke.test_distributed import REL, assert_same_training, rows, run_ranks
from tests.smoke.test_ppo import write_prompts

pytestmark = pytest.mark.smoke


def records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def close(a, b, path: str = "") -> None:
    """Equal structures, floats within ``REL`` (a batch of other composition rounds its sums
    differently)."""
    if isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=REL, abs=1e-6), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def only_main_wrote(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if "rank" in p.name or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, tmp_path_factory):
    from alignkit.cli import run
    from alignkit.config import RewardConfig
    from tests.smoke.test_reward_cli import write_prefs

    root = tmp_path_factory.mktemp("rm")
    run(RewardConfig(model=str(tiny_model_dir), data=str(write_prefs(root / "p.jsonl", 16)),
                     output=str(root / "rm"), max_steps=2, eval_fraction=0.0, save_every=0,
                     progress=False))
    return root / "rm" / "final"


def test_label_with_the_panel_on_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    from alignkit.cli import run
    from alignkit.config import LabelConfig

    prompts = write_prompts(tmp_path / "p.jsonl", 7)  # shares of 3 and 4 prompts
    common = ["--model", str(tiny_model_dir), "--data", str(prompts), "--num-responses", "3",
              "--max-new-tokens", "8", "--batch-size", "4", "--seed", "3"]
    run(LabelConfig(model=str(tiny_model_dir), data=str(prompts), num_responses=3,
                    max_new_tokens=8, batch_size=4, seed=3, output=str(tmp_path / "one.jsonl")))
    proc = run_ranks(2, "label", *common, "--output", str(tmp_path / "two.jsonl"))
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert ((tmp_path / "two.report.json").read_text()
            == (tmp_path / "one.report.json").read_text())
    assert len(records(tmp_path / "two.jsonl")) == 7 and proc.stdout.count("labelled ") == 1
    only_main_wrote(tmp_path)


def test_label_with_a_judge_on_two_ranks_equals_one_process_and_resumes(tmp_path):
    """Each rank judges its share, appending to its own part file (the first: to the output);
    the finished file is the one-process file, and a killed run's part files are folded in by a
    resumed run at another number of processes."""
    from alignkit.cli import run
    from alignkit.config import LabelConfig
    from alignkit.judges.labelling import part_file

    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say something about {i}.", "responses": [
        f"A fine answer about {i}, with detail.", "No.", f"Something {i}"]}) + "\n"
        for i in range(9)))
    settings = dict(data=str(data), judge="gold", format="rankings", agreement="gold")
    run(LabelConfig(**settings, output=str(tmp_path / "one.jsonl")))
    run_ranks(2, "label", "--data", str(data), "--judge", "gold", "--format", "rankings",
              "--output", str(tmp_path / "two.jsonl"))
    want = (tmp_path / "one.jsonl").read_text()
    assert (tmp_path / "two.jsonl").read_text() == want and len(want.splitlines()) == 9
    only_main_wrote(tmp_path)
    # as if a 2-process run was killed: records on both sides, a torn line in the part file
    killed = tmp_path / "killed.jsonl"
    lines = want.splitlines(keepends=True)
    killed.write_text("".join(lines[:2]))
    part_file(killed, 1).write_text("".join(lines[5:7]) + lines[7][:20])
    run(LabelConfig(**settings, output=str(killed), resume=True))
    assert killed.read_text() == want
    assert not part_file(killed, 1).exists()


def test_best_of_n_on_two_ranks_equals_one_process(tiny_model_dir, reward_model, tmp_path):
    from alignkit.cli import run
    from alignkit.config import BestOfNConfig

    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    run(BestOfNConfig(model=str(tiny_model_dir), reward_model=str(reward_model),
                      data=str(prompts), n=3, max_new_tokens=8, batch_size=4,
                      precision="fp32", output=str(tmp_path / "one")))
    # torchrun's own parser takes --n for an abbreviation of its options: n comes from a file
    (tmp_path / "n.yaml").write_text("n: 3\n")
    run_ranks(2, "best-of-n", "--config", str(tmp_path / "n.yaml"), "--model",
              str(tiny_model_dir), "--reward-model", str(reward_model), "--data", str(prompts),
              "--max-new-tokens", "8", "--batch-size", "4", "--output", str(tmp_path / "two"))
    one, two = records(tmp_path / "one" / "best.jsonl"), records(tmp_path / "two" / "best.jsonl")
    assert [r["candidates"] for r in two] == [r["candidates"] for r in one]  # the same tokens
    close(one, two)
    summary = [{k: v for k, v in r.items() if k not in ("seconds", "time")}
               for r in records(tmp_path / "one" / "metrics.jsonl")]
    close(summary, [{k: v for k, v in r.items() if k not in ("seconds", "time")}
                    for r in records(tmp_path / "two" / "metrics.jsonl")])
    only_main_wrote(tmp_path / "two")


def test_eval_on_two_ranks_equals_one_process(tiny_model_dir, reward_model, tmp_path):
    from alignkit.cli import run
    from alignkit.config import EvalConfig
    from alignkit.models.tiny import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=1)
    policies = f"base={tiny_model_dir},other={other}"
    # two answers a suite prompt: 4 prompts x 2 = 8 answers, shared out over the ranks across
    # the repeat of the suite, come back in order (answer j to prompt i at j * 4 + i)
    run(EvalConfig(policies=policies, reward_model=str(reward_model), max_prompts=5,
                   max_adversarial=1, adversarial_answers=2, max_new_tokens=8, bootstrap=200,
                   seed=5, precision="fp32", output=str(tmp_path / "one")))
    proc = run_ranks(2, "eval", "--policies", policies, "--reward-model", str(reward_model),
                     "--max-prompts", "5", "--max-adversarial", "1", "--adversarial-answers", "2",
                     "--max-new-tokens", "8", "--bootstrap", "200", "--seed", "5",
                     "--output", str(tmp_path / "two"))
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ("samples.jsonl", "adversarial_samples.jsonl"):
        assert (two / name).read_text() == (one / name).read_text(), name
    suite_lines = records(two / "adversarial_samples.jsonl")
    assert [ln["answer"] for ln in suite_lines] == [0, 1] * 4
    assert all(a["prompt"] == b["prompt"] for a, b in zip(suite_lines[0::2], suite_lines[1::2]))
    close(json.loads((one / "eval.json").read_text()), json.loads((two / "eval.json").read_text()))
    assert json.loads((two / "eval.json").read_text())["judge_position_bias"]["pairs"] == 10
    assert proc.stdout.count("alignkit eval:") == 1
    only_main_wrote(two)


def test_online_dpo_on_two_ranks_equals_one_process_and_resumes_in_one(tiny_model_dir,
                                                                        tmp_path):
    """5 prompts a round in DPO steps of 4 and 1 groups: in the second step one rank has no
    group and joins the gradient average with an empty pass. The 2-process run's checkpoint of
    round 2, resumed in one process, ends where the uninterrupted one-process run ends."""
    from alignkit.cli import run
    from alignkit.config import OnlineDPOConfig

    prompts = write_prompts(tmp_path / "p.jsonl", 10)
    settings = dict(model=str(tiny_model_dir), data=str(prompts), labeler="simulated",
                    lora=True, rounds=4, prompts_per_round=5, samples_per_prompt=3,
                    batch_size=4, lr=1e-3, max_new_tokens=8, sample_prompts=str(prompts),
                    sample_count=5, eval_every=2, save_every=2, keep_checkpoints=0, seed=4,
                    progress=False, precision="fp32")
    run(OnlineDPOConfig(**settings, output=str(tmp_path / "one")))
    two = tmp_path / "two"
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
             for k, v in settings.items() if v is not False]
    run_ranks(2, "online-dpo", *flags, "--no-progress", "--output", str(two))
    keys = ("loss", "grad_norm", "sample_reward", "label_std", "response_length")
    assert_same_training(tmp_path / "one", two, keys, ("pairs", "pairs_identical"), adam_lr=1e-3)
    # beta times a difference of summed log-probs near -30: its rounding is absolute
    assert [r["reward_margin"] for r in rows(two)] == pytest.approx(
        [r["reward_margin"] for r in rows(tmp_path / "one")], rel=REL, abs=2e-6)
    assert any(r["pairs"] % 4 == 1 for r in rows(two))  # a step of one group happened
    close([{k: v for k, v in r.items() if k != "time"} for r in rows(tmp_path / "one", "eval")],
          [{k: v for k, v in r.items() if k != "time"} for r in rows(two, "eval")])
    # as if killed after the checkpoint of round 2, then resumed in one process
    shutil.rmtree(two / "final")
    kept = [ln for ln in (two / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["step"] <= 2]
    (two / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    run(OnlineDPOConfig(**settings, output=str(two), resume=True))
    assert_same_training(tmp_path / "one", two, keys, ("pairs", "pairs_identical"), adam_lr=1e-3)
