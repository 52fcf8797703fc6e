"""``alignkit reward`` and ``alignkit score`` as subprocesses on a tiny causal backbone: an
ensemble learns an easy preference, saves a folder that reloads with one call, and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke


def write_prefs(path: Path, n: int = 120) -> Path:
    """chosen = the shipped demonstration; rejected = the prompt parroted back (an easy signal)."""
    from alignkit.data.readers import read_records

    recs = [r.fields for r in read_records("demo")][:n]
    with path.open("w") as fh:
        for i, r in enumerate(recs):
            fh.write(json.dumps({"prompt": r["prompt"], "chosen": r["completion"],
                                 "rejected": r["prompt"] + " " + r["prompt"],
                                 "annotator": f"ann-{i % 3}"}) + "\n")
    return path


def test_reward_ensemble_trains_saves_reloads_and_scores(tiny_model_dir, tmp_path):
    prefs = write_prefs(tmp_path / "prefs.jsonl")
    out = tmp_path / "rm"
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(out), "--ensemble", "2", "--max-steps", "40", "--lr", "0.003",
                   "--eval-fraction", "0.2", "--combine", "mean_minus_std", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 40
    first = sum(r["loss"] for r in train[:5]) / 5
    last = sum(r["loss"] for r in train[-5:]) / 5
    assert last < first - 0.2  # the Bradley-Terry loss falls
    final_eval = [r for r in rows if r["split"] == "eval"][-1]
    assert final_eval["accuracy"] >= 0.8 and final_eval["pairs"] == 24
    assert {"member0_accuracy", "member1_accuracy", "std_auroc_vs_mistakes"} <= set(final_eval)

    from alignkit.models.reward import RewardModel
    model = RewardModel.load(out / "final")
    assert model.spec.members == 2 and model.spec.backbone == "causal"
    train_like = json.loads(prefs.read_text().splitlines()[0])
    s = model.score([train_like["prompt"]] * 2, [train_like["chosen"], train_like["rejected"]])
    assert s.members.shape == (2, 2, 1)
    assert float(s.combined[0]) > float(s.combined[1])
    # mean_minus_std: combined = mean - 1 * population std over members
    expect = s.per_member.mean(0) - s.per_member.std(0, unbiased=False)
    assert s.combined.tolist() == pytest.approx(expect.tolist(), abs=1e-6)

    scores = tmp_path / "scores.jsonl"
    proc = run_cli("score", "--reward-model", str(out / "final"), "--data", str(prefs),
                   "--output", str(scores))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in scores.read_text().splitlines()]
    assert len(lines) == 120
    r = lines[0]["rewards"]
    assert set(r) == {"chosen", "rejected"} and len(r["chosen"]["members"]) == 2
    wins = sum(ln["rewards"]["chosen"]["reward"] > ln["rewards"]["rejected"]["reward"]
               for ln in lines)
    assert wins >= 100

    # each member is a plain transformers sequence classifier scoring what alignkit score wrote
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    records = [json.loads(ln) for ln in prefs.read_text().splitlines()][:6]
    for m in range(2):
        member = AutoModelForSequenceClassification.from_pretrained(str(out / "final" /
                                                                        f"member-{m}")).eval()
        tok = AutoTokenizer.from_pretrained(str(out / "final" / f"member-{m}"))
        texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                          {"role": "assistant", "content": r[side]}],
                                         tokenize=False)
                 for r in records for side in ("chosen", "rejected")]
        with torch.no_grad():
            logits = member(**tok(texts, padding=True, add_special_tokens=False,
                                  return_tensors="pt")).logits[:, 0]
        got = logits + member.config.score_offset[0]
        want = [ln["rewards"][side]["members"][m] for ln in lines[:6]
                for side in ("chosen", "rejected")]
        assert got.tolist() == pytest.approx(want, abs=1e-5), m
    card = (out / "final" / "README.md").read_text()
    assert "| accuracy |" in card and "member-0/, member-1/" in card


def test_reward_rejects_degenerate_pairs_with_location(tiny_model_dir, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Hello!"}) + "\n"
                   + json.dumps({"prompt": "Hi", "chosen": "Hello!"}) + "\n"
                   + json.dumps({"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]})
                   + "\n")
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(bad), "--output",
                   str(tmp_path / "rm"), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:1:" in proc.stderr and "identical" in proc.stderr
    assert f'{bad}:2: field "rejected" is missing' in proc.stderr
    assert f"{bad}:3:" in proc.stderr and "ranking" in proc.stderr


def test_label_simulated_panel_writes_rankings_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "prefs.jsonl"
    proc = run_cli("label", "--model", str(tiny_model_dir), "--data", "demo-prompts",
                   "--max-prompts", "6", "--num-responses", "3", "--labels-per-prompt", "2",
                   "--max-new-tokens", "12", "--output", str(out), "--seed", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 12  # 6 prompts x 2 annotators
    for r in rows:
        assert sorted(r["ranking"]) == [0, 1, 2] and len(r["gold"]) == 3
        assert r["annotator"].startswith("sim-") and r["category"]
    report = json.loads((tmp_path / "prefs.report.json").read_text())
    assert report["pairs"] == 36 and 0.5 <= report["bayes_optimal"] <= 1.0
    # the labels are valid input for the reward stage's reader
    from alignkit.data.readers import read_records
    from alignkit.data.schemas import parse_ranking, validate
    examples, problems = validate(read_records(str(out)), parse_ranking)
    assert len(examples) == 12 and not problems


def test_reward_run_resumes_exactly_from_its_checkpoint(tiny_model_dir, tmp_path):
    """The reward stage trains on the one loop, so --save-every and --resume work as in every
    trainer: an ensemble resumed from step 3 reproduces the uninterrupted run's per-member losses
    and its final scores exactly."""
    import shutil

    from alignkit.cli import run
    from alignkit.config import RewardConfig
    from alignkit.models.reward import RewardModel

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)

    def settings(out, **kw):
        return RewardConfig(model=str(tiny_model_dir), data=str(prefs), output=str(out),
                            ensemble=2, max_steps=6, save_every=3, batch_size=8, lr=0.003,
                            eval_fraction=0.0, warmup_steps=2, progress=False, **kw)

    def losses(out):
        return {r["step"]: (r["loss_member0"], r["loss_member1"])
                for r in (json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines())
                if r["split"] == "train"}

    whole = tmp_path / "whole"
    run(settings(whole))
    killed = tmp_path / "killed"
    run(settings(killed))
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step-3"]
    # as if killed after the checkpoint of step 3: its final model and later metrics lost
    shutil.rmtree(killed / "final")
    rows = [ln for ln in (killed / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["step"] <= 3]
    (killed / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    run(settings(killed, resume=True))
    assert sorted(losses(killed)) == list(range(1, 7))
    assert losses(killed) == losses(whole)
    texts = [json.loads(ln) for ln in prefs.read_text().splitlines()[:4]]
    scores = [RewardModel.load(out / "final").score([t["prompt"] for t in texts],
                                                    [t["chosen"] for t in texts]).members
              for out in (whole, killed)]
    assert scores[0].tolist() == scores[1].tolist()


def test_reward_lora_trains_adapters_only_and_saves_plain_classifiers(tiny_model_dir, tmp_path):
    """--lora: each member trains LoRA adapters and its head, not its backbone's weights; the
    saved folder holds plain sequence classifiers with the adapters folded in, scoring exactly
    what the trained model in memory scores; the model in memory is left unmerged."""
    import torch

    from alignkit.cli import run
    from alignkit.config import RewardConfig
    from alignkit.models.lora import is_lora
    from alignkit.models.reward import RewardModel, load_backbone

    prefs = write_prefs(tmp_path / "prefs.jsonl", 48)
    out = tmp_path / "rm"
    result = run(RewardConfig(model=str(tiny_model_dir), data=str(prefs), output=str(out),
                              ensemble=2, max_steps=12, batch_size=8, lr=0.01, lora=True,
                              lora_r=4, lora_alpha=8, eval_fraction=0.0, progress=False))
    trained = result["model"].eval()
    original = load_backbone(str(tiny_model_dir))[0].state_dict()
    for member in trained.members:
        assert is_lora(member.backbone)
        grads = {n for n, p in member.named_parameters() if p.requires_grad}
        assert grads and all("lora_" in n or n.startswith(("head.", "pre.")) for n in grads)
        assert any(n.startswith("head.") for n in grads)
        frozen = {n.replace("backbone.base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in member.named_parameters()
                  if not p.requires_grad and n.startswith("backbone.")}
        # the base weights are those of the model trained on, untouched by saving
        assert frozen.keys() == original.keys()
        assert all(torch.equal(frozen[k], original[k]) for k in frozen)
        # the adapters moved away from their start (B starts at zero)
        assert any(p.abs().sum() > 0 for n, p in member.named_parameters() if "lora_B" in n)

    texts = [json.loads(ln) for ln in prefs.read_text().splitlines()[:6]]
    prompts, answers = [t["prompt"] for t in texts], [t["chosen"] for t in texts]
    saved = RewardModel.load(out / "final")
    assert not any(is_lora(m.backbone) for m in saved.members)
    with torch.no_grad():
        want = trained.score(prompts, answers).members
    got = saved.score(prompts, answers).members
    assert got.flatten().tolist() == pytest.approx(want.flatten().tolist(), abs=1e-5)
    # the adapters changed the scores: the folded weights are not the base model's
    fresh = load_backbone(str(out / "final" / "member-0"))[0].state_dict()
    assert any(not torch.equal(fresh[k], original[k]) for k in original)


@pytest.mark.parametrize("flags, message", [
    (["--lora", "--shared-backbone"], "--lora with --shared-backbone"),
    (["--lora", "--reinit-layers", "1"], "--lora with --reinit-layers"),
    (["--lora-init", "somewhere"], "--lora-init: reward members start from fresh adapters"),
    (["--lora", "--lora-targets", "nonexistent"], "no modules named nonexistent"),
])
def test_reward_lora_flag_conflicts_are_one_line_errors(tiny_model_dir, tmp_path, flags, message):
    prefs = write_prefs(tmp_path / "prefs.jsonl", 12)
    proc = run_cli("reward", "--model", str(tiny_model_dir), "--data", str(prefs), "--output",
                   str(tmp_path / "rm"), "--max-steps", "1", "--no-progress", *flags)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "rm" / "final").exists()
