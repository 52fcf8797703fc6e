"""The model side of ``alignkit serve``: answers to chat requests, whole or token by token.

Generation goes through the shared sampler (``generation.sampler``): the same decoding PPO,
evaluation and best-of-n use. ``ChatModel`` is not thread-safe: the server calls it from one
thread (``serve.app.ModelWorker``).

Streaming decodes incrementally with the sampler's own filtering (``filter_logits``) over a KV
cache, one choice at a time, holding back text that could be half a UTF-8 character or the start
of a stop sequence.

Log-probs (``logprobs``, optionally ``top_logprobs`` = k) fill each choice's ``logprobs`` in
OpenAI's chat-completions shape, ``{"content": [{"token", "logprob", "bytes", "top_logprobs":
[{"token", "logprob", "bytes"}, ...]}, ...]}``:

- the numbers are the model's own next-token distribution: ``log_softmax`` of the raw logits,
  whatever the request's ``temperature`` / ``top_p`` (vLLM's default too), computed after
  sampling by one teacher-forced forward over prompt + response (the pattern of
  ``sampler.response_logprobs``; a full forward, not the KV-cached decode's logits);
  ``top_logprobs`` lists the k most likely tokens, most likely first; a log-prob below -9999 is
  written as -9999 (OpenAI's floor; JSON has no -inf);
- one entry per generated token that is in the returned content: a final EOS and special tokens
  (which decoding skips) have none; when a ``stop`` sequence cuts the text, entries are kept up
  to and including the token in which the cut falls (the shortest token prefix whose decoded text
  covers the returned content), so the last entry may carry a few characters past the cut;
- ``token`` is the token decoded alone (``tokenizer.decode([id])``, e.g. " A" rather than the
  byte-level piece "ĠA"); ``bytes`` is its UTF-8 -- or, for a byte-level or byte-fallback token
  holding part of a multi-byte character (decoded alone as U+FFFD), the token's raw bytes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Iterator

LOGPROB_FLOOR = -9999.0


class RequestError(Exception):
    """A request this server does not answer: sent as OpenAI's error object with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class ChatRequest:
    """A validated chat request: what to generate (``serve.app.parse_chat_request`` builds it)."""

    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    model: str
    logprobs: bool = False
    top_logprobs: int = 0


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the earliest stop sequence, and whether one occurred."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class ChatModel:
    """One loaded policy, answering in OpenAI's ``chat.completion`` shapes; one caller at a time."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        limit = getattr(model.config, "max_position_embeddings", None)
        self.context_limit = int(limit) if limit else None

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:  # a base model: the conversation as plain text
            text = "\n\n".join(m["content"] for m in messages)
            ids = tok(text, add_special_tokens=True)["input_ids"]
        return ids

    def _check_length(self, ids: list[int], max_tokens: int) -> None:
        if self.context_limit and len(ids) + max_tokens > self.context_limit:
            raise RequestError(f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) "
                               f"exceeds this model's context of {self.context_limit} tokens",
                               "messages")

    def complete(self, req: ChatRequest) -> dict:
        """The OpenAI ``chat.completion`` object for ``req`` (n choices)."""
        import torch

        from alignkit.generation.sampler import SamplingConfig, sample

        ids = self.prompt_ids(req.messages)
        self._check_length(ids, req.max_tokens)
        tok = self.tokenizer
        cfg = SamplingConfig(req.max_tokens, req.temperature, req.top_p)
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "big")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rollout = sample(self.model, [ids] * req.n, tok.pad_token_id, tok.eos_token_id, cfg,
                             with_logprobs=False)
            scored = token_logprobs(self.model, rollout.query, rollout.query_mask,
                                    rollout.response, rollout.response_mask,
                                    req.top_logprobs) if req.logprobs else None
        special = set(tok.all_special_ids)
        choices, completion_tokens = [], 0
        for i, (row, mask, ended) in enumerate(zip(rollout.response.tolist(),
                                                   rollout.response_mask.tolist(),
                                                   rollout.ended.tolist())):
            n = sum(mask)
            completion_tokens += n
            body = row[:n - 1] if ended else row[:n]
            text = tok.decode(body, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, req.stop)
            logprobs = None
            if scored is not None:
                logprobs = {"content": self._logprob_entries(
                    body, scored[i], text if stopped else None, special)}
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": logprobs,
                            "finish_reason": "stop" if ended or stopped else "length"})
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": self.name, "choices": choices,
                "system_fingerprint": None,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens}}

    def _logprob_entries(self, body: list[int], scored: tuple, cut: str | None,
                         special: set[int]) -> list[dict]:
        """OpenAI ``logprobs.content`` for one choice: ``body`` its token ids (no final EOS),
        ``scored`` its (logprobs (T,), top values (T, k), top ids (T, k)) from
        ``token_logprobs``, ``cut`` the returned text when a stop sequence cut it."""
        tok = self.tokenizer
        chosen, top_values, top_ids = (x.tolist() for x in scored)
        kept = [t for t, token in enumerate(body) if token not in special]
        if cut is not None:  # the shortest token prefix whose text covers the returned content
            for k in range(len(kept) + 1):
                if len(tok.decode([body[t] for t in kept[:k]], skip_special_tokens=True)) \
                        >= len(cut):
                    kept = kept[:k]
                    break
        return [{**self._token_info(body[t], chosen[t]),
                 "top_logprobs": [self._token_info(j, v)
                                  for j, v in zip(top_ids[t], top_values[t])]}
                for t in kept]

    def _token_info(self, token: int, logprob: float) -> dict:
        text = self.tokenizer.decode([token])
        return {"token": text, "logprob": max(float(logprob), LOGPROB_FLOOR),
                "bytes": token_bytes(self.tokenizer, token, text)}

    def stream(self, req: ChatRequest) -> Iterator[dict]:
        """``chat.completion.chunk`` objects: a role chunk, one per decoded piece of text, a final
        chunk with ``finish_reason`` and usage. A bad request raises ``RequestError`` before the
        first chunk."""
        import torch
        from transformers import DynamicCache

        from alignkit.generation.sampler import SamplingConfig, _forward, filter_logits

        ids = self.prompt_ids(req.messages)
        self._check_length(ids, req.max_tokens)
        tok = self.tokenizer
        cfg = SamplingConfig(req.max_tokens, req.temperature, req.top_p)
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "big")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.name, "system_fingerprint": None}

        def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}], **extra}

        yield chunk({"role": "assistant", "content": ""})
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            self.model.eval()
            cache = DynamicCache(config=self.model.config)
            query = torch.tensor([ids], device=device)
            mask = torch.ones_like(query)
            position = torch.arange(len(ids), device=device)[None]
            logits = _forward(self.model, query, mask, position, cache, last_only=True)
            generated: list[int] = []
            sent, finish = "", "length"
            for t in range(req.max_tokens):
                if cfg.temperature <= 0:
                    token = int(logits.argmax(-1))
                else:
                    probs = torch.softmax(filter_logits(logits, cfg), dim=-1)
                    token = int(torch.multinomial(probs, 1))
                generated.append(token)
                if token == tok.eos_token_id:
                    finish = "stop"
                    break
                text, stopped = cut_at_stop(tok.decode(generated, skip_special_tokens=True),
                                            req.stop)
                # hold back a partial UTF-8 character or a possible stop-sequence prefix
                safe = text if stopped else _safe_prefix(text, req.stop)
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield chunk({"content": safe[len(sent):]})
                    sent = safe
                if stopped:
                    finish = "stop"
                    break
                mask = torch.cat([mask, mask.new_ones((1, 1))], 1)
                logits = _forward(self.model, torch.tensor([[token]], device=device), mask,
                                  torch.tensor([[len(ids) + t]], device=device), cache,
                                  last_only=False)
            body = generated[:-1] if generated and generated[-1] == tok.eos_token_id else generated
            text, _ = cut_at_stop(tok.decode(body, skip_special_tokens=True), req.stop)
            if len(text) > len(sent) and text.startswith(sent):
                yield chunk({"content": text[len(sent):]})
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                 "total_tokens": len(ids) + len(generated)}
        yield chunk({}, finish, usage=usage)


def token_logprobs(model, query, query_mask, response, response_mask, top: int) -> list[tuple]:
    """Per response row: (log p(token_t) (T,), the ``top`` highest log-probs (T, top), their ids
    (T, top)) under the model's own distribution (log_softmax of the raw logits, no temperature):
    one forward over left-padded query + right-padded response, as ``response_logprobs`` does,
    with the LM head and the softmax one row at a time (a (T, V) block, not (B, T, V))."""
    import torch

    from alignkit.models.lm import hidden_states, logits_at

    with torch.no_grad():
        ids = torch.cat([query, response], 1)
        mask = torch.cat([query_mask, response_mask], 1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = hidden_states(model, ids, mask, position_ids)
        lq, t = query.shape[1], response.shape[1]
        out = []
        for row in range(ids.shape[0]):
            h = hidden[row, lq - 1:lq - 1 + t]  # the position before each token predicts it
            logp = torch.log_softmax(logits_at(model, h).float(), dim=-1)
            chosen = logp.gather(-1, response[row].unsqueeze(-1)).squeeze(-1)
            values, indices = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
            out.append((chosen.cpu(), values.cpu(), indices.cpu()))
    return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character standing for each byte, inverted."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, token: int, text: str) -> list[int]:
    """The bytes of one token: the UTF-8 of its decoded text, except when that text is a
    replacement character (the token holds part of a multi-byte character): then the raw bytes
    of its byte-level piece ("Ġ" = space) or byte-fallback piece ("<0xE2>") when it is one."""
    if "\ufffd" in text:
        piece = tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str):
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return [int(piece[3:5], 16)]
                except ValueError:
                    pass
            if piece and all(c in _BYTE_DECODER for c in piece):
                return [_BYTE_DECODER[c] for c in piece]
    return list(text.encode("utf-8"))


def _safe_prefix(text: str, stops: list[str]) -> str:
    """Text that can be sent now: without a trailing replacement character (a multi-byte
    character still being decoded) or a tail that could start a stop sequence."""
    text = text.rstrip("\ufffd")
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                return text[:-k]
    return text
