"""``--chat-template FILE|NAME``: the Jinja chat template for a model without one (a base model),
or one that replaces the model's own. Every tokenizer of a causal LM the stage loads gets it
(policy, reference, local judges, causal reward models, the served model), and each saved
``final/`` keeps it, so the next stage needs no flag.

Named templates end every assistant turn with the tokenizer's EOS token when the turn's own end
marker is not that token, so a base model trained on them learns to stop where sampling stops."""

from __future__ import annotations

import contextlib
from pathlib import Path

from alignkit.errors import UserError

_END_WITH_EOS = "{% if eos_token and eos_token != END %}{{ eos_token }}{% endif %}"

NAMED = {
    # ChatML (Qwen, SmolLM, Hermes)
    "chatml": (
        "{% set END = '<|im_end|>' %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
        "{% if message['role'] == 'assistant' %}" + _END_WITH_EOS + "{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # Llama 3 instruct
    "llama3": (
        "{% set END = '<|eot_id|>' %}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
        "message['content'] + '<|eot_id|>' }}"
        "{% if message['role'] == 'assistant' %}" + _END_WITH_EOS + "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"),
    # Zephyr
    "zephyr": (
        "{% set END = '</s>' %}"
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '</s>' }}{% endif %}"
        "{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    # plain text turns, for a base model with no special tokens at all
    "plain": (
        "{% set END = '' %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
        "{% else %}{{ 'Assistant: ' + message['content'] }}" + _END_WITH_EOS + "{{ '\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"),
}


def resolve_chat_template(value: str) -> str:
    """The template text of ``--chat-template``: a file's contents or a named template."""
    if value in NAMED:
        return NAMED[value]
    path = Path(value).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--chat-template {value}: cannot read it ({e})") from None
        if not text.strip():
            raise UserError(f"--chat-template {value}: the file is empty")
        return text
    raise UserError(f"--chat-template {value}: not a file, nor a named template "
                    f"({', '.join(NAMED)})")


_ACTIVE: str | None = None


@contextlib.contextmanager
def chat_template_for_run(value: str | None):
    """While a stage runs, every causal LM tokenizer it loads gets ``value``'s template."""
    global _ACTIVE
    before = _ACTIVE
    _ACTIVE = resolve_chat_template(value) if value else None
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = before


def apply_chat_template_option(tokenizer):
    """``tokenizer`` with the running stage's ``--chat-template``, if it set one."""
    if _ACTIVE is not None:
        tokenizer.chat_template = _ACTIVE
    return tokenizer


def active_chat_template() -> str | None:
    return _ACTIVE
