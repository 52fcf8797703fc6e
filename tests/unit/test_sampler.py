"""The shared sampler: per-sequence EOS stops, masks, seeded draws, and log-probs equal to the
training forward's."""

from __future__ import annotations

import pytest
import torch

from alignkit.generation.sampler import (SamplingConfig, concat_rollouts, left_pad,
                                         response_logprobs, sample)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    from alignkit.models.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer, seed=1).eval()


def prompts(tok):
    texts = ["Hello there", "What is two plus two?", "A"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_masks_stop_at_each_sequences_own_eos(model, tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    # an EOS bias makes some sequences stop early while others run to the limit
    from alignkit.models.tiny import build_tiny_model

    biased = build_tiny_model(tiny_tokenizer, seed=1).eval()
    head = torch.nn.Linear(biased.config.hidden_size, len(tiny_tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(biased.lm_head.weight)
        head.bias.zero_()
        head.bias[eos] = 4.0
    biased.lm_head = head
    torch.manual_seed(0)
    r = sample(biased, prompts(tiny_tokenizer) * 4, pad, eos, SamplingConfig(max_new_tokens=12))
    assert r.ended.any() and not r.ended.all()
    for row, mask, ended in zip(r.response.tolist(), r.response_mask.tolist(), r.ended.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)  # real tokens first, then padding
        if ended:
            assert row[n - 1] == eos and eos not in row[:n - 1]  # EOS is the last real token
            assert all(t == pad for t in row[n:])
        else:
            assert n == 12 and eos not in row
    assert (r.logprobs[r.response_mask == 0] == 0).all()
    assert (r.logprobs[r.response_mask == 1] < 0).all()


def test_logprobs_equal_the_training_forward_and_the_draw_is_seeded(model, tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=50)
    torch.manual_seed(3)
    a = sample(model, prompts(tiny_tokenizer), pad, eos, cfg)
    torch.manual_seed(3)
    b = sample(model, prompts(tiny_tokenizer), pad, eos, cfg)
    assert torch.equal(a.response, b.response) and torch.equal(a.logprobs, b.logprobs)
    # recomputed in one training-style forward, each sequence alone (no padding at all)
    for i in range(3):
        n = int(a.response_mask[i].sum())
        q = a.query[i][a.query_mask[i] == 1][None]
        alone = response_logprobs(model, q, torch.ones_like(q), a.response[i, :n][None],
                                  torch.ones((1, n), dtype=torch.long), 0.7)["logprobs"][0]
        torch.testing.assert_close(a.logprobs[i, :n], alone, atol=1e-5, rtol=1e-5)
    # the same tokens by hand: log_softmax(logits / T) of the full model's forward
    ids, mask = a.input_ids, a.attention_mask
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    lq = a.query.shape[1]
    want = torch.log_softmax(logits[:, lq - 1:-1] / 0.7, -1).gather(
        -1, a.response[..., None])[..., 0] * a.response_mask
    torch.testing.assert_close(a.logprobs, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [SamplingConfig(10, temperature=0.7, top_p=0.9, top_k=50),
                                 SamplingConfig(10), SamplingConfig(10, temperature=0.0)],
                         ids=["filtered", "plain", "greedy"])
def test_decode_stats_equal_a_second_forward_and_draw_the_same_answers(model, tiny_tokenizer,
                                                                       cfg):
    """``with_decode_stats``: the log-probs and entropy read off the decoding pass are the
    second forward's (``response_logprobs`` at the sampling temperature, top-k / top-p not
    applied), and the answers are those drawn without them, chunked or not."""
    from alignkit.generation.sampler import row_seed

    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    p = prompts(tiny_tokenizer) * 3
    seeds = [row_seed(5, i) for i in range(len(p))]
    plain = sample(model, p, pad, eos, cfg, with_logprobs=False, row_seeds=seeds)
    stats = sample(model, p, pad, eos, cfg, with_logprobs=False, row_seeds=seeds,
                   with_decode_stats=True, batch_size=4)
    assert plain.logprobs is None and plain.entropy is None
    assert torch.equal(stats.response, plain.response)
    assert torch.equal(stats.response_mask, plain.response_mask)
    want = response_logprobs(model, stats.query, stats.query_mask, stats.response,
                             stats.response_mask, cfg.temperature or 1.0, with_entropy=True)
    torch.testing.assert_close(stats.logprobs, want["logprobs"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.entropy, want["entropy"], atol=1e-5, rtol=1e-5)
    real = stats.response_mask == 1
    assert (stats.entropy[real] > 0).all() and (stats.entropy[~real] == 0).all()
    assert (stats.logprobs[~real] == 0).all()
    with pytest.raises(ValueError, match="with_decode_stats"):
        sample(model, p, pad, eos, cfg, with_decode_stats=True)


def test_top_k_one_and_greedy_agree(model, tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    greedy = sample(model, prompts(tiny_tokenizer), pad, eos, SamplingConfig(8, temperature=0.0))
    torch.manual_seed(9)
    top1 = sample(model, prompts(tiny_tokenizer), pad, eos, SamplingConfig(8, top_k=1))
    assert torch.equal(greedy.response, top1.response)


def test_chunked_sampling_concatenates(model, tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    p = prompts(tiny_tokenizer)
    whole = sample(model, p, pad, eos, SamplingConfig(6, temperature=0.0))
    parts = sample(model, p, pad, eos, SamplingConfig(6, temperature=0.0), batch_size=2)
    for i in range(3):
        n = int(whole.response_mask[i].sum())
        assert parts.response[i, :n].tolist() == whole.response[i, :n].tolist()
    both = concat_rollouts([whole.select(torch.tensor([0])), whole.select(torch.tensor([2]))],
                           pad)
    assert both.query.shape[0] == 2 and both.response_mask.shape == both.response.shape


def test_row_seeds_make_each_response_independent_of_its_batch(model, tiny_tokenizer):
    from alignkit.generation.sampler import row_seed

    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    p = prompts(tiny_tokenizer)
    seeds = [row_seed(7, 0, i) for i in range(len(p))]
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    whole = sample(model, p, pad, eos, cfg, row_seeds=seeds)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global stream is not used
    # each prompt alone, in reverse order, after other draws: the same tokens
    torch.manual_seed(123)
    for i in reversed(range(len(p))):
        alone = sample(model, [p[i]], pad, eos, cfg, row_seeds=[seeds[i]])
        n = int(whole.response_mask[i].sum())
        assert int(alone.response_mask[0].sum()) == n
        assert alone.response[0, :n].tolist() == whole.response[i, :n].tolist()
        torch.testing.assert_close(alone.logprobs[0, :n], whole.logprobs[i, :n], atol=1e-5,
                                   rtol=1e-5)
    # other seeds, other answers (10 tokens of a random model: a repeat is vanishingly rare)
    other = sample(model, p, pad, eos, cfg, row_seeds=[row_seed(8, 0, i) for i in range(len(p))])
    assert other.response.tolist() != whole.response.tolist()
    assert row_seed(7, 0, 1) != row_seed(7, 1, 0) and 0 <= row_seed(1, 2, 3) < 2**63
    with pytest.raises(ValueError, match="2 row seeds for 3 prompts"):
        sample(model, p, pad, eos, cfg, row_seeds=seeds[:2])


def test_sampling_emits_no_deprecation_warning(model, tiny_tokenizer):
    """The KV cache goes to the model under the keyword its ``forward`` names (``cache`` in
    recent transformers, where ``past_key_values`` warns with a FutureWarning at every step)."""
    import warnings

    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        sample(model, prompts(tiny_tokenizer) * 2, pad, eos, SamplingConfig(6), batch_size=4)
        sample(model, prompts(tiny_tokenizer), pad, eos, SamplingConfig(6, temperature=0.0))
    deprecations = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
                    for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning,
                                                               PendingDeprecationWarning))]
    assert deprecations == []


def test_the_cache_keyword_follows_the_models_forward(model):
    import inspect

    from alignkit.generation.sampler import cache_keyword

    names = inspect.signature(model.forward).parameters
    assert cache_keyword(model) == ("cache" if "cache" in names else "past_key_values")

    class OlderModel(torch.nn.Module):  # a transformers 4.x forward
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    class Wrapper(torch.nn.Module):  # a peft model: **kwargs handed to the model inside
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_base_model(self):
            return self.inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    assert cache_keyword(OlderModel()) == "past_key_values"
    assert cache_keyword(Wrapper(model)) == cache_keyword(model)
    assert cache_keyword(Wrapper(OlderModel())) == "past_key_values"


def test_a_progress_bar_changes_nothing_drawn(model, tiny_tokenizer, capsys):
    from alignkit.generation.sampler import row_seed

    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    p = prompts(tiny_tokenizer) * 3
    seeds = [row_seed(5, i) for i in range(len(p))]
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    plain = sample(model, p, pad, eos, cfg, batch_size=4, row_seeds=seeds)
    shown = sample(model, p, pad, eos, cfg, batch_size=4, row_seeds=seeds,
                   progress="sampling answers")
    assert torch.equal(plain.response, shown.response)
    assert torch.equal(plain.logprobs, shown.logprobs) and torch.equal(plain.ended, shown.ended)
    # one chunk with a bar: the same rollout as without
    whole = sample(model, p, pad, eos, cfg, row_seeds=seeds, progress="one chunk")
    assert torch.equal(whole.response, sample(model, p, pad, eos, cfg, row_seeds=seeds).response)
    # and with the global RNG: the chunks draw in the same order
    torch.manual_seed(4)
    a = sample(model, p, pad, eos, cfg, batch_size=4)
    torch.manual_seed(4)
    b = sample(model, p, pad, eos, cfg, batch_size=4, progress="sampling answers")
    assert torch.equal(a.response, b.response)
    err = capsys.readouterr().err
    assert "sampling answers" in err and "9/9" in err and "one chunk" in err


def slow_inverse_cdf(probs: torch.Tensor, seed: int) -> int:
    """The reference draw of one row: the uniform its stream gives first, then the first token
    whose float64 cumulative probability exceeds u times the total, by a Python loop."""
    u = float(torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    target, running = u * float(probs.double().sum()), 0.0
    for token, p in enumerate(probs.double().tolist()):
        running += p
        if running > target:
            return token
    raise AssertionError("no token")


@pytest.mark.parametrize("vocabulary", [700, 512, 49])
def test_a_seeded_draw_is_the_inverse_cdf_of_its_rows_own_uniform(vocabulary):
    from alignkit.generation.sampler import draw, row_generators

    rows = 40
    logits = torch.randn(rows, vocabulary, generator=torch.Generator().manual_seed(vocabulary))
    probs = torch.softmax(3 * logits, -1)
    # zeroed tokens and whole zero blocks (top-k / top-p leave rows like these)
    probs[:, 5:300] = 0
    probs[::3, vocabulary // 2:] = 0
    probs /= probs.sum(-1, keepdim=True)
    seeds = [row * 7919 + vocabulary for row in range(rows)]
    tokens = draw(probs, row_generators(seeds, "cpu"), torch.arange(rows))
    assert tokens.tolist() == [slow_inverse_cdf(probs[r], seeds[r]) for r in range(rows)]
    assert bool((probs.gather(1, tokens[:, None]) > 0).all())
    # a live row keeps its own stream: rows 3 and 1 alone draw what they drew in the batch
    again = draw(probs[[3, 1]], row_generators(seeds, "cpu"), torch.tensor([3, 1]))
    assert again.tolist() == [tokens[3].item(), tokens[1].item()]


def test_a_draw_follows_the_probabilities():
    from alignkit.generation.sampler import draw, row_generators

    probs = torch.zeros(1, 700)
    probs[0, [3, 300, 699]] = torch.tensor([0.2, 0.5, 0.3])
    generator = row_generators([11], "cpu")
    counts = torch.bincount(torch.cat([draw(probs, generator, torch.tensor([0]))
                                       for _ in range(4000)]), minlength=700)
    assert set(counts.nonzero().flatten().tolist()) == {3, 300, 699}
    # binomial standard errors at 4000 draws: under 0.008; 4 of them apart would fail
    assert counts[[3, 300, 699]].double().div(4000).sub(torch.tensor(
        [0.2, 0.5, 0.3], dtype=torch.float64)).abs().max() < 0.03


def test_a_target_rounded_up_to_the_total_draws_the_last_token_with_any_probability(monkeypatch):
    from alignkit.generation import sampler

    probs = torch.zeros(2, 600)
    probs[0, [10, 260]] = torch.tensor([0.25, 0.75])
    probs[1, [599]] = 1.0
    # u = 1: the target is the total, past every token's interval (u * total rounds there once
    # in 2**53 draws)
    monkeypatch.setattr(sampler.torch, "rand", lambda *a, **k: torch.ones(1, dtype=torch.float64))
    tokens = sampler.draw(probs, sampler.row_generators([1, 2], "cpu"), torch.arange(2))
    assert tokens.tolist() == [260, 599]


def test_columns_no_row_uses_are_cut_before_the_forward_and_padded_back(model, tiny_tokenizer):
    from alignkit.generation.sampler import trim_padding

    pad = tiny_tokenizer.pad_token_id
    query, query_mask = left_pad(prompts(tiny_tokenizer)[:2], pad)
    response = torch.tensor([[5, 6, 7, pad], [8, 9, pad, pad]])
    response_mask = (response != pad).long()
    # the same rows as a slice of a wider rollout: 3 more query columns on the left, 4 more
    # response columns on the right, none of them used
    wide_query = torch.cat([torch.full((2, 3), pad), query], 1)
    wide_query_mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), query_mask], 1)
    wide_response = torch.cat([response, torch.full((2, 4), pad)], 1)
    wide_response_mask = torch.cat([response_mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    cut = trim_padding(wide_query, wide_query_mask, wide_response, wide_response_mask)
    assert [t.shape[1] for t in cut] == [query.shape[1], query.shape[1], 3, 3]
    assert torch.equal(cut[0], query) and torch.equal(cut[2], response[:, :3])
    tight = response_logprobs(model, query, query_mask, response, response_mask,
                              with_entropy=True)
    wide = response_logprobs(model, wide_query, wide_query_mask, wide_response,
                             wide_response_mask, with_entropy=True)
    for key in ("logprobs", "entropy"):
        assert wide[key].shape == (2, 8)
        assert torch.allclose(wide[key][:, :4], tight[key], atol=1e-6)
        assert (wide[key][:, 3:] == 0).all()
        assert (tight[key][response_mask == 1] != 0).all()
