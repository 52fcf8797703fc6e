"""The one sampler: PPO rollouts, evaluation, best-of-n and annotation candidates all draw here.

Prompts are left-padded into one batch and decoded with a KV cache, with temperature / top-p /
top-k, each sequence stopping at its own EOS or at ``max_new_tokens``. Two things make it faster
than a plain ``transformers.generate`` call on the same batch: the prompt pass computes logits
only for its last position, and a sequence that has ended leaves the batch (its rows are dropped
from the cache), so the decode steps run only over sequences still writing.

The log-probs of the sampled tokens are then recomputed by ``response_logprobs`` - the very
function the PPO loss calls - so the "old" log-probs of PPO and the reference's match the training
numerics exactly (a cached-decode vs full-forward mismatch is the classic source of a negative KL
at step 0).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch

from alignkit.models.lm import hidden_states, logits_at


@dataclass
class SamplingConfig:
    max_new_tokens: int = 48
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off


@dataclass
class Rollout:
    """B prompts and one sampled response each.

    query: (B, Lq) prompt ids, left-padded; query_mask: (B, Lq) 1 = token. response: (B, T) sampled
    ids, right-padded after EOS; response_mask: (B, T) 1 for real response tokens (EOS included).
    logprobs: (B, T) log-prob of each sampled token under the sampling policy (0 on padding);
    ended: (B,) True when the response stopped at EOS (False: cut at ``max_new_tokens``);
    engine_logprobs: (B, T) the same log-probs as the rollout engine computed them while
    sampling (vLLM; None for the own sampler), to measure its gap to the training numerics.
    entropy: (B, T) the entropy of each token's distribution, with ``logprobs`` taken from the
    decoding pass itself (``sample(..., with_decode_stats=True)``; else None)."""

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor | None
    ended: torch.Tensor
    engine_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)

    def select(self, index: torch.Tensor) -> "Rollout":
        return Rollout(self.query[index], self.query_mask[index], self.response[index],
                       self.response_mask[index],
                       None if self.logprobs is None else self.logprobs[index], self.ended[index],
                       None if self.engine_logprobs is None else self.engine_logprobs[index],
                       None if self.entropy is None else self.entropy[index])


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
    return ids, mask


def response_logprobs(model, query: torch.Tensor, query_mask: torch.Tensor,
                      response: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, with_entropy: bool = False,
                      value_head=None) -> dict[str, torch.Tensor]:
    """One forward of (left-padded query + right-padded response) -> per response token t:

    - ``logprobs`` (B, T): log pi(response_t | query, response_<t) with logits / temperature
      (the distribution the tokens were sampled from; the N implementation details, #4),
    - ``entropy`` (B, T) of that distribution when ``with_entropy``,
    - ``values`` (B, T) from ``value_head`` on the same hidden states (the state before token t)
      when one is given (a value head sharing the policy's backbone).

    Padding positions hold 0. The LM head runs only at the T positions that predict response
    tokens. Columns that are padding in every row (the left of a query batch wider than its
    longest prompt, the right of responses shorter than the widest) are cut before the forward
    and the outputs padded back: a slice of a larger rollout keeps that rollout's widths."""
    width = response.shape[1]
    query, query_mask, response, response_mask = trim_padding(query, query_mask, response,
                                                              response_mask)
    out = _response_logprobs(model, query, query_mask, response, response_mask, temperature,
                             with_entropy, value_head)
    return {key: torch.nn.functional.pad(v, (0, width - v.shape[1])) for key, v in out.items()}


def trim_padding(query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
                 response_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The query's leading and the response's trailing columns that no row uses, cut (one
    response column stays when none is used). Positions come from the mask, so the real tokens'
    numbers do not change."""
    first = int(query_mask.any(0).int().argmax())  # an all-padding query keeps its columns
    used = response_mask.any(0).nonzero()
    last = int(used[-1]) + 1 if len(used) else 1
    return (query[:, first:], query_mask[:, first:], response[:, :last],
            response_mask[:, :last])


def _response_logprobs(model, query, query_mask, response, response_mask, temperature: float,
                       with_entropy: bool, value_head) -> dict[str, torch.Tensor]:
    ids = torch.cat([query, response], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = hidden_states(model, ids, mask, position_ids)
    lq, t = query.shape[1], response.shape[1]
    h = hidden[:, lq - 1:lq - 1 + t]  # the position before each response token predicts it
    logits = logits_at(model, h).float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    rmask = response_mask.to(logp_all.dtype)
    out = {"logprobs": logp_all.gather(-1, response.unsqueeze(-1)).squeeze(-1) * rmask}
    if with_entropy:
        out["entropy"] = -(logp_all.exp() * logp_all).sum(-1) * rmask
    if value_head is not None:
        out["values"] = value_head(h).squeeze(-1).float() * rmask
    return out


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """(B, V) logits -> the logits sampling draws from: divided by the temperature, then top-k,
    then top-p (nucleus; the smallest set of tokens whose probability reaches p, the most likely
    token always kept), the order ``transformers`` uses; filtered tokens get -inf."""
    logits = logits.float()
    if cfg.temperature not in (0.0, 1.0):
        logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = (probs.cumsum(-1) - probs) >= cfg.top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def cache_keyword(model) -> str:
    """The keyword a causal LM's ``forward`` takes its KV cache by: ``cache`` in recent
    transformers 5.x (there ``past_key_values`` is a deprecated alias that warns with a
    FutureWarning at every call and goes in 5.40), ``past_key_values`` before. Read from the
    signature of the model itself, under a peft wrapper (which hands its keyword arguments
    through)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, ids, mask, position_ids, cache, last_only: bool,
             keyword: str | None = None):
    """One cached forward -> the logits of the last position. ``keyword``: the model's
    ``cache_keyword`` (None: read it here)."""
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
              keyword or cache_keyword(model): cache, "use_cache": True}
    if last_only:
        try:
            return model(**kwargs, logits_to_keep=1).logits[:, -1]
        except TypeError:  # a model without logits_to_keep
            pass
    return model(**kwargs).logits[:, -1]


# Answers decoded at once where a stage samples many (labelling, evaluation): a decoding step
# of a small model is latency-bound on a CPU, so a wider batch is faster until memory binds
# (SmolLM2-135M on 2 cores: 96 answers of up to 48 tokens in 23.4 s 16 at a time, 14.5 s 48 at
# a time, 12.7 s all at once). The key-value cache grows with it; the vocabulary-wide logits of
# a scoring pass do not (they are computed a smaller batch at a time).
SAMPLING_BATCH = 64


def row_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (run seed, step, prompt index, sample number): the seed
    of one response's own random stream."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_generators(seeds: list[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


# Inverse-CDF draws search a row's cumulative probabilities a block of this many tokens at a time
DRAW_BLOCK = 256


def draw(probs: torch.Tensor, generators: list[torch.Generator] | None,
         rows: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities -> (B,) sampled tokens. With ``generators`` each live row draws
    from its own response's stream (``rows``: the original row of each), so a response's tokens
    do not depend on which other prompts share its batch, or which process samples it.

    A seeded row's draw is inverse-CDF sampling: one uniform u from its stream, and the token i
    with cdf[i-1] <= u * cdf[V-1] < cdf[i], in float64 (a zero-probability token spans an empty
    interval and is never drawn). ``torch.multinomial`` draws one random number per vocabulary
    entry instead, a sixth of a small model's decoding time on a CPU. The search runs in two
    levels, the sums of blocks of ``DRAW_BLOCK`` tokens and then the one block the target falls
    in, so no (B, V) float64 copy is made."""
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    batch, vocabulary = probs.shape
    uniform = torch.cat([torch.rand(1, generator=generators[int(r)], device=probs.device,
                                    dtype=torch.float64) for r in rows.tolist()])
    padded = (probs if vocabulary % DRAW_BLOCK == 0 else
              torch.nn.functional.pad(probs, (0, -vocabulary % DRAW_BLOCK)))
    blocks = padded.view(batch, -1, DRAW_BLOCK)
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # (B, blocks)
    target = uniform * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, target[:, None], right=True).squeeze(1)
    block = block.clamp(max=block_cdf.shape[1] - 1)  # u * total rounded up to the total
    # the cumulative probability before each block: 0, then block_cdf shifted right by one
    block_starts = torch.nn.functional.pad(block_cdf[:, :-1], (1, 0))
    before = block_starts.gather(1, block[:, None]).squeeze(1)
    inner_cdf = blocks[torch.arange(batch, device=probs.device), block].cumsum(
        -1, dtype=torch.float64)  # (B, DRAW_BLOCK)
    inner = torch.searchsorted(inner_cdf, (target - before)[:, None], right=True).squeeze(1)
    token = block * DRAW_BLOCK + inner
    # the block's own sum and its cumsum can round apart, leaving the target just past the
    # block's end: the last token with any probability up to there
    for r in (inner == DRAW_BLOCK).nonzero().flatten().tolist():
        end = int(block[r] + 1) * DRAW_BLOCK
        token[r] = int((padded[r, :end] > 0).nonzero()[-1])
    return token


def decode(model, query: torch.Tensor, query_mask: torch.Tensor, cfg: SamplingConfig,
           pad_id: int, eos_id: int | None, row_seeds: list[int] | None = None,
           stats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """KV-cached decoding of left-padded prompts -> (B, T) new tokens (``pad_id`` after EOS).
    Finished sequences leave the batch. Draws use the global torch RNG (seed it to repeat), or
    with ``row_seeds`` one generator per row seeded with its seed.

    ``stats``: a dict that receives ``logprobs`` and ``entropy`` (B, T) of every drawn token
    under logits / temperature, unfiltered by top-k / top-p: what ``response_logprobs``
    computes, read off the decoding pass's own logits instead of a second forward (equal up to
    float rounding; 0 after EOS)."""
    from transformers import DynamicCache

    batch = query.shape[0]
    generators = (row_generators(row_seeds, query.device) if row_seeds is not None
                  and cfg.temperature > 0 else None)
    cache = DynamicCache(config=model.config)
    keyword = cache_keyword(model)
    mask = query_mask
    position = (mask.cumsum(1) - 1).clamp(min=0)
    logits = _forward(model, query, mask, position, cache, last_only=True, keyword=keyword)
    next_position = position[:, -1] + 1
    alive = torch.arange(batch, device=query.device)  # original row of each live cache row
    out = torch.full((batch, cfg.max_new_tokens), pad_id, dtype=torch.long, device=query.device)
    if stats is not None:
        for key in ("logprobs", "entropy"):
            stats[key] = torch.zeros((batch, cfg.max_new_tokens), device=query.device)
    for t in range(cfg.max_new_tokens):
        logp = None
        if stats is not None:
            scaled = logits.float()
            if cfg.temperature not in (0.0, 1.0):
                scaled = scaled / cfg.temperature
            logp = torch.log_softmax(scaled, dim=-1)
        if cfg.temperature <= 0:
            token = logits.argmax(-1)
        else:
            # drawn exactly as without the statistics: the same answers either way
            probs = torch.softmax(filter_logits(logits, cfg), dim=-1)
            token = draw(probs, generators, alive)
        out[alive, t] = token
        if logp is not None:
            stats["logprobs"][alive, t] = logp.gather(-1, token[:, None]).squeeze(-1)
            stats["entropy"][alive, t] = -(logp.exp() * logp).sum(-1)
        if t == cfg.max_new_tokens - 1:
            break
        if eos_id is not None:
            going = token != eos_id
            if not bool(going.all()):
                if not bool(going.any()):
                    break
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, mask, token = alive[keep], mask[keep], token[keep]
                next_position = next_position[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
        logits = _forward(model, token[:, None], mask, next_position[:, None], cache,
                          last_only=False, keyword=keyword)
        next_position = next_position + 1
    return out


@contextlib.contextmanager
def fixed_draw(seed: int):
    """Inside: the torch RNG seeded with ``seed``; after: the caller's RNG state (CPU and the
    current CUDA device) as it was. The same seed gives the same answers at every call, and the
    training's random stream does not move."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def sample(model, prompts: list[list[int]], pad_id: int, eos_id: int | None,
           cfg: SamplingConfig = SamplingConfig(), with_logprobs: bool = True,
           batch_size: int = 0, row_seeds: list[int] | None = None,
           engine=None, progress: str | None = None,
           with_decode_stats: bool = False) -> Rollout:
    """Sample one response per tokenised prompt (repeat a prompt for several samples). Seed the
    global torch RNG beforehand for a reproducible draw, or give each response its own seed
    (``row_seeds``, see ``row_seed``): then a response is the same whatever batch or process
    draws it. ``batch_size`` splits the generation into chunks (0: all at once).

    ``engine``: a rollout engine (``generation.vllm_engine.VLLMEngine``) that draws the tokens
    instead of this module's decoding loop; one that follows training first takes ``model``'s
    new weights. The log-probs are still ``model``'s (``response_logprobs``); ``model`` may be
    None when they are not asked for.

    ``progress``: the description of a progress bar on stderr that counts the answers as each
    chunk is done (None: no bar). The bar changes nothing that is drawn.

    ``with_decode_stats`` (this module's decoding only, not ``engine``): ``logprobs`` and
    ``entropy`` read off the decoding pass (``decode``'s ``stats``), not recomputed by a second
    forward: for evaluation, which needs no bit-exact training numerics; exclusive with
    ``with_logprobs``."""
    if not prompts:
        raise ValueError("no prompts to sample from")
    if with_decode_stats and (with_logprobs or engine is not None):
        raise ValueError("with_decode_stats reads the own decoding pass: not with "
                         "with_logprobs or a rollout engine")
    if row_seeds is not None and len(row_seeds) != len(prompts):
        raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
    step = batch_size if batch_size and len(prompts) > batch_size else len(prompts)
    if engine is not None:  # the engine writes every answer in one call
        step = len(prompts)
    if step == len(prompts) and progress is None:
        return _sample_chunk(model, prompts, pad_id, eos_id, cfg, with_logprobs, row_seeds,
                             engine, with_decode_stats)
    from alignkit.utils.logs import progress_bar

    parts = []
    with progress_bar(len(prompts), 0, progress is not None, progress or "",
                      unit="answer") as bar:
        for i in range(0, len(prompts), step):
            parts.append(_sample_chunk(
                model, prompts[i:i + step], pad_id, eos_id, cfg, with_logprobs,
                None if row_seeds is None else row_seeds[i:i + step], engine,
                with_decode_stats))
            bar.update(len(prompts[i:i + step]))
    return parts[0] if len(parts) == 1 else concat_rollouts(parts, pad_id)


def _sample_chunk(model, prompts: list[list[int]], pad_id: int, eos_id: int | None,
                  cfg: SamplingConfig, with_logprobs: bool, row_seeds: list[int] | None,
                  engine=None, with_decode_stats: bool = False) -> Rollout:
    """``sample`` of one chunk: all its prompts in one batch."""
    if engine is not None:
        return engine_sample(engine, model, prompts, pad_id, eos_id, cfg, with_logprobs,
                             row_seeds)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        query, query_mask = left_pad(prompts, pad_id)
        query, query_mask = query.to(device), query_mask.to(device)
        stats = {} if with_decode_stats else None
        response = decode(model, query, query_mask, cfg, pad_id, eos_id, row_seeds, stats)
        # real tokens: everything up to and including the first EOS
        if eos_id is not None:
            is_eos = response == eos_id
            before_eos = (is_eos.cumsum(1) - is_eos.long()) == 0
            ended = is_eos.any(1)
        else:
            before_eos = torch.ones_like(response, dtype=torch.bool)
            ended = torch.zeros(response.shape[0], dtype=torch.bool, device=device)
        response_mask = before_eos.long()
        response = torch.where(before_eos, response, torch.full_like(response, pad_id))
        width = max(int(response_mask.sum(1).max()), 1)  # no all-padding columns to train on
        response, response_mask = response[:, :width], response_mask[:, :width]
        logprobs = entropy = None
        if with_logprobs:
            logprobs = response_logprobs(model, query, query_mask, response, response_mask,
                                         cfg.temperature or 1.0)["logprobs"]
        if stats is not None:
            real = response_mask.to(stats["logprobs"].dtype)
            logprobs, entropy = (stats[key][:, :width] * real for key in ("logprobs", "entropy"))
        return Rollout(query, query_mask, response, response_mask, logprobs, ended,
                       entropy=entropy)
    finally:
        model.train(was_training)


def engine_sample(engine, model, prompts: list[list[int]], pad_id: int, eos_id: int | None,
                  cfg: SamplingConfig, with_logprobs: bool,
                  row_seeds: list[int] | None) -> Rollout:
    """``sample`` through a rollout engine: the same Rollout (queries left-padded, responses up
    to and including EOS, right-padded), plus the engine's own log-probs of the tokens. Without
    ``row_seeds`` each answer's seed is drawn from the torch RNG."""
    if getattr(engine, "follow_updates", False) and model is not None:
        engine.push(model)
    seeds = (list(row_seeds) if row_seeds is not None
             else torch.randint(0, 2 ** 62, (len(prompts),)).tolist())
    answers = engine.generate(prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                              cfg.top_k, eos_id, seeds)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    query, query_mask = left_pad(prompts, pad_id)
    width = max(max(len(a.token_ids) for a in answers), 1)
    response = torch.full((len(answers), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(answers), width), dtype=torch.long)
    engine_logprobs = torch.zeros((len(answers), width), dtype=torch.float32)
    for r, answer in enumerate(answers):
        n = len(answer.token_ids)
        response[r, :n] = torch.tensor(answer.token_ids, dtype=torch.long)
        response_mask[r, :n] = 1
        engine_logprobs[r, :len(answer.logprobs)] = torch.tensor(answer.logprobs,
                                                                 dtype=torch.float32)
    ended = torch.tensor([a.ended for a in answers], dtype=torch.bool)
    query, query_mask, response, response_mask, ended, engine_logprobs = (
        x.to(device) for x in (query, query_mask, response, response_mask, ended,
                               engine_logprobs))
    logprobs = None
    if with_logprobs:
        was_training = model.training
        model.eval()
        try:
            logprobs = response_logprobs(model, query, query_mask, response, response_mask,
                                         cfg.temperature or 1.0)["logprobs"]
        finally:
            model.train(was_training)
    return Rollout(query, query_mask, response, response_mask, logprobs, ended,
                   engine_logprobs * response_mask)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different widths (queries re-left-padded, responses re-right-padded)."""
    lq = max(p.query.shape[1] for p in parts)
    t = max(p.response.shape[1] for p in parts)

    def pad(x, width, value, left):
        extra = width - x.shape[1]
        if extra == 0:
            return x
        fill = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
        return torch.cat([fill, x] if left else [x, fill], 1)

    return Rollout(
        torch.cat([pad(p.query, lq, pad_id, True) for p in parts]),
        torch.cat([pad(p.query_mask, lq, 0, True) for p in parts]),
        torch.cat([pad(p.response, t, pad_id, False) for p in parts]),
        torch.cat([pad(p.response_mask, t, 0, False) for p in parts]),
        None if any(p.logprobs is None for p in parts) else
        torch.cat([pad(p.logprobs, t, 0.0, False) for p in parts]),
        torch.cat([p.ended for p in parts]),
        None if any(p.engine_logprobs is None for p in parts) else
        torch.cat([pad(p.engine_logprobs, t, 0.0, False) for p in parts]),
        None if any(p.entropy is None for p in parts) else
        torch.cat([pad(p.entropy, t, 0.0, False) for p in parts]))
