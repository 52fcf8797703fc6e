"""Real runs on the tiny model: the implicit-prompt layout trains DPO and a reward model exactly
as the explicit layout of the same pairs does, and a mixture with --oversample trains sft, dpo
and reward with its draw recorded in config.yaml and in the setup row of metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignkit.cli import run
from alignkit.config import DPOConfig, RewardConfig, SFTConfig

pytestmark = pytest.mark.smoke

SYSTEM = {"role": "system", "content": "You are helpful."}


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def conversations(n: int) -> list[tuple[list, list, list]]:
    """(prompt, chosen, rejected) as chat messages from the shipped demonstrations: chosen is the
    demonstration, rejected the prompt parroted back; every third prompt has a system turn, every
    fourth an earlier exchange."""
    from alignkit.data.readers import read_records

    out = []
    for i, rec in enumerate(read_records("demo")[:n]):
        q, a = rec.fields["prompt"], rec.fields["completion"]
        prompt = [{"role": "user", "content": q}]
        if i % 4 == 0:
            prompt = [{"role": "user", "content": "Hello"},
                      {"role": "assistant", "content": "Hi! Ask away."}] + prompt
        if i % 3 == 0:
            prompt = [SYSTEM] + prompt
        out.append((prompt, [{"role": "assistant", "content": a}],
                    [{"role": "assistant", "content": f"{q} {q}"}]))
    return out


def both_layouts(tmp_path: Path, n: int) -> tuple[str, str]:
    pairs = conversations(n)
    explicit = write(tmp_path / "explicit.jsonl",
                     [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs])
    implicit = write(tmp_path / "implicit.jsonl",
                     [{"chosen": p + c, "rejected": p + r} for p, c, r in pairs])
    return explicit, implicit


def rows(output: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock or the machine."""
    out = []
    for line in (Path(output) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items()
                    if k not in ("time", "device") and not k.endswith("_s")})
    return out


def test_implicit_layout_trains_dpo_like_the_explicit_layout(tiny_model_dir, tmp_path):
    explicit, implicit = both_layouts(tmp_path, 40)
    common = dict(model=str(tiny_model_dir), max_steps=4, lr=1e-3, batch_size=8, eval_every=2,
                  eval_fraction=0.2, save_every=0, sample_prompts=None, progress=False, seed=3)
    a = run(DPOConfig(data=explicit, output=str(tmp_path / "explicit"), **common))
    b = run(DPOConfig(data=implicit, output=str(tmp_path / "implicit"), **common))
    want, got = rows(tmp_path / "explicit"), rows(tmp_path / "implicit")
    assert [r["split"] for r in want].count("train") == 4
    assert [r["split"] for r in want].count("eval") == 3
    assert got == want
    assert a["eval"] == b["eval"]
    train = [r["loss"] for r in want if r["split"] == "train"]
    assert train[-1] < train[0]  # it trained: equal runs, not two runs that did nothing


def test_implicit_layout_trains_a_reward_model_like_the_explicit_layout(tiny_model_dir,
                                                                        tmp_path):
    explicit, implicit = both_layouts(tmp_path, 40)
    common = dict(model=str(tiny_model_dir), max_steps=4, lr=3e-3, batch_size=8,
                  eval_fraction=0.2, save_every=0, progress=False, seed=3)
    a = run(RewardConfig(data=explicit, output=str(tmp_path / "explicit"), **common))
    b = run(RewardConfig(data=implicit, output=str(tmp_path / "implicit"), **common))
    want, got = rows(tmp_path / "explicit"), rows(tmp_path / "implicit")
    assert [r["split"] for r in want].count("train") == 4 and "accuracy" in a["eval"]
    assert got == want
    assert a["eval"] == b["eval"]
    train = [r["loss"] for r in want if r["split"] == "train"]
    assert train[-1] < train[0]


def setup_row(output: Path) -> dict:
    return next(r for r in rows(output) if r["split"] == "setup")


def test_a_mixture_trains_each_stage_and_is_recorded(tiny_model_dir, tmp_path):
    from alignkit.data.readers import read_records

    demo = [r.fields for r in read_records("demo")]
    sft_a = write(tmp_path / "sft_a.jsonl", demo[:30])
    sft_b = write(tmp_path / "sft_b.jsonl",
                  [{**r, "category": "harmful" if i < 3 else "other"}
                   for i, r in enumerate(demo[30:40])])
    out = tmp_path / "sft"
    run(SFTConfig(model=str(tiny_model_dir), data=f"{sft_a}:0.6,{sft_b}:0.4", output=str(out),
                  oversample="category=harmful:3", mixture_size=50, max_steps=2,
                  eval_fraction=0.1, save_every=0, progress=False, seed=7))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["data"], saved["oversample"], saved["mixture_size"], saved["seed"]) == (
        f"{sft_a}:0.6,{sft_b}:0.4", "category=harmful:3", 50, 7)
    setup = setup_row(out)
    assert setup["data_mixture"]["sources"] == [
        {"data": sft_a, "weight": 0.6, "records": 30, "drawn": 30},
        {"data": sft_b, "weight": 0.4, "records": 10, "drawn": 20}]
    # b's deck: 3 harmful records x 3 + 7 others = 16; 20 draws = one pass + 4 more
    assert setup["data_mixture"]["oversample"][0]["records"] == 3
    assert 9 <= setup["data_mixture"]["oversample"][0]["drawn"] <= 13
    # the held-out split is by record: 4 of the 40 distinct records, one copy each
    assert setup["heldout_examples"] == 4

    pairs = conversations(24)
    write(tmp_path / "prefs_a.jsonl",
          [{"chosen": p + c, "rejected": p + r} for p, c, r in pairs[:16]])
    write(tmp_path / "prefs_b.jsonl",
          [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs[16:]])
    mix = tmp_path / "mix.yaml"
    mix.write_text("- {path: prefs_a.jsonl, weight: 1}\n- {path: prefs_b.jsonl, weight: 1}\n")
    for cls, name in ((DPOConfig, "dpo"), (RewardConfig, "reward")):
        extra = {"sample_prompts": None} if cls is DPOConfig else {}
        run(cls(model=str(tiny_model_dir), data=str(mix), output=str(tmp_path / name),
                mixture_size=32, max_steps=2, eval_fraction=0.0, save_every=0, progress=False,
                **extra))
        setup = setup_row(tmp_path / name)
        assert setup["train_pairs"] == 32
        assert [(s["data"], s["drawn"]) for s in setup["data_mixture"]["sources"]] == [
            (str(tmp_path / "prefs_a.jsonl"), 16), (str(tmp_path / "prefs_b.jsonl"), 16)]
