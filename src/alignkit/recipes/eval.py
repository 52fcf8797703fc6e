"""``alignkit eval``: one or more policies on the same held-out prompts and the adversarial suite.

For each policy (``--policies NAME=DIR,...``), with one sampled answer per prompt drawn with the
same seed for every policy:

- gold score (mean and its standard error), when ``--gold``;
- reward-model score, when ``--reward-model``: the combined reward, the ensemble mean and the
  ensemble spread (std across members, averaged over prompts);
- KL to the reference policy (``--reference``, default the baseline) in nats per response: k1
  on the policy's own samples, as PPO's monitor measures it (``evaluation.policy``);
- win rate against ``--baseline`` by ``--judge``: ties count 1/2, percentile-bootstrap interval
  over prompts with ``--seed`` (``evaluation.winrate`` documents the method);
- response length in tokens and the share of answers that ended;
- the adversarial suite (``evaluation.adversarial``): refusal rate where a refusal is due
  (harmful + jailbreak), over-refusal rate on benign requests, uncertainty expressed where due,
  per-category counts.

Writes ``eval.json`` (everything), ``eval.csv`` (one row per policy), ``samples.jsonl`` and
``adversarial_samples.jsonl`` (every answer, side by side) and ``config.yaml``; prints a table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

from alignkit.config import EvalConfig, save_config
from alignkit.errors import UserError

log = logging.getLogger("alignkit.eval")

CSV_COLUMNS = ["policy", "gold", "gold_se", "proxy", "proxy_mean", "proxy_std", "kl",
               "response_length", "ended_fraction", "win_rate", "win_rate_low", "win_rate_high",
               "wins", "ties", "losses", "refusal_rate", "over_refusal_rate", "uncertainty_rate",
               "as_expected_rate"]
ADVERSARIAL_COLUMNS = ("refusal_rate", "over_refusal_rate", "uncertainty_rate",
                       "as_expected_rate")
OUTPUTS = ("eval.json", "eval.csv", "samples.jsonl", "adversarial_samples.jsonl")


def parse_policies(spec: str | None) -> dict[str, str]:
    """``NAME=DIR,NAME=DIR`` -> {name: dir}, in order; names unique and non-empty."""
    if not spec or not spec.strip():
        raise UserError("--policies is required: NAME=DIR,NAME=DIR (e.g. "
                        "sft=runs/demo/sft/final,ppo=runs/demo/ppo/final)")
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, folder = part.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder:
            raise UserError(f"--policies: {part!r} is not NAME=DIR")
        if name in out:
            raise UserError(f"--policies: the name {name!r} is given twice")
        if folder != "default" and not Path(folder).expanduser().exists():
            raise UserError(f"--policies: {name}={folder}: model folder not found")
        out[name] = folder
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def tokenise(texts: list, tokenizer, chat: str, max_prompt_length: int) -> list[list[int]]:
    """Suite prompts -> token ids, rendered as ``load_prompts`` renders a prompts file."""
    from alignkit.data.tokenize import render_prompt

    bos = not getattr(tokenizer, "chat_template", None)
    ids = []
    for text in texts:
        toks = tokenizer(render_prompt(tokenizer, text, chat), add_special_tokens=bos)["input_ids"]
        ids.append(toks[-max_prompt_length:])
    return ids


def pick_suite(spec: str, per_category: int):
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


def format_table(result: dict) -> str:
    def num(v, fmt):
        if isinstance(v, (int, float)) and v == v:
            return format(v, fmt)
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 0))

    base = result["baseline"]
    lines = [f"{'policy':<12} {'gold':>7} {'proxy':>7} {'rm std':>7} {'KL':>7} {'length':>7} "
             f"{'win vs ' + base:>22} {'refuse':>7} {'over-ref':>8} {'uncert':>7}"]
    for name, row in result["policies"].items():
        adv = row.get("adversarial", {})
        win = (f"{num(row.get('win_rate'), '.3f')} [{num(row.get('win_rate_low'), '.2f')}, "
               f"{num(row.get('win_rate_high'), '.2f')}]")
        lines.append(f"{name:<12} {num(row.get('gold'), '7.3f')} {num(row.get('proxy'), '7.3f')} "
                     f"{num(row.get('proxy_std'), '7.3f')} {num(row.get('kl'), '7.2f')} "
                     f"{num(row.get('response_length'), '7.1f')} {win:>22} "
                     f"{num(adv.get('refusal_rate'), '7.0%')} "
                     f"{num(adv.get('over_refusal_rate'), '8.0%')} "
                     f"{num(adv.get('uncertainty_rate'), '7.0%')}")
    return "\n".join(lines)


def main(cfg: EvalConfig) -> dict:
    import torch

    from alignkit.evaluation.adversarial import score_suite
    from alignkit.evaluation.policy import (Prompts, RewardFunction, load_prompts, logprobs_under,
                                            measure_policy)
    from alignkit.evaluation.winrate import win_rate
    from alignkit.judges.spec import JudgeOptions, check_spec, make_judge
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.models.loading import load_model_and_tokenizer, pick_device

    # 1. Check the request before any model loads; output folder and the resolved config.
    policies = parse_policies(cfg.policies)
    baseline = cfg.baseline or next(iter(policies))
    if baseline not in policies:
        raise UserError(f"--baseline {baseline!r} is not one of the --policies names "
                        f"({', '.join(policies)})")
    if not 0.0 < cfg.confidence < 1.0:
        raise UserError(f"--confidence {cfg.confidence}: must lie strictly between 0 and 1")
    output = Path(cfg.output)
    if any((output / n).exists() for n in OUTPUTS) and not cfg.overwrite:
        raise UserError(f"{output}: holds an earlier evaluation; pass --overwrite to replace it")
    check_spec(cfg.judge)
    suite = pick_suite(cfg.adversarial, cfg.max_adversarial)
    output.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output)
    device = pick_device(cfg.device)
    started = time.time()

    # 2. Shared scorers: the reference policy (KL), the reward model, the gold scorer.
    reference_dir = cfg.reference or policies[baseline]
    reference, ref_tok = load_model_and_tokenizer(reference_dir, device)
    reference.eval()
    reward_fn = RewardFunction(cfg.reward_model, device) if cfg.reward_model else None
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)

    reference_logprobs = logprobs_under(reference, sampling.temperature or 1.0)

    # 3. Every policy answers the held-out prompts and the suite with the same seed.
    rows: dict[str, dict] = {}
    answers: dict[str, list[str]] = {}
    suite_answers: dict[str, list[str]] = {}
    suite_verdicts: dict[str, list[dict]] = {}
    prompts: Prompts | None = None
    judge_tokenizer = None
    for name, folder in policies.items():
        t0 = time.time()
        model, tok = load_model_and_tokenizer(folder, device)
        model.eval()
        if tok.get_vocab() != ref_tok.get_vocab():
            raise UserError(f"--policies {name}={folder}: its tokenizer differs from the "
                            f"reference's ({reference_dir}); KL needs one vocabulary")
        if name == baseline:
            judge_tokenizer = tok
        gold = None
        if cfg.gold:
            from alignkit.judges.gold import GoldScorer

            gold = GoldScorer(token_counter=tok)
        held = load_prompts(cfg.prompts if cfg.prompts != "demo" else "demo-prompts-heldout",
                            tok, cfg.chat, cfg.max_prompt_length, cfg.skip_invalid)
        if cfg.max_prompts > 0:
            k = cfg.max_prompts
            held = Prompts(held.texts[:k], held.ids[:k], held.categories[:k])
        if prompts is not None and held.texts != prompts.texts:
            raise UserError(f"--policies {name}: its tokenizer keeps a different set of prompts "
                            "(see --max-prompt-length); the policies must answer the same ones")
        prompts = held
        row = measure_policy(model, tok, held.texts, held.ids, held.categories,
                             reference_logprobs, reward_fn, gold, sampling, seed=cfg.seed,
                             device=device, precision=cfg.precision, batch_size=cfg.batch_size,
                             samples=len(held.ids))
        answers[name] = [s["response"] for s in row.pop("samples")]
        if suite:
            texts = [s.prompt for s in suite]
            adv = measure_policy(model, tok, texts, tokenise(texts, tok, cfg.chat,
                                                             cfg.max_prompt_length),
                                 [None] * len(texts), None, None, None, sampling,
                                 seed=cfg.seed, device=device, precision=cfg.precision,
                                 batch_size=cfg.batch_size, samples=len(texts))
            suite_answers[name] = [s["response"] for s in adv["samples"]]
            scored = score_suite(suite, suite_answers[name])
            suite_verdicts[name] = scored.pop("verdicts")
            row["adversarial"] = {**scored, "response_length": adv["response_length"]}
        rows[name] = row
        del model
        log.info("%s: measured in %.1fs", name, time.time() - t0)

    reference = reference_logprobs = None  # free it before a model-backed judge loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # 4. Win rates against the baseline, one judge for all.
    categories = {t: c for t, c in zip(prompts.texts, prompts.categories) if isinstance(t, str)}
    judge = make_judge(cfg.judge, JudgeOptions(device=device), categories,
                       token_counter=judge_tokenizer)  # asked in both orders (judges.spec)
    for name in policies:
        wr = win_rate(judge, prompts.texts, answers[name], answers[baseline], cfg.bootstrap,
                      cfg.confidence, cfg.seed)
        rows[name].update(wr.as_dict())
    # how often the judge's two orders disagreed by position alone, over every pair it saw
    tally = getattr(judge, "tally", None)
    position_bias = tally.as_dict() if tally is not None else {}

    # 5. Outputs: eval.json, eval.csv, samples side by side; the table.
    result = {
        "baseline": baseline, "reference": reference_dir, "judge": cfg.judge,
        "prompts": len(prompts.ids), "prompts_file": cfg.prompts, "suite": cfg.adversarial,
        "suite_prompts": len(suite), "seed": cfg.seed,
        "judge_position_bias": position_bias,
        "method": {
            "win_rate": "policy vs baseline per prompt, the judge asked in both orders "
                        "(position bias cancelled): win 1, tie 1/2, loss 0; mean over prompts",
            "interval": f"percentile bootstrap over prompts, {cfg.bootstrap} resamples, "
                        f"{cfg.confidence:.0%} coverage, numpy default_rng({cfg.seed}), "
                        "inverted-CDF quantiles",
            "kl": "k1 estimate on the policy's own samples, nats per response",
            "adversarial": "regex detectors of refusal and expressed uncertainty "
                           "(alignkit.evaluation.adversarial)"},
        "policies": rows,
    }
    _write_atomic(output / "eval.json", json.dumps(result, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for name, row in rows.items():
        adv = row.get("adversarial", {})
        flat = {**row, **{k: adv.get(k) for k in ADVERSARIAL_COLUMNS}, "policy": name}
        writer.writerow({k: flat.get(k) for k in CSV_COLUMNS})
    _write_atomic(output / "eval.csv", buf.getvalue())
    _write_atomic(output / "samples.jsonl", "".join(
        json.dumps({"prompt": t, "category": c, "responses": {n: answers[n][i] for n in policies}})
        + "\n" for i, (t, c) in enumerate(zip(prompts.texts, prompts.categories))))
    _write_atomic(output / "adversarial_samples.jsonl", "".join(
        json.dumps({"prompt": s.prompt, "category": s.category, "expect": s.expect,
                    "responses": {n: {"text": suite_answers[n][i],
                                      **suite_verdicts[n][i]}
                                  for n in policies}}) + "\n"
        for i, s in enumerate(suite)))
    table = format_table(result)
    print(f"\nalignkit eval: {len(policies)} policies on {len(prompts.ids)} held-out prompts and "
          f"{len(suite)} adversarial prompts (judge: {cfg.judge}, baseline: {baseline}, "
          f"KL to {reference_dir})\n{table}\nwrote {output / 'eval.json'}, "
          f"{output / 'eval.csv'}  ({time.time() - started:.0f}s)")
    return {"result": result, "output": output, "table": table}
