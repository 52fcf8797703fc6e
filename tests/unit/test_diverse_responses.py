"""Diverse candidates for labelling: K answers shared out over temperatures and the model before
fine-tuning, each source on its own seeded streams; one source is ``sample_responses`` exactly."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def items(n: int) -> list[dict]:
    return [{"prompt": f"Say something about topic {i}.", "responses": None} for i in range(n)]


def test_one_source_is_sample_responses_and_sources_are_shared_out(tiny_model_dir):
    import torch

    from alignkit.generation.responses import sample_diverse_responses, sample_responses
    from alignkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
    plain, diverse = items(3), items(3)
    sample_responses(model, tok, plain, 3, 6, 1.0, 1.0, 16, seed=5)
    sample_diverse_responses(model, tok, diverse, 3, 6, [1.0], seed=5)
    assert [i["responses"] for i in diverse] == [i["responses"] for i in plain]
    assert [i["ended"] for i in diverse] == [i["ended"] for i in plain]

    # K = 4: one answer from the "base" model, three from the policy over two temperatures
    # (0.5, 2.0, 0.5 in turn: two at 0.5 first, then one at 2.0)
    base = load_model_and_tokenizer(str(tiny_model_dir), "cpu")[0]
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))  # another model than the policy
    mixed = items(2)
    sample_diverse_responses(model, tok, mixed, 4, 6, [0.5, 2.0], seed=5, base_model=base,
                             base_responses=1)
    assert all(len(i["responses"]) == 4 and len(i["ended"]) == 4 for i in mixed)
    # each block equals that source alone: source k on seed + 7919 k
    at_half, at_two, from_base = items(2), items(2), items(2)
    sample_responses(model, tok, at_half, 2, 6, 0.5, 1.0, 16, seed=5)
    sample_responses(model, tok, at_two, 1, 6, 2.0, 1.0, 16, seed=5 + 7919)
    sample_responses(base, tok, from_base, 1, 6, 1.0, 1.0, 16, seed=5 + 2 * 7919)
    for i, item in enumerate(mixed):
        assert item["responses"] == (at_half[i]["responses"] + at_two[i]["responses"]
                                     + from_base[i]["responses"])
    with pytest.raises(ValueError):
        sample_diverse_responses(model, tok, items(1), 2, 6, [1.0], seed=5, base_model=base,
                                 base_responses=2)
