"""Turn validated examples into token ids with per-token targets.

``TokenizedExample.targets`` is already shifted: ``targets[t]`` is the token the model should
predict at position ``t`` (``IGNORE`` where no loss is taken: prompt tokens unless
``train_on_prompt``, and the last position). Shifting inside each example keeps packed rows from
predicting the first token of the next example.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.schemas import SFTExample
from alignkit.errors import UserError

IGNORE = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    targets: list[int]
    where: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def use_chat_template(tokenizer, mode: str, needs_chat: bool, where: str = "") -> bool:
    """Decide whether string prompts are rendered as a chat turn. ``mode``: auto|always|never.
    ``needs_chat``: the record holds chat messages (lists of turns), which only a chat template
    can render. Without a template either is a ``UserError`` naming ``where`` (file:line)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if (mode == "always" or needs_chat) and not has:
        name = getattr(tokenizer, "name_or_path", "")
        whose = f"the tokenizer of {name}" if name else "this tokenizer"
        at = f"{where}: " if where else ""
        if needs_chat:
            raise UserError(f"{at}chat messages need a model with a chat template, and {whose} "
                            "has none: give one with --chat-template (a Jinja file, or chatml, "
                            "llama3, zephyr, plain), use a chat model, or give plain strings "
                            "instead of message lists")
        raise UserError(f"{at}--chat always needs a model with a chat template, and {whose} has "
                        "none: give one with --chat-template, use a chat model, or --chat never "
                        "(plain text)")
    if needs_chat:
        return True
    return has if mode == "auto" else mode == "always"


def as_messages(text, role: str) -> list[dict]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, messages: list[dict], where: str = "") -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant) pieces by rendering growing
    prefixes; the template's own markup around an assistant turn is not learned, its content and
    end-of-turn token are."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        after = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise UserError(f"{where}: the model's chat template does not render conversations "
                            "prefix by prefix, so assistant turns cannot be located")
        segments.append((before[len(done):], False))
        segments.append((after[len(before):], True))
        done = after
    full = _render(tokenizer, messages, generation_prompt=False)
    if full[len(done):]:
        segments.append((full[len(done):], False))
    return segments


def tokenize_sft(example: SFTExample, tokenizer, chat: str = "auto",
                 train_on_prompt: bool = False) -> TokenizedExample:
    """Token ids and shifted targets for one demonstration."""
    eos = tokenizer.eos_token_id
    pieces: list[tuple[list[int], bool]] = []  # (ids, learn these tokens)
    if example.kind == "text":
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        pieces.append((ids + ([eos] if eos is not None else []), True))
    else:
        if example.kind == "messages":
            messages = example.messages
            needs_chat = True
        else:
            needs_chat = isinstance(example.prompt, list) or isinstance(example.completion, list)
            messages = None
        if use_chat_template(tokenizer, chat, needs_chat, example.where):
            if messages is None:
                messages = as_messages(example.prompt, "user") + as_messages(example.completion,
                                                                           "assistant")
            for text, is_assistant in chat_segments(tokenizer, messages, example.where):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                pieces.append((ids, is_assistant or train_on_prompt))
        else:
            p_ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
            c_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
            pieces.append((p_ids, train_on_prompt))
            pieces.append((c_ids + ([eos] if eos is not None else []), True))
    input_ids: list[int] = []
    learn: list[bool] = []
    for ids, flag in pieces:
        input_ids.extend(ids)
        learn.extend([flag] * len(ids))
    # targets[t] = input_ids[t+1] when that next token is learned
    targets = [input_ids[t + 1] if learn[t + 1] else IGNORE for t in range(len(input_ids) - 1)]
    targets.append(IGNORE)
    return TokenizedExample(input_ids, targets, example.where)


def render_prompt(tokenizer, prompt, chat: str = "auto", where: str = "") -> str:
    """The text a policy continues for ``prompt``: a chat generation prompt or the plain string.
    ``where`` (file:line) locates the prompt in errors."""
    if use_chat_template(tokenizer, chat, isinstance(prompt, list), where):
        return _render(tokenizer, as_messages(prompt, "user"), generation_prompt=True)
    return prompt
