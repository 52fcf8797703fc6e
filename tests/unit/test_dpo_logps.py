"""DPO's one-forward log-probs: every layout (padded; packed; packed with each prompt run once for
all its responses and a shared system prompt once per row) gives each response exactly the summed
log-prob, and the gradient, of running it alone through the model."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.preferences import (PreferencePair, build_groups, collate_groups,
                                       collate_groups_packed)
from alignkit.data.schemas import RankingExample
from alignkit.data.tokenize import IGNORE
from alignkit.training.preference import sequence_logps

pytestmark = pytest.mark.unit

SYSTEM = [{"role": "system", "content": "You are a careful assistant."}]


def examples():
    return [
        RankingExample(SYSTEM + [{"role": "user", "content": "Name a colour of the sky."}],
                       ["Blue.", "Blue on a clear day.", "Green, obviously.", "?"], [1, 0, 2, 3]),
        PreferencePair(SYSTEM + [{"role": "user", "content": "Say hi"}], "Hi! How can I help?",
                       "Hi."),
        PreferencePair(SYSTEM + [{"role": "user", "content": "Two plus two?"}], "Four.",
                       "Twenty-two, since you put the twos side by side."),
        PreferencePair("Plain prompt, no system", "An answer.", ""),
    ]


def alone(model, groups):
    """Reference: each response's full sequence alone, log-softmax over all positions."""
    out = []
    for g in groups:
        for ids, targets in zip(g.input_ids, g.targets):
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            keep = [t for t, y in enumerate(targets) if y != IGNORE]
            out.append(sum(logp[t, targets[t]] for t in keep))
    return torch.stack(out)


@pytest.mark.parametrize("layout", ["padded", "packed", "packed-shared"])
def test_every_layout_gives_each_response_its_own_logp_and_gradient(tiny_tokenizer, layout):
    from alignkit.models.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, seed=1).eval()
    groups, problems = build_groups(examples(), tiny_tokenizer, "policy")
    assert not problems and all(g.targets for g in groups)
    # targets are the response tokens only (the end-of-turn token included), one per position
    g = groups[1]
    learned = [y for y in g.targets[1] if y != IGNORE]
    assert tiny_tokenizer.decode(learned).startswith("Hi.")
    if layout == "padded":
        batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    else:
        batch = collate_groups_packed(groups, tiny_tokenizer.pad_token_id, 4096, causal=True,
                                      share_prefix=layout == "packed-shared")
        assert batch.input_ids.shape[0] == 1
    if layout == "packed-shared":
        assert batch.computed_tokens < 0.6 * batch.num_tokens

    want = alone(model, groups)
    got, counts = sequence_logps(model, batch)
    assert got.shape == want.shape == (10,)  # 4 ranked + 3 pairs x 2
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert counts.tolist() == [sum(y != IGNORE for y in t) for g in groups for t in g.targets]

    # the gradient of any weighted sum matches too
    w = torch.linspace(-1.0, 1.0, len(want))
    model.zero_grad()
    (alone(model, groups) * w).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (sequence_logps(model, batch)[0] * w).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-4), n
