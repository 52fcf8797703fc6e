"""``alignkit eval`` on tiny policies: structure and exact counts of every output, a policy
identical to the baseline gets win rate 1/2 and KL 0, a different one does not, the same seed
gives the same numbers, the reward ensemble's mean and spread are reported, bad input is a
clear error."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.smoke

PROMPTS = 8
PER_CATEGORY = 3


@pytest.fixture(scope="module")
def tiny_setup(tiny_model_dir, tmp_path_factory):
    """Two tiny policies (different random weights, one vocabulary) and a 2-member reward
    ensemble trained for a few steps on the tiny backbone."""
    from alignkit.config import RewardConfig
    from alignkit.models.tiny import save_tiny_model
    from alignkit.cli import run
    from tests.smoke.test_reward_cli import write_prefs

    root = tmp_path_factory.mktemp("eval")
    other = save_tiny_model(root / "other", seed=1)
    prefs = write_prefs(root / "prefs.jsonl", 24)
    run(RewardConfig(model=str(tiny_model_dir), data=str(prefs), output=str(root / "rm"),
                             ensemble=2, max_steps=2, eval_fraction=0.0, save_every=0,
                             progress=False, overwrite=True))
    return {"base": tiny_model_dir, "other": other, "rm": root / "rm" / "final", "root": root}


def eval_args(setup, output) -> list[str]:
    return ["eval", "--policies",
            f"base={setup['base']},same={setup['base']},other={setup['other']}",
            "--baseline", "base", "--reward-model", str(setup["rm"]),
            "--max-prompts", str(PROMPTS), "--max-adversarial", str(PER_CATEGORY),
            "--max-new-tokens", "8", "--bootstrap", "500", "--seed", "5", "--output", str(output)]


def differences(got, want, path: str = "eval.json", rel: float = 1e-6) -> list[str]:
    """Every field of ``got`` that is not ``want``: floats within ``rel`` (relative; float32
    rounding is ~6e-8), every other value (text, count, key, length) exactly."""
    if isinstance(want, float) and isinstance(got, float):
        close = got == pytest.approx(want, rel=rel, abs=1e-12)
        return [] if close else [f"{path}: {got} != {want}"]
    if isinstance(want, dict) and isinstance(got, dict) and list(got) == list(want):
        return [d for k in want for d in differences(got[k], want[k], f"{path}.{k}", rel)]
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want))
                for d in differences(g, w, f"{path}[{i}]", rel)]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def test_differences_names_each_field_that_is_not_the_same():
    want = {"a": 1.0, "b": [1, "x"], "c": {"d": 2.0}}
    assert differences({"a": 1.0 + 1e-9, "b": [1, "x"], "c": {"d": 2.0}}, want) == []
    assert differences({"a": 1.001, "b": [1, "y"], "c": {"d": 2.0}}, want) == [
        "eval.json.a: 1.001 != 1.0", "eval.json.b[1]: 'y' != 'x'"]
    assert differences({"a": 1.0, "b": [1, "x"], "c": {"e": 2.0}}, want) == [
        "eval.json.c: {'e': 2.0} != {'d': 2.0}"]
    assert differences({"a": 1, "b": [1, "x"], "c": {"d": 2.0}}, want) == []  # 1 == 1.0


def test_eval_outputs_win_rates_kl_and_suite(tiny_setup):
    out = tiny_setup["root"] / "out"
    proc = run_cli(*eval_args(tiny_setup, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["baseline"] == "base" and result["judge"] == "gold"
    assert result["prompts"] == PROMPTS and result["suite_prompts"] == 4 * PER_CATEGORY
    assert list(result["policies"]) == ["base", "same", "other"]
    for name, row in result["policies"].items():
        assert row["prompts"] == PROMPTS
        assert {"gold", "gold_se", "proxy", "proxy_mean", "proxy_std", "kl", "response_length",
                "win_rate", "win_rate_low", "win_rate_high"} <= set(row)
        assert row["wins"] + row["ties"] + row["losses"] == PROMPTS
        assert row["win_rate"] == pytest.approx((row["wins"] + 0.5 * row["ties"]) / PROMPTS)
        assert row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"]
        assert 0 < row["response_length"] <= 8
        assert row["proxy_std"] > 0  # two members with their own heads disagree
        adv = row["adversarial"]
        assert adv["prompts"] == 4 * PER_CATEGORY
        cats = adv["per_category"]
        assert {c: (v["expect"], v["n"]) for c, v in cats.items()} == {
            "harmful": ("refuse", 3), "jailbreak": ("refuse", 3), "benign": ("comply", 3),
            "uncertain": ("uncertain", 3)}
        # the overall rates are the category counts pooled
        assert adv["refusal_rate"] == pytest.approx(
            (cats["harmful"]["refused"] + cats["jailbreak"]["refused"]) / 6)
        assert adv["over_refusal_rate"] == pytest.approx(cats["benign"]["refused"] / 3)
        assert adv["uncertainty_rate"] == pytest.approx(cats["uncertain"]["uncertain"] / 3)
        assert adv["as_expected_rate"] == pytest.approx(
            sum(c["as_expected"] for c in cats.values()) / 12)
    base, same, other = (result["policies"][k] for k in ("base", "same", "other"))
    # the baseline against itself, and an identical policy: every prompt a tie, KL 0 (the
    # policy's log-probs come off its decoding pass, the reference's from a full forward: equal
    # up to float rounding)
    for row in (base, same):
        assert (row["win_rate"], row["win_rate_low"], row["win_rate_high"]) == (0.5, 0.5, 0.5)
        assert row["ties"] == PROMPTS and row["kl"] == pytest.approx(0.0, abs=1e-5)
    assert same["gold"] == base["gold"] and same["proxy"] == base["proxy"]
    # different weights: different answers, so some verdicts are not ties and KL is not 0
    assert other["ties"] < PROMPTS and other["kl"] != 0.0
    assert other["win_rate_low"] < other["win_rate_high"]

    with (out / "eval.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["policy"] for r in table] == ["base", "same", "other"]
    assert float(table[2]["win_rate"]) == pytest.approx(other["win_rate"])
    assert float(table[0]["refusal_rate"]) == pytest.approx(base["adversarial"]["refusal_rate"])
    samples = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == PROMPTS
    assert all(s["responses"]["base"] == s["responses"]["same"] for s in samples)
    adv_samples = [json.loads(ln) for ln in
                   (out / "adversarial_samples.jsonl").read_text().splitlines()]
    assert len(adv_samples) == 12 and set(adv_samples[0]["responses"]["other"]) == {
        "text", "refused", "uncertain", "as_expected"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["baseline"] == "base" and saved["seed"] == 5
    for name in ("base", "same", "other"):
        assert f"\n{name}" in proc.stdout
    assert "win vs base" in proc.stdout

    # the same seed gives the same answers, verdicts and counts, and the same numbers up to
    # float rounding (a CPU kernel may sum in another order in another process); every field
    # that differs is named
    again = tiny_setup["root"] / "again"
    proc = run_cli(*eval_args(tiny_setup, again))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (again / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()
    assert ((again / "adversarial_samples.jsonl").read_text()
            == (out / "adversarial_samples.jsonl").read_text())
    assert differences(json.loads((again / "eval.json").read_text()), result) == []
    # an earlier evaluation is not overwritten without --overwrite
    proc = run_cli(*eval_args(tiny_setup, out))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_several_answers_a_suite_prompt_are_pooled_and_their_error_is_over_prompts(tiny_setup):
    """--adversarial-answers 2: each suite prompt answered twice, independently; every answer is
    a line of adversarial_samples.jsonl (``answer`` 0 and 1), and the rates and their standard
    errors are what those lines give, each prompt's two verdicts one share."""
    import math

    out = tiny_setup["root"] / "twice"
    args = eval_args(tiny_setup, out)
    args[args.index("--policies") + 1] = f"base={tiny_setup['base']},other={tiny_setup['other']}"
    proc = run_cli(*args, "--adversarial-answers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{4 * PER_CATEGORY} adversarial prompts x 2 answers" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["adversarial_answers"] == 2
    lines = [json.loads(ln) for ln in (out / "adversarial_samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 4 * PER_CATEGORY
    assert [ln["answer"] for ln in lines[:4]] == [0, 1, 0, 1]
    assert lines[0]["prompt"] == lines[1]["prompt"] != lines[2]["prompt"]
    for name in ("base", "other"):
        adv = result["policies"][name]["adversarial"]
        assert adv["answers_per_prompt"] == 2
        assert {c: (v["prompts"], v["n"]) for c, v in adv["per_category"].items()} == {
            c: (PER_CATEGORY, 2 * PER_CATEGORY)
            for c in ("harmful", "jailbreak", "benign", "uncertain")}
        texts = [ln["responses"][name]["text"] for ln in lines]
        assert texts[0::2] != texts[1::2]  # the two answers are sampled, not copied
        for expect, key in (("refuse", "refusal_rate"), ("comply", "over_refusal_rate")):
            shares = [(a["responses"][name]["refused"] + b["responses"][name]["refused"]) / 2
                      for a, b in zip(lines[0::2], lines[1::2]) if a["expect"] == expect]
            mean = sum(shares) / len(shares)
            assert adv[key] == pytest.approx(mean)
            sd = math.sqrt(sum((x - mean) ** 2 for x in shares) / (len(shares) - 1))
            assert adv[f"{key}_se"] == pytest.approx(sd / math.sqrt(len(shares)))
    with (out / "eval.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert float(table[1]["refusal_rate_se"]) == pytest.approx(
        result["policies"]["other"]["adversarial"]["refusal_rate_se"])


def test_any_judge_spec_reward_model(tiny_setup):
    """--judge takes the judges.spec specs: a reward-model judge here, asked in both orders."""
    out = tiny_setup["root"] / "reward-judge"
    proc = run_cli("eval", "--policies", f"base={tiny_setup['base']},other={tiny_setup['other']}",
                   "--judge", f"reward:{tiny_setup['rm']}", "--adversarial", "none",
                   "--no-gold", "--max-prompts", "4", "--max-new-tokens", "6", "--bootstrap",
                   "100", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["judge"] == f"reward:{tiny_setup['rm']}" and result["suite_prompts"] == 0
    # base vs itself and other vs base: 4 pairs each, every one judged in both orders; a
    # reward model scores each answer alone, so no verdict is decided by position
    assert result["judge_position_bias"]["pairs"] == 8
    assert result["judge_position_bias"]["position_bias_rate"] == 0.0
    base, other = result["policies"]["base"], result["policies"]["other"]
    assert (base["win_rate"], base["ties"]) == (0.5, 4) and "gold" not in base
    assert other["wins"] + other["ties"] + other["losses"] == 4


@pytest.mark.parametrize("extra,message", [
    (["--judge", "oracle"], "expected http(s)://"),
    (["--policies", "a=/nonexistent/x"], "model folder not found"),
    (["--policies", "justaname"], "is not NAME=DIR"),
    (["--baseline", "nobody"], "is not one of the --policies names"),
    (["--adversarial", "/nonexistent/suite.jsonl"], "adversarial suite file not found"),
])
def test_bad_input_is_a_clear_error(tiny_model_dir, tmp_path, extra, message):
    args = ["eval", "--policies", f"a={tiny_model_dir}", "--output", str(tmp_path / "o")]
    proc = run_cli(*args, *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
