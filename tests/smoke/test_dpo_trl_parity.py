"""Parity with the peer: on identical token ids, model weights and reference, alignkit's DPO loss,
implicit rewards and log-probs equal TRL ``DPOTrainer``'s own (its ``_compute_loss``) to 1e-5,
for every loss both implement. TRL is pinned in the [dev] extra, so this runs wherever the suite
runs; without it the module fails to import (a loud error, never a silent skip)."""

from __future__ import annotations

import json

import pytest
import torch
import trl  # noqa: F401  (the peer under comparison: its absence must fail, not skip)

pytestmark = pytest.mark.smoke


PAIRS = [
    {"prompt": "Name a colour of the sky.", "chosen": "Blue on a clear day.",
     "rejected": "Green, obviously."},
    {"prompt": "Say hi", "chosen": "Hi! How can I help?", "rejected": "no"},
    {"prompt": "Two plus two?", "chosen": "Four.",
     "rejected": "Twenty-two, since you put the twos side by side."},
]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    torch.manual_seed(7)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy, ref


@pytest.mark.parametrize("loss,eps", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0),
                                      ("robust", 0.1)])
def test_loss_rewards_and_logps_equal_trl(models, tiny_model_dir, tmp_path, loss, eps):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from alignkit.config import DPOConfig
    from alignkit.data.preferences import collate_groups_packed, load_preference_groups
    from alignkit.data.tokenize import IGNORE
    from alignkit.training.preference import pair_losses, sequence_logps

    policy, ref = models
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    beta = 0.3

    # alignkit: whole groups packed into one row, each prompt run once for both responses
    groups, _ = load_preference_groups(str(path), tok, "policy")
    batch = collate_groups_packed(groups, tok.pad_token_id, 4096, causal=True)
    with torch.no_grad():
        pol_logps, counts = sequence_logps(policy, batch)
        ref_logps, _ = sequence_logps(ref, batch)
    cfg = DPOConfig(data=str(path), loss=loss, beta=beta, label_smoothing=eps)
    ours = pair_losses(pol_logps, ref_logps, counts, batch, cfg)

    # TRL: the same ids (prompt = tokens before the first learned one), one pair per call
    args = TRLConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=[loss],
                     label_smoothing=eps, use_cpu=True, bf16=False, report_to="none",
                     max_length=None, precompute_ref_log_probs=False, disable_dropout=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list(PAIRS))
    trainer.model.eval()
    collator = trainer.data_collator
    for i, g in enumerate(groups):
        seqs = []
        for k in (g.pairs[0].better, g.pairs[0].worse):
            start = next(t for t, y in enumerate(g.targets[k]) if y != IGNORE) + 1
            seqs.append((g.input_ids[k][:start], g.input_ids[k][start:]))
        assert seqs[0][0] == seqs[1][0]  # the same prompt tokens for both
        inputs = collator([{"prompt_ids": seqs[0][0], "chosen_ids": seqs[0][1],
                            "rejected_ids": seqs[1][1]}])
        trainer._metrics["eval"].clear()  # TRL logs under "eval" when the model is in eval mode
        with torch.no_grad():
            trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
        m = trainer._metrics["eval"]
        assert float(trl_loss) == pytest.approx(float(ours["dpo"][i]), abs=1e-5)
        assert m["rewards/chosen"][-1] == pytest.approx(float(ours["chosen_rewards"][i]), abs=1e-5)
        assert m["rewards/rejected"][-1] == pytest.approx(float(ours["rejected_rewards"][i]),
                                                          abs=1e-5)
        assert m["logps/chosen"][-1] == pytest.approx(float(ours["chosen_logps"][i]), abs=1e-4)
    assert ours["dpo"].abs().sum() > 0 and (ours["chosen_rewards"] != 0).all()
