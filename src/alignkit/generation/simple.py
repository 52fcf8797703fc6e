"""Text in, text out, through the shared sampler (``generation.sampler``): chat-rendered prompts,
greedy or sampled, each answer stopping at EOS. Returns the text, token count and whether the
answer ended."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.tokenize import render_prompt
from alignkit.generation.sampler import SamplingConfig, fixed_draw, sample


@dataclass
class Generation:
    prompt: str
    text: str
    num_tokens: int
    ended: bool  # stopped on EOS rather than on the length limit


def generate(model, tokenizer, prompts: list, max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
             chat: str = "auto", row_seeds: list[int] | None = None,
             engine=None, progress: str | None = None) -> list[Generation]:
    """Answer each prompt once. Sampling is seeded by ``seed``, or each answer by its own seed
    (``row_seeds``: the same answer whatever the batch), and leaves the caller's RNG as it
    was. ``engine``: a rollout engine that writes the answers (``model`` may then be None).
    ``progress``: the description of a progress bar over the answers (None: none)."""
    bos = not getattr(tokenizer, "chat_template", None)
    ids = [tokenizer(render_prompt(tokenizer, p, chat), add_special_tokens=bos)["input_ids"]
           for p in prompts]
    cfg = SamplingConfig(max_new_tokens, temperature if do_sample else 0.0, top_p)
    with fixed_draw(seed):
        rollout = sample(model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg,
                         with_logprobs=False, batch_size=batch_size, row_seeds=row_seeds,
                         engine=engine, progress=progress)
    out = []
    for p, row, mask, ended in zip(prompts, rollout.response.tolist(),
                                   rollout.response_mask.tolist(), rollout.ended.tolist()):
        n = sum(mask)
        text_ids = row[:n - 1] if ended else row[:n]
        out.append(Generation(p if isinstance(p, str) else p[-1]["content"],
                              tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                              n, bool(ended)))
    return out
