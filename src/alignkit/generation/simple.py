"""Batched generation through ``transformers.generate``: left-padded prompts, stop at EOS per
sequence, greedy or sampled. Returns the text, token count and whether the answer ended."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.tokenize import render_prompt


@dataclass
class Generation:
    prompt: str
    text: str
    num_tokens: int
    ended: bool  # stopped on EOS rather than on the length limit


@torch.no_grad()
def generate(model, tokenizer, prompts: list, max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
             chat: str = "auto") -> list[Generation]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    out: list[Generation] = []
    torch.manual_seed(seed)
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            texts = [render_prompt(tokenizer, p, chat) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True,
                            add_special_tokens=not getattr(tokenizer, "chat_template", None)).to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=eos,
                          pad_token_id=tokenizer.pad_token_id)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
            for p, row in zip(chunk, seqs.tolist()):
                ended = eos in row
                row = row[:row.index(eos)] if ended else row
                out.append(Generation(p if isinstance(p, str) else p[-1]["content"],
                                      tokenizer.decode(row, skip_special_tokens=True).strip(),
                                      len(row) + int(ended), ended))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
