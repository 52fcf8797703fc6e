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
The pieces live in ``alignkit.evaluation.comparison``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alignkit.config import EvalConfig, save_config
from alignkit.errors import UserError

log = logging.getLogger("alignkit.eval")


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


def check_request(cfg: EvalConfig, policies: dict[str, str]) -> str:
    """Checks that need no model; returns the baseline's name."""
    from alignkit.evaluation.comparison import OUTPUTS
    from alignkit.judges.spec import check_spec

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
    return baseline


def main(cfg: EvalConfig) -> dict:
    import torch

    from alignkit.evaluation.comparison import (comparison_result, format_table, measure_one,
                                                pick_suite, position_bias, write_outputs)
    from alignkit.evaluation.policy import logprobs_under
    from alignkit.evaluation.winrate import win_rate
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.generation.vllm_engine import engine_for
    from alignkit.judges.spec import JudgeOptions, make_judge
    from alignkit.models.loading import load_model_and_tokenizer, pick_device
    from alignkit.models.reward import RewardFunction
    from alignkit.training.distributed import init_world

    # 1. Check the request before any model loads (under torchrun each process measures its
    #    share of the prompts); nothing is written until the results are (step 5).
    policies = parse_policies(cfg.policies)
    baseline = check_request(cfg, policies)
    suite = pick_suite(cfg.adversarial, cfg.max_adversarial)
    world, device = init_world(pick_device(cfg.device))
    output = Path(cfg.output)
    started = time.time()

    # 2. Shared scorers: the reference policy (KL), the reward model, the gold scorer.
    reference_dir = cfg.reference or policies[baseline]
    reference, ref_tok = load_model_and_tokenizer(reference_dir, device)
    reference.eval()
    reward_fn = RewardFunction(cfg.reward_model, device) if cfg.reward_model else None
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    reference_logprobs = logprobs_under(reference, sampling.temperature or 1.0)

    # 3. Every policy answers the held-out prompts and the suite with the same seed.
    measured, judge_tokenizer = {}, None
    for name, folder in policies.items():
        t0 = time.time()
        model, tok = load_model_and_tokenizer(folder, device)
        model.eval()
        if tok.get_vocab() != ref_tok.get_vocab():
            raise UserError(f"--policies {name}={folder}: its tokenizer differs from the "
                            f"reference's ({reference_dir}); KL needs one vocabulary")
        if name == baseline:
            judge_tokenizer = tok
        engine = engine_for(cfg, folder)  # --rollout-engine vllm: a vLLM engine writes answers
        try:
            measured[name] = measure_one(model, tok, cfg, reference_logprobs, reward_fn,
                                         sampling, suite, device, world, engine)
        finally:
            if engine is not None:
                engine.close()
        first = next(iter(measured.values())).prompts
        if measured[name].prompts.texts != first.texts:
            raise UserError(f"--policies {name}: its tokenizer keeps a different set of prompts "
                            "(see --max-prompt-length); the policies must answer the same ones")
        del model
        log.info("%s: measured in %.1fs", name, time.time() - t0)
    reference = reference_logprobs = None  # free it before a model-backed judge loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # 4. Win rates against the baseline, one judge for all (asked in both orders).
    prompts = measured[baseline].prompts
    categories = {t: c for t, c in zip(prompts.texts, prompts.categories) if isinstance(t, str)}
    judge = make_judge(cfg.judge, JudgeOptions(device=device), categories,
                       token_counter=judge_tokenizer)
    for name, m in measured.items():
        m.row.update(win_rate(judge, prompts.texts, m.answers, measured[baseline].answers,
                              cfg.bootstrap, cfg.confidence, cfg.seed, world).as_dict())
    # how often the judge's two orders disagreed by position alone, over every pair it saw
    bias = position_bias(judge, world)

    # 5. Outputs: the resolved config, eval.json, eval.csv, samples side by side; the table
    #    (the first process).
    result = comparison_result(cfg, baseline, reference_dir, measured, suite, bias)
    table = format_table(result)
    if not world.is_main:
        return {"result": result, "output": output, "table": table}
    output.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output)
    write_outputs(output, result, measured, suite)
    print(f"\nalignkit eval: {len(policies)} policies on {len(prompts.ids)} held-out prompts and "
          f"{len(suite)} adversarial prompts"
          f"{f' x {cfg.adversarial_answers} answers' if cfg.adversarial_answers > 1 else ''} (judge: {cfg.judge}, baseline: {baseline}, "
          f"KL to {reference_dir})\n{table}\nwrote {output / 'eval.json'}, "
          f"{output / 'eval.csv'}  ({time.time() - started:.0f}s)")
    return {"result": result, "output": output, "table": table}
