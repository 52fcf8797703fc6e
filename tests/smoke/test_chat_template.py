"""``--chat-template``: a base model without a template trains SFT on chat messages with one
(named or from a file), the saved model keeps it, and without one the data's need is a clear
error naming the record."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke

MESSAGES = [[{"role": "user", "content": f"What is {i} plus {i}?"},
             {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}] for i in range(12)]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from alignkit.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("base") / "model", chat_template=False)


def write_messages(path):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in MESSAGES))
    return path


def test_named_templates_render_and_end_assistant_turns_with_eos():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from alignkit.models.chat_templates import NAMED

    env = ImmutableSandboxedEnvironment()
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

    def render(name, eos, generation_prompt=False):
        return env.from_string(NAMED[name]).render(messages=turns, eos_token=eos,
                                                   add_generation_prompt=generation_prompt)

    assert render("chatml", "<|im_end|>") == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert render("chatml", "<|endoftext|>") == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|><|endoftext|>\n"
    assert render("plain", "</s>") == "User: Hi\nAssistant: Hello</s>\n"
    assert render("plain", "</s>", generation_prompt=True).endswith("Assistant: ")
    assert render("llama3", "<|eot_id|>").count("<|eot_id|>") == 2
    assert render("zephyr", "</s>") == "<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n"


def test_base_model_trains_sft_on_messages_with_a_chat_template(base_model, tmp_path):
    from transformers import AutoTokenizer

    from alignkit.models.chat_templates import NAMED

    data = write_messages(tmp_path / "chat.jsonl")
    # without a template: one line naming the first record
    proc = run_cli("sft", "--model", str(base_model), "--data", str(data), "--output",
                   str(tmp_path / "none"), "--max-steps", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{data}:1: chat messages need a model with a chat template" in proc.stderr
    assert "--chat-template" in proc.stderr

    for template, expect in (("plain", NAMED["plain"]), (str(tmp_path / "mine.jinja"), None)):
        if expect is None:
            (tmp_path / "mine.jinja").write_text(NAMED["chatml"])
            expect = NAMED["chatml"]
        out = tmp_path / f"run-{len(template)}"
        proc = run_cli("sft", "--model", str(base_model), "--data", str(data), "--output",
                       str(out), "--chat-template", template, "--max-steps", "2",
                       "--batch-size", "4", "--eval-fraction", "0", "--no-progress")
        assert proc.returncode == 0, proc.stderr[-3000:]
        saved = AutoTokenizer.from_pretrained(str(out / "final"))
        assert saved.chat_template == expect  # the next stage needs no flag
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
        assert "chat_template: " + template in (out / "config.yaml").read_text()

    proc = run_cli("sft", "--model", str(base_model), "--data", str(data), "--output",
                   str(tmp_path / "bad"), "--chat-template", "nosuch", "--max-steps", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("--chat-template nosuch: not a file, nor a named "
                                        "template (chatml, llama3, zephyr, plain)")
