"""The demo's comparison of its policies on unseen prompts: every policy answers the same
held-out prompts with the same seeded streams, each is scored by the hidden gold scorer and the
reward ensemble, and its gold is compared with the SFT policy's prompt by prompt (the mean
difference, its paired standard error, beyond noise or not). The demo (``alignkit demo``) runs
it as its last stage; a benchmark can run it again on a finished demo's folders."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import DemoConfig
from alignkit.models.loading import load_model_and_tokenizer


def compare_policies(cfg: DemoConfig, sft_model, tokenizer, policies: dict,
                     reward_final: Path, device: str, sft_folder: str,
                     engine=None) -> tuple[dict, int]:
    """Each policy of ``policies`` (name -> (model folder, None for the SFT policy in memory;
    answers per prompt)) answers the same held-out prompts with the same seed: gold score,
    proxy reward (the ensemble), KL to the SFT policy (k1 on its own samples), length. A
    policy's gold on a prompt is the mean over its answers (``gold_per_prompt``, in
    prompt order), and its difference to SFT is paired by prompt (``paired_to_sft``). Best-of-n
    is the exact expectation over every n of the SFT answers to a prompt (the unbiased
    estimator of Nakano et al. 2021, app. I; KL: the closed form), not one draw of n.
    ``engine``: a vLLM engine that writes every policy's answers (it loads each folder in
    turn)."""
    import torch

    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.best_of_n import analytic_kl
    from alignkit.evaluation.overoptimisation import best_of_n_expectation
    from alignkit.evaluation.paired import standard_error
    from alignkit.evaluation.policy import logprobs_under, measure_policy
    from alignkit.generation.sampler import SamplingConfig
    from alignkit.judges.gold import GoldScorer
    from alignkit.models.reward import RewardFunction

    prompts = load_prompts("demo-prompts-heldout", tokenizer)
    n = min(cfg.compare_prompts, len(prompts.ids))
    reward_fn = RewardFunction(str(reward_final), device, cfg.ppo.combine)
    gold = GoldScorer(token_counter=tokenizer)
    sft_model.eval()

    sft_logprobs = logprobs_under(sft_model)
    sampling = SamplingConfig(cfg.max_new_tokens, 1.0)
    table, pooled = {}, {}
    for name, (spec, draws) in policies.items():
        policy = sft_model if spec is None else load_model_and_tokenizer(spec, device)[0]
        if engine is not None:
            engine.serve_folder(spec or sft_folder)
        # the prompts repeated: answer j to prompt i is row j * n + i with its own seeded
        # stream, so every policy's first answers are the ones a single draw gives
        row = measure_policy(policy, tokenizer, prompts.texts[:n] * draws,
                             prompts.ids[:n] * draws, prompts.categories[:n] * draws,
                             # SFT's KL to itself is 0: no reference pass over its answers
                             None if spec is None else sft_logprobs, reward_fn, gold,
                             sampling, seed=cfg.seed + 1,
                             device=device, precision=cfg.precision, engine=engine,
                             per_prompt=True,
                             progress=(f"comparison: {name} answers {n} held-out prompts x "
                                       f"{draws}") if cfg.progress else None)
        answers = {key: torch.tensor(row.pop(f"{key}_per_prompt"), dtype=torch.float64)
                   .view(draws, n).T for key in ("gold", "proxy", "length", "ended")}
        scores = answers["gold"].mean(1)
        row.setdefault("kl", 0.0)
        # every answer's gold and proxy, (prompts, answers): best-of-n can be checked by hand
        row.update(gold_per_answer=answers["gold"].tolist(),
                   proxy_per_answer=answers["proxy"].tolist(), gold_per_prompt=scores.tolist(),
                   answers_per_prompt=draws, prompts=n, gold_se=standard_error(scores))
        table[name] = row
        if spec is None:
            pooled = answers
        else:
            del policy
    if cfg.best_of > 1 and pooled:
        def expected(key: str) -> torch.Tensor:  # (n,) the kept answer's value, in expectation
            return best_of_n_expectation(pooled["proxy"], pooled[key], cfg.best_of)

        scores = expected("gold")
        table[f"best-of-{cfg.best_of}"] = {
            "gold": float(scores.mean()),
            "gold_se": standard_error(scores),
            "proxy": float(expected("proxy").mean()), "kl": analytic_kl(cfg.best_of),
            "response_length": float(expected("length").mean()),
            "ended_fraction": float(expected("ended").mean()), "prompts": n,
            "answers_per_prompt": cfg.best_of_pool, "gold_per_prompt": scores.tolist()}
    paired_to_sft(table)
    return table, n


def paired_to_sft(table: dict, baseline: str = "sft") -> None:
    """Each row of the comparison gets its gold difference to ``baseline`` paired by prompt
    (every policy answered the same prompts with the same seed): ``gold_diff_vs_sft`` (mean of
    the per-prompt differences), ``gold_diff_se`` (their standard error, None under two
    prompts) and ``beyond_noise`` (|difference| >= 3 paired standard errors)."""
    from alignkit.evaluation.paired import paired_difference

    if baseline not in table:
        return
    base = table[baseline]["gold_per_prompt"]
    for row in table.values():
        diff = paired_difference(row["gold_per_prompt"], base)
        row.update(gold_diff_vs_sft=diff["mean"], gold_diff_se=diff["se"],
                   beyond_noise=diff["beyond_noise"])
