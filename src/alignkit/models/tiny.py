"""Tiny random Llama-style models with an in-process tokenizer, for tests and benchmarks.

The tokenizer is a byte-level BPE trained in a fraction of a second on the demonstrations that
ship with alignkit, with ChatML special tokens and a chat template, so every code path that a real
instruct model exercises (chat rendering, EOS, padding) runs on it too.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _corpus() -> list[str]:
    from alignkit.data.readers import shipped_data_path

    texts = []
    with open(shipped_data_path("demo"), encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            texts.append(rec["prompt"])
            texts.append(rec["completion"])
    return texts


def build_tiny_tokenizer(vocab_size: int = 512, texts: list[str] | None = None):
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts or _corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", pad_token="<pad>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     intermediate_size: int = 128, max_positions: int = 1024, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized for fast CPU tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(output: str | Path, seed: int = 0, chat_template: bool = True,
                    **sizes) -> Path:
    """Build a tiny model + tokenizer and save them as a normal Hugging Face folder;
    ``chat_template=False`` leaves the template out (like a base model's tokenizer)."""
    out = Path(output)
    tok = build_tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
    model = build_tiny_model(tok, seed=seed, **sizes)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
