"""A local causal LM as a judge: no text is generated; the judge prompt is rendered with the
model's chat template and the next-token logits of the two verdict tokens are compared.

    P(a) = softmax([logit("A"), logit("B")])[0]

(the model's own probability of answering "A" rather than "B", renormalised over the two). It
is deterministic, cheap (one forward per pair, batched), and gives a graded confidence. A model
cannot say "tie" this way; two equal logits give P(a) = 1/2, a tie. Wrap it in
``swap.BothOrders`` to cancel the first-slot preference small models have.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from alignkit.errors import UserError
from alignkit.judges.base import Verdict
from alignkit.judges.prompting import judge_messages
from alignkit.judges.swap import verdict_from_prob


def verdict_token_id(tokenizer, letter: str) -> int:
    """The id of the single token a model writes for the verdict ``letter`` ("A" or "B")."""
    ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise UserError(f"judge model: the verdict {letter!r} is not a single token in its "
                        f"tokenizer ({ids})")
    return ids[0]


class LocalJudge:
    """Pairwise judge from a causal LM's verdict-token log-probs (one order per call)."""

    def __init__(self, model, tokenizer, principle: str | None = None, batch_size: int = 8,
                 name: str = "local"):
        self.model, self.tokenizer = model, tokenizer
        self.principle = principle
        self.batch_size = batch_size
        self.name = name
        self.token_a = verdict_token_id(tokenizer, "A")
        self.token_b = verdict_token_id(tokenizer, "B")

    @classmethod
    def load(cls, path: str, device: str = "cpu", **kwargs) -> "LocalJudge":
        from alignkit.models.loading import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(path, device)
        model.eval()
        return cls(model, tok, name=f"local:{path}", **kwargs)

    def with_principle(self, principle: str | None) -> "LocalJudge":
        clone = copy.copy(self)
        clone.principle = principle
        return clone

    def prompt_ids(self, prompt: Any, response_a: Any, response_b: Any) -> list[int]:
        """Token ids of the rendered judge prompt, ending where the verdict would be written."""
        messages = judge_messages(prompt, response_a, response_b, self.principle)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        return tok(text, add_special_tokens=True)["input_ids"]

    def verdict_logits(self, ids: list[list[int]]):
        """(N, 2) next-token logits of "A" and "B" after each left-padded prompt."""
        import torch

        from alignkit.generation.sampler import left_pad

        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for s in range(0, len(ids), self.batch_size):
                query, mask = left_pad(ids[s:s + self.batch_size], self.tokenizer.pad_token_id)
                query, mask = query.to(device), mask.to(device)
                position = (mask.cumsum(1) - 1).clamp(min=0)
                logits = self.model(input_ids=query, attention_mask=mask,
                                    position_ids=position).logits[:, -1].float()
                out.append(logits[:, [self.token_a, self.token_b]].cpu())
        return torch.cat(out)

    def judge(self, prompt: Any, response_a: Any, response_b: Any) -> Verdict:
        return self.judge_many([prompt], [response_a], [response_b])[0]

    def judge_many(self, prompts: Sequence[Any], responses_a: Sequence[Any],
                   responses_b: Sequence[Any]) -> list[Verdict]:
        import torch

        if not prompts:
            return []
        ids = [self.prompt_ids(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        pair = self.verdict_logits(ids)
        prob_a = torch.softmax(pair.double(), dim=-1)[:, 0].tolist()
        logp = torch.log_softmax(pair.double(), dim=-1).tolist()
        return [verdict_from_prob(p, f"log P(A)={la:.4f} log P(B)={lb:.4f} (of the two)")
                for p, (la, lb) in zip(prob_a, logp)]
