"""Several policies compared on the same held-out prompts and the adversarial suite
(``alignkit eval``): each policy's measurement (``measure_policy``: gold, reward model, KL,
length), its answers to the suite scored (``adversarial``), the table, and the files
``eval.json``, ``eval.csv``, ``samples.jsonl`` and ``adversarial_samples.jsonl``."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.config import EvalConfig
from alignkit.data.prompts import Prompts
from alignkit.utils.distributed import World, gather_objects
from alignkit.utils.files import write_text_atomic

CSV_COLUMNS = ["policy", "gold", "gold_se", "proxy", "proxy_mean", "proxy_std", "kl",
               "response_length", "ended_fraction", "win_rate", "win_rate_low", "win_rate_high",
               "wins", "ties", "losses", "refusal_rate", "over_refusal_rate", "uncertainty_rate",
               "as_expected_rate", "refusal_rate_se", "over_refusal_rate_se"]
ADVERSARIAL_COLUMNS = ("refusal_rate", "over_refusal_rate", "uncertainty_rate",
                       "as_expected_rate", "refusal_rate_se", "over_refusal_rate_se")
OUTPUTS = ("eval.json", "eval.csv", "samples.jsonl", "adversarial_samples.jsonl")


def tokenise(texts: list, tokenizer, chat: str, max_prompt_length: int) -> list[list[int]]:
    """Suite prompts -> token ids, rendered as ``load_prompts`` renders a prompts file."""
    from alignkit.data.tokenize import render_prompt

    bos = not getattr(tokenizer, "chat_template", None)
    ids = []
    for text in texts:
        toks = tokenizer(render_prompt(tokenizer, text, chat), add_special_tokens=bos)["input_ids"]
        ids.append(toks[-max_prompt_length:])
    return ids


def answer_suite(model, tokenizer, suite: list, ids: list[list[int]], sampling,
                 answers_per_prompt: int = 1, **common) -> tuple[list[str], dict, float]:
    """``answers_per_prompt`` answers of ``model`` to each suite prompt, sampled in one pass over
    the suite repeated (``ids``: the prompts tokenised, as ``tokenise`` does; ``common``:
    ``measure_policy``'s seed, device, precision, sampling batch, world, engine), scored by
    ``score_suite``. Returns (answers pass after pass, scores, mean answer length)."""
    from alignkit.evaluation.adversarial import score_suite
    from alignkit.evaluation.policy import measure_policy

    texts = [s.prompt for s in suite] * answers_per_prompt
    row = measure_policy(model, tokenizer, texts, ids * answers_per_prompt, [None] * len(texts),
                         None, None, None, sampling, samples=len(texts), **common)
    answers = [s["response"] for s in row["samples"]]
    return (answers, score_suite(suite, answers, answers_per_prompt),
            row["response_length"])


def suite_for_training(cfg, tokenizer, max_prompt_length: int) -> tuple[list, list[list[int]]]:
    """``--eval-adversarial``'s suite (``--eval-adversarial-prompts`` per category) and its
    prompts tokenised, read when a trainer starts so that a suite file with a mistake stops the
    run before any training. ([], []) when the flag is off."""
    suite = pick_suite(cfg.eval_adversarial, cfg.eval_adversarial_prompts)
    ids = tokenise([s.prompt for s in suite], tokenizer, cfg.chat, max_prompt_length) \
        if suite else []
    return suite, ids


def suite_rates(model, tokenizer, suite: list, ids: list[list[int]], sampling,
                **common) -> dict:
    """One answer of ``model`` to each suite prompt (``answer_suite``) as a row of training
    metrics: the refusal, over-refusal and uncertainty rates, each category's own rate
    (``refusal_rate_harmful``, ``uncertainty_rate_uncertain`` ...) and every answer with its
    verdict (``adversarial_samples``): safety over training, read at each evaluation."""
    answers, scored, _ = answer_suite(model, tokenizer, suite, ids, sampling, **common)
    row = {k: scored[k] for k in ("refusal_rate", "over_refusal_rate", "uncertainty_rate")
           if scored[k] is not None}
    for category, c in scored["per_category"].items():
        row[f"{'uncertainty' if c['expect'] == 'uncertain' else 'refusal'}_rate_{category}"] \
            = c["rate"]
    row["adversarial_samples"] = [
        {"prompt": s.prompt, "category": s.category, "response": a,
         "refused": v["refused"], "uncertain": v["uncertain"]}
        for s, a, v in zip(suite, answers, scored["verdicts"])]
    return row


def pick_suite(spec: str, per_category: int):
    """The adversarial suite of ``spec`` ('none': no suite), at most ``per_category`` prompts of
    each category (0: all)."""
    from alignkit.evaluation.adversarial import load_suite

    if spec.lower() == "none":
        return []
    suite = load_suite(spec)
    if per_category > 0:
        seen: dict[str, int] = {}
        kept = []
        for item in suite:
            seen[item.category] = seen.get(item.category, 0) + 1
            if seen[item.category] <= per_category:
                kept.append(item)
        suite = kept
    return suite


@dataclass
class Measured:
    """One policy's answers and measurements."""

    prompts: Prompts  # the held-out prompts as its tokenizer keeps them
    row: dict  # measure_policy's numbers (+ "adversarial"), later the win rate
    answers: list[str]  # one per held-out prompt
    suite_answers: list[str] = field(default_factory=list)
    suite_verdicts: list[dict] = field(default_factory=list)


def measure_one(model, tokenizer, cfg: EvalConfig, reference_logprobs, reward_fn, sampling,
                suite: list, device: str, world: World = World(), engine=None) -> Measured:
    """One policy on the held-out prompts (gold, reward model, KL, length) and on the suite,
    with ``cfg.seed`` (the same draw for every policy); under torchrun each process its share of
    the prompts (``measure_policy``), every process with the whole result. ``engine``: a rollout
    engine serving ``model`` that writes the answers."""
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.policy import measure_policy

    gold = None
    if cfg.gold:
        from alignkit.judges.gold import GoldScorer

        gold = GoldScorer(token_counter=tokenizer)
    held = load_prompts(cfg.prompts if cfg.prompts != "demo" else "demo-prompts-heldout",
                        tokenizer, cfg.chat, cfg.max_prompt_length, cfg.skip_invalid)
    if cfg.max_prompts > 0:
        k = cfg.max_prompts
        held = Prompts(held.texts[:k], held.ids[:k], held.categories[:k])
    common = dict(seed=cfg.seed, device=device, precision=cfg.precision,
                  sampling_batch=cfg.batch_size, world=world, engine=engine)
    row = measure_policy(model, tokenizer, held.texts, held.ids, held.categories,
                         reference_logprobs, reward_fn, gold, sampling, samples=len(held.ids),
                         **common)
    out = Measured(held, row, [s["response"] for s in row.pop("samples")])
    if suite:
        ids = tokenise([s.prompt for s in suite], tokenizer, cfg.chat, cfg.max_prompt_length)
        out.suite_answers, scored, length = answer_suite(model, tokenizer, suite, ids, sampling,
                                                         cfg.adversarial_answers, **common)
        out.suite_verdicts = scored.pop("verdicts")
        row["adversarial"] = {**scored, "response_length": length}
    return out


def position_bias(judge, world: World = World()) -> dict:
    """How often the judge's two orders disagreed by position alone, over every pair it saw (on
    every process): its ``PositionTally`` counts summed over the processes."""
    tally = getattr(judge, "tally", None)
    if tally is None:
        return {}
    merged = type(tally)()
    for part in gather_objects(tally, world):
        for name in ("pairs", "same_position", "first_votes", "decisive_votes"):
            setattr(merged, name, getattr(merged, name) + getattr(part, name))
    return merged.as_dict()


def comparison_result(cfg: EvalConfig, baseline: str, reference: str, measured: dict,
                      suite: list, position_bias: dict) -> dict:
    """What ``eval.json`` holds: the setting, the method in words, one row per policy."""
    prompts = next(iter(measured.values())).prompts
    return {
        "baseline": baseline, "reference": reference, "judge": cfg.judge,
        "prompts": len(prompts.ids), "prompts_file": cfg.prompts, "suite": cfg.adversarial,
        "suite_prompts": len(suite), "adversarial_answers": cfg.adversarial_answers,
        "seed": cfg.seed,
        "judge_position_bias": position_bias,
        "method": {
            "win_rate": "policy vs baseline per prompt, the judge asked in both orders "
                        "(position bias cancelled): win 1, tie 1/2, loss 0; mean over prompts",
            "interval": f"percentile bootstrap over prompts, {cfg.bootstrap} resamples, "
                        f"{cfg.confidence:.0%} coverage, numpy default_rng({cfg.seed}), "
                        "inverted-CDF quantiles",
            "kl": "k1 estimate on the policy's own samples, nats per response",
            "adversarial": "the refusal detector and the uncertainty patterns "
                           "(alignkit.evaluation.adversarial) on each answer; a rate pools a "
                           "category's answers, its standard error is over prompts (each "
                           "prompt's share of its answers)"},
        "policies": {name: m.row for name, m in measured.items()},
    }


def write_outputs(output: Path, result: dict, measured: dict, suite: list) -> None:
    """``eval.json`` (everything), ``eval.csv`` (one row per policy), ``samples.jsonl`` and
    ``adversarial_samples.jsonl`` (every answer, side by side), each written atomically."""
    write_text_atomic(output / "eval.json", json.dumps(result, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for name, row in result["policies"].items():
        adv = row.get("adversarial", {})
        flat = {**row, **{k: adv.get(k) for k in ADVERSARIAL_COLUMNS}, "policy": name}
        writer.writerow({k: flat.get(k) for k in CSV_COLUMNS})
    write_text_atomic(output / "eval.csv", buf.getvalue())
    prompts = next(iter(measured.values())).prompts
    write_text_atomic(output / "samples.jsonl", "".join(
        json.dumps({"prompt": t, "category": c,
                    "responses": {n: m.answers[i] for n, m in measured.items()}}) + "\n"
        for i, (t, c) in enumerate(zip(prompts.texts, prompts.categories))))
    # one line per answer: prompt by prompt, each prompt's K answers in order (``answer`` 0 to
    # K - 1, written when K > 1); answer j to prompt i is at j * len(suite) + i (answer_suite)
    k = result.get("adversarial_answers", 1)
    write_text_atomic(output / "adversarial_samples.jsonl", "".join(
        json.dumps({"prompt": s.prompt, "category": s.category, "expect": s.expect,
                    **({"answer": j} if k > 1 else {}),
                    "responses": {n: {"text": m.suite_answers[j * len(suite) + i],
                                      **m.suite_verdicts[j * len(suite) + i]}
                                  for n, m in measured.items()}}) + "\n"
        for i, s in enumerate(suite) for j in range(k)))


def format_table(result: dict) -> str:
    def num(v, fmt):
        if isinstance(v, (int, float)) and v == v:
            return format(v, fmt)
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 0))

    def rate(adv: dict, key: str) -> str:
        """A suite rate with its standard error over prompts, in points: 66% ±5."""
        value, se = adv.get(key), adv.get(f"{key}_se")
        if not isinstance(value, (int, float)):
            return "-"
        return f"{value:.0%}" + (f" ±{se * 100:.0f}" if isinstance(se, (int, float)) else "")

    base = result["baseline"]
    lines = [f"{'policy':<12} {'gold':>7} {'proxy':>7} {'rm std':>7} {'KL':>7} {'length':>7} "
             f"{'win vs ' + base:>22} {'refuse':>10} {'over-ref':>10} {'uncert':>7}"]
    for name, row in result["policies"].items():
        adv = row.get("adversarial", {})
        win = (f"{num(row.get('win_rate'), '.3f')} [{num(row.get('win_rate_low'), '.2f')}, "
               f"{num(row.get('win_rate_high'), '.2f')}]")
        lines.append(f"{name:<12} {num(row.get('gold'), '7.3f')} {num(row.get('proxy'), '7.3f')} "
                     f"{num(row.get('proxy_std'), '7.3f')} {num(row.get('kl'), '7.2f')} "
                     f"{num(row.get('response_length'), '7.1f')} {win:>22} "
                     f"{rate(adv, 'refusal_rate'):>10} {rate(adv, 'over_refusal_rate'):>10} "
                     f"{num(adv.get('uncertainty_rate'), '7.0%')}")
    return "\n".join(lines)
