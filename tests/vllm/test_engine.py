"""The vLLM engine behind ``sampler.sample``: the tokens the own sampler draws greedily, after
a full-weight update and after a LoRA update (adapter and merged sync), seeded answers that do
not depend on the batch, and the engine's log-probs against the training forward's."""

from __future__ import annotations

import pytest
import torch

from alignkit.generation.sampler import SamplingConfig, row_seed, sample

pytestmark = pytest.mark.smoke

TEXTS = ["hello there", "the cat sat on the", "a b c d", "what is it", "one more prompt here",
         "x"]


@pytest.fixture(scope="module")
def tiny(vllm_tiny_dir):
    from alignkit.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(vllm_tiny_dir))
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    return model, tok, prompts


def both(model, tok, prompts, engine, cfg=SamplingConfig(24, 0.0), **kw):
    own = sample(model, prompts, tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=True,
                 **kw)
    vllm = sample(model, prompts, tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=True,
                  engine=engine, **kw)
    return own, vllm


def train_a_little(model, prompts, lr: float, steps: int = 3):
    """A few fused-AdamW steps (fused: it writes parameters without bumping their version
    counters, which the engine must not rely on)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=True)
    for _ in range(steps):
        ids = torch.tensor([prompts[1]])
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def test_greedy_tokens_and_full_weight_update(vllm_tiny_dir, tiny):
    from alignkit.generation.vllm_engine import VLLMEngine

    model, tok, prompts = tiny
    model = __import__("copy").deepcopy(model)
    engine = VLLMEngine(str(vllm_tiny_dir), follow_updates=True)
    own, vllm = both(model, tok, prompts, engine)
    assert torch.equal(own.response, vllm.response) and torch.equal(own.ended, vllm.ended)
    assert torch.equal(own.response_mask, vllm.response_mask)
    # the log-probs that train are the model's own; the engine's are within fp32 rounding
    torch.testing.assert_close(vllm.logprobs, own.logprobs, rtol=0, atol=1e-6)
    assert float((vllm.engine_logprobs - vllm.logprobs).abs().max()) < 1e-4
    assert engine.stats["pushes"] == 1
    train_a_little(model, prompts, lr=5e-2)
    own, vllm = both(model, tok, prompts, engine)
    assert torch.equal(own.response, vllm.response), "the engine did not take the new weights"
    assert engine.stats["pushes"] == 2
    both(model, tok, prompts, engine)
    assert engine.stats["pushes"] == 2  # unchanged weights are not pushed again
    engine.close()


@pytest.mark.parametrize("sync", ["adapter", "merged"])
def test_lora_update_reaches_the_engine(vllm_tiny_dir, tiny, sync):
    from alignkit.generation.vllm_engine import VLLMEngine
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.lora import add_lora

    _, tok, prompts = tiny
    model = add_lora(load_causal_lm(str(vllm_tiny_dir)), 8, 16, 0.0, "q_proj,v_proj,o_proj")
    engine = VLLMEngine(str(vllm_tiny_dir), follow_updates=True, lora_rank=8, sync=sync)
    before, _ = both(model, tok, prompts, engine)
    train_a_little(model, prompts, lr=1e-1)
    own, vllm = both(model, tok, prompts, engine)
    assert not torch.equal(before.response, own.response), "the update changed nothing"
    assert torch.equal(own.response, vllm.response)
    assert float((vllm.engine_logprobs - vllm.logprobs).abs().max()) < 1e-4
    assert engine.stats["adapter_pushes"] == (2 if sync == "adapter" else 0)
    assert engine.stats["pushes"] == 2
    assert model.peft_config  # the adapter is still the model's: nothing was merged into it
    engine.close()


def test_seeded_answers_do_not_depend_on_the_batch(vllm_tiny_dir, tiny):
    from alignkit.generation.vllm_engine import VLLMEngine

    model, tok, prompts = tiny
    engine = VLLMEngine(str(vllm_tiny_dir))
    cfg = SamplingConfig(16, 1.0, top_p=0.9, top_k=50)
    seeds = [row_seed(7, i) for i in range(len(prompts))]
    whole = sample(None, prompts, tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=False,
                   row_seeds=seeds, engine=engine)
    again = sample(None, prompts, tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=False,
                   row_seeds=seeds, engine=engine)
    alone = [sample(None, [p], tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=False,
                    row_seeds=[s], engine=engine) for p, s in zip(prompts[::-1], seeds[::-1])]
    assert torch.equal(whole.response, again.response)
    for r, one in zip(range(len(prompts) - 1, -1, -1), alone):
        n = int(one.response_mask.sum())
        assert whole.response[r, :n].tolist() == one.response[0, :n].tolist()
        assert int(whole.response_mask[r].sum()) == n
    other = sample(None, prompts, tok.pad_token_id, tok.eos_token_id, cfg, with_logprobs=False,
                   row_seeds=[row_seed(8, i) for i in range(len(prompts))], engine=engine)
    assert not torch.equal(other.response, whole.response)
    # top-k 1 is greedy, whatever the temperature
    greedy = sample(model, prompts, tok.pad_token_id, tok.eos_token_id, SamplingConfig(16, 0.0),
                    with_logprobs=False)
    top1 = sample(None, prompts, tok.pad_token_id, tok.eos_token_id,
                  SamplingConfig(16, 1.5, top_k=1), with_logprobs=False, row_seeds=seeds,
                  engine=engine)
    assert torch.equal(greedy.response, top1.response)
    # an answer cut at the length limit has not ended; the EOS it stops at is kept
    assert set(whole.ended.tolist()) <= {True, False}
    for r in range(len(prompts)):
        n = int(whole.response_mask[r].sum())
        assert bool(whole.ended[r]) == (whole.response[r, n - 1] == tok.eos_token_id)
        assert bool(whole.ended[r]) or n == 16
    engine.close()


@pytest.mark.slow
def test_packaged_model_greedy_tokens_match(tmp_path):
    """SmolLM2-135M: 16 chat prompts, 32 greedy tokens, identical from both engines; the
    engine's fp32 log-probs within 1e-4 of the training forward's."""
    from alignkit.data.prompts import load_prompts
    from alignkit.generation.vllm_engine import VLLMEngine
    from alignkit.models.loading import load_model_and_tokenizer, resolve_model

    model, tok = load_model_and_tokenizer("default")
    prompts = load_prompts("demo-prompts-heldout", tok, "auto", 256, False).ids[:16]
    engine = VLLMEngine(resolve_model("default"))
    own, vllm = both(model, tok, prompts, engine, SamplingConfig(32, 0.0))
    same = [own.response[r].tolist() == vllm.response[r].tolist() for r in range(16)]
    assert sum(same) == 16, same
    gap = (vllm.engine_logprobs - vllm.logprobs).abs() * vllm.response_mask
    assert float(gap.max()) < 1e-3
    engine.close()


def test_serve_folder_switches_to_another_models_weights(vllm_tiny_dir, tiny, tmp_path):
    """The demo's one engine: reloading another folder of the same architecture in place gives
    that model's greedy answers (and back)."""
    import copy

    from alignkit.generation.vllm_engine import VLLMEngine

    model, tok, prompts = tiny
    other = copy.deepcopy(model)
    train_a_little(other, prompts, lr=5e-2)
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    engine = VLLMEngine(str(vllm_tiny_dir))
    cfg = SamplingConfig(16, 0.0)

    def greedy(m, with_engine):
        return sample(m if not with_engine else None, prompts, tok.pad_token_id,
                      tok.eos_token_id, cfg, with_logprobs=False,
                      engine=engine if with_engine else None).response

    assert not torch.equal(greedy(model, False), greedy(other, False))
    engine.serve_folder(str(other_dir))
    assert torch.equal(greedy(None, True), greedy(other, False))
    engine.serve_folder(str(vllm_tiny_dir))
    assert torch.equal(greedy(None, True), greedy(model, False))
    engine.close()
