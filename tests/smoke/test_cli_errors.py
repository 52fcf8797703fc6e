"""User mistakes end in one clear line on stderr and exit status 2, never a traceback: every
numeric flag of every stage outside its range (0, -1, NaN, inf), out-of-range YAML values, and
chat-message data on a model without a chat template. Range checks run before any model loads,
so the walk over all flags takes seconds."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from alignkit.cli import STAGES, build_parser
from alignkit.config import build_config, flag_name
from tests.conftest import run_cli, run_cli_batch

pytestmark = pytest.mark.smoke

# Where 0 or -1 is a valid value (it means "off", "all", "greedy", "use --epochs" ...); every
# other numeric field must reject both. A new numeric field fails the walk until it is listed
# here or its range rejects 0 and -1.
ZERO_OK = {
    "warmup_steps", "weight_decay", "max_grad_norm", "pack_length", "eval_every", "save_every",
    "keep_checkpoints", "eval_fraction", "lora_dropout", "seed", "reinit_layers",
    "label_smoothing", "uncertainty_penalty", "gate_penalty", "eval_prompts", "top_k", "kl_coef",
    "vf_coef", "entropy_coef", "gamma", "lam", "target_kl", "missing_eos_penalty", "kl_budget",
    "min_entropy", "rpo_alpha", "sample_count", "max_std", "min_margin", "gold_scale",
    "max_prompts", "max_adversarial", "temperature", "judge_retries", "judge_rate", "port",
    "samples", "ppo_steps", "dpo_steps", "ppo_kl_coef", "max_tokens_per_micro_batch",
    "vllm_max_model_len", "rollout_is_cap", "forecast_margin", "uwo_lambda", "bon_n",
    "eval_adversarial_prompts", "feedback_temperature", "calibration_items",
    "calibration_accuracy", "attention_rate", "earlier_rounds_ppo_steps",
    "later_rounds_reward_steps",
}
# temperature divides PPO's training logits, and greedy samples of one prompt are all the same
# (no pair for online DPO); the demo's samples are answered before and after training
ZERO_NOT_OK = {("ppo", "temperature"), ("online-dpo", "temperature"), ("demo", "samples")}
# max_steps: -1 means --epochs; PPO counts rollout batches; serve takes any value and uses none
EPOCH_STAGES = {"demo", "sft", "reward", "dpo", "online-dpo"}
MAX_STEPS_UNUSED: set[str] = set()
INF_OK = {("ppo", "kl_budget"), ("ppo", "length_drift")}


def accepts(stage: str, name: str, value: float) -> bool:
    if math.isnan(value):
        return False
    if math.isinf(value):
        return value > 0 and (stage, name) in INF_OK
    if name == "max_steps":
        return stage in MAX_STEPS_UNUSED or (value == -1 and stage in EPOCH_STAGES)
    if value == 0:
        return name in ZERO_OK and (stage, name) not in ZERO_NOT_OK
    return value == -1 and name == "min_margin"


def numeric_fields(cls) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        tp = args[0] if args else hints[f.name]
        if tp in (int, float):
            out.append((f.name, tp))
    return out


def required_flags(stage: str) -> list[str]:
    """A value for every option the stage's command line must give."""
    return [x for f in dataclasses.fields(STAGES[stage][0]) if f.metadata.get("required")
            for x in (flag_name(f.name), "given")]


def user_argv(stage: str) -> list[str]:
    """How a user types the stage: ``annotate-serve`` is ``annotate serve``."""
    return stage.split("-", 1) if stage.startswith(("annotate-", "study-")) else [stage]


def value_args(flag: str, text: str) -> list[str]:
    # argparse reads "-inf" as an option name, so that one goes with "="
    return [f"{flag}={text}"] if text == "-inf" else [flag, text]


def all_cases() -> tuple[list[dict], list[dict]]:
    """(rejected, accepted) cases over every stage's numeric flags."""
    rejected, accepted = [], []
    for stage, (cls, _, _) in STAGES.items():
        for name, tp in numeric_fields(cls):
            texts = ["0", "-1"] + (["nan", "inf", "-inf"] if tp is float else [])
            for text in texts:
                value = tp(float(text))
                case = {"stage": stage, "flag": flag_name(name), "text": text, "name": name,
                        "shown": repr(value)}
                (accepted if accepts(stage, name, value) else rejected).append(case)
    return rejected, accepted




def test_every_out_of_range_numeric_flag_exits_2_naming_the_flag(tmp_path):
    rejected, _ = all_cases()
    assert len(rejected) > 300  # the walk covers every stage
    argvs = [[*user_argv(c["stage"]), *value_args(c["flag"], c["text"])] for c in rejected]
    # config_only: a value the walk expects rejected but the parser takes fails at once (the
    # stage would run) instead of training a model
    results = run_cli_batch([{"argv": a, "config_only": True} for a in argvs], tmp_path)
    wrong = []
    for case, argv, res in zip(rejected, argvs, results):
        err = res["err"]
        start = f"alignkit {case['stage']}: error: {case['flag']} must be "
        if not (res["rc"] == 2 and err.startswith(start) and err.count("\n") == 1
                and err.endswith(f", got {case['shown']}\n") and "Traceback" not in err):
            wrong.append(f"alignkit {' '.join(argv)} -> {res['rc']}: {err}")
    assert wrong == []
    # nothing ran: no stage wrote an output anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.json", "results.json"]


def test_in_range_zero_and_minus_one_are_not_rejected():
    _, accepted = all_cases()
    assert {"--eval-fraction", "--seed", "--max-steps", "--min-margin",
            "--kl-budget"} <= {c["flag"] for c in accepted}
    parser = build_parser()
    for case in accepted:
        args = parser.parse_args([case["stage"], *required_flags(case["stage"]),
                                  *value_args(case["flag"], case["text"])])
        cfg = build_config(STAGES[case["stage"]][0], args)  # raises if rejected
        got = getattr(cfg, case["name"])
        assert got == float(case["text"]), case


@pytest.mark.parametrize("argv,line", [
    (["sft", "--data", "demo", "--batch-size", "0"],
     "alignkit sft: error: --batch-size must be >= 1, got 0"),
    (["sft", "--data", "demo", "--grad-accum", "0"],
     "alignkit sft: error: --grad-accum must be >= 1, got 0"),
    (["sft", "--data", "demo", "--lr", "-1"],
     "alignkit sft: error: --lr must be a finite number > 0, got -1.0"),
    (["ppo", "--temperature", "nan"],
     "alignkit ppo: error: --temperature must be a finite number > 0, got nan"),
    (["annotate", "add-tasks", "--num-responses", "1"],
     "alignkit annotate-add-tasks: error: --num-responses must be >= 2, got 1"),
])
def test_out_of_range_flag_as_a_real_subprocess(tmp_path, argv, line):
    if argv[0] != "annotate":
        argv = [*argv, "--output", str(tmp_path / "out")]
    proc = run_cli(*argv, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line + "\n")
    assert not (tmp_path / "out").exists()


def test_out_of_range_yaml_as_a_real_subprocess(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.001\nensemble: 0\n", encoding="utf-8")
    proc = run_cli("reward", "--config", str(tmp_path / "c.yaml"), timeout=120)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"alignkit reward: error: {tmp_path / 'c.yaml'}:2: option 'ensemble' "
                           "must be >= 1, got 0\n")


@pytest.mark.parametrize("argv,line", [
    (["--num-heads", "3"], "--hidden-size 64 must be --num-heads 3 times an even head width "
                           "(e.g. --hidden-size 64 --num-heads 4)"),
    (["--num-heads", "5", "--hidden-size", "80"],
     "--num-heads 5: must be 1, 3 or even (the key/value heads, half as many, must divide it)"),
])
def test_tiny_model_shape_mistakes_exit_2(tmp_path, argv, line):
    proc = run_cli("tiny-model", "--output", str(tmp_path / "m"), *argv, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"alignkit tiny-model: error: "
                                                                  f"{line}\n")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# chat messages on a model without a chat template


@pytest.fixture(scope="module")
def plain_model_dir(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("plain") / "model", chat_template=False)


CHAT_ERROR = ("chat messages need a model with a chat template, and the tokenizer of {model} has "
              "none: give one with --chat-template (a Jinja file, or chatml, llama3, zephyr, "
              "plain), use a chat model, or give plain strings instead of message lists")


def test_sft_messages_without_chat_template_exit_2(tmp_path, plain_model_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]}) + "\n", encoding="utf-8")
    proc = run_cli("sft", "--model", str(plain_model_dir), "--data", str(data), "--output",
                   str(tmp_path / "out"), "--device", "cpu", "--no-progress", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"alignkit sft: error: {data}:2: "
                                            + CHAT_ERROR.format(model=plain_model_dir))


def test_label_message_prompts_without_chat_template_exit_2(tmp_path, plain_model_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}]}) + "\n",
                    encoding="utf-8")
    proc = run_cli("label", "--model", str(plain_model_dir), "--data", str(data), "--output",
                   str(tmp_path / "prefs.jsonl"), "--device", "cpu", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"alignkit label: error: {data}:1: "
                                            + CHAT_ERROR.format(model=plain_model_dir))
    assert not (tmp_path / "prefs.jsonl").exists()
