"""``alignkit best-of-n``: sample n answers per prompt with the shared sampler and keep the one the
reward model scores highest (rejection sampling / best-of-n, Stiennon et al. 2020; Nakano et al.
2021). No training; the KL of the best-of-n policy to the sampling policy has the closed form
``log n - (n - 1) / n`` (Stiennon et al. 2020, appendix; an upper bound per Beirami et al. 2024),
reported beside the gold score so best-of-n sits on the same reward-vs-KL frontier as PPO and DPO.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import torch

from alignkit.config import BestOfNConfig, save_config
from alignkit.errors import UserError
from alignkit.evaluation.policy import Prompts, RewardFunction, decode_responses, load_prompts
from alignkit.generation.sampler import SamplingConfig, sample
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.recipes.common import autocast, prepare_output
from alignkit.utils.metrics import MetricsLog

log = logging.getLogger("alignkit.best_of_n")


def analytic_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (0 for n = 1)."""
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    candidates: list[list[str]]  # (P, n) decoded answers
    rewards: torch.Tensor  # (P, n) combined reward-model scores
    ended: torch.Tensor  # (P, n) bool
    best: torch.Tensor  # (P,) index of the kept answer

    def picked(self) -> list[str]:
        return [c[int(i)] for c, i in zip(self.candidates, self.best)]


@torch.no_grad()
def best_of_n(policy, tokenizer, prompts: Prompts, reward_fn, n: int, sampling: SamplingConfig,
              seed: int, device: str, precision: str = "auto", batch_size: int = 32) -> BestOfN:
    """n samples per prompt (a fixed draw: ``seed``, the caller's RNG untouched), scored by
    ``reward_fn(prompts, responses) -> {"combined": (B,)}``; the argmax is kept."""
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    ids = [p for p in prompts.ids for _ in range(n)]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with autocast(device, precision):
            rollout = sample(policy, ids, tokenizer.pad_token_id, tokenizer.eos_token_id,
                             sampling, with_logprobs=False, batch_size=batch_size)
    answers = decode_responses(tokenizer, rollout)
    texts = [t for t in prompts.texts for _ in range(n)]
    rewards = reward_fn(texts, answers)["combined"].float().cpu().view(-1, n)
    return BestOfN([answers[i * n:(i + 1) * n] for i in range(len(prompts.ids))], rewards,
                   rollout.ended.cpu().view(-1, n), rewards.argmax(1))


def main(cfg: BestOfNConfig) -> dict:
    # 1. Output folder and the resolved config; device.
    output = prepare_output(cfg)
    save_config(cfg, output)
    device = pick_device(cfg.device)

    # 2. Policy, prompts, reward model (and gold scorer).
    policy, tokenizer = load_model_and_tokenizer(cfg.model, device)
    policy.eval()
    prompts = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length, cfg.skip_invalid)
    if cfg.max_prompts:
        k = cfg.max_prompts
        prompts = Prompts(prompts.texts[:k], prompts.ids[:k], prompts.categories[:k])
    reward_fn = RewardFunction(cfg.reward_model, device, cfg.combine)

    # 3. Sample n per prompt, score, keep the best.
    t0 = time.time()
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    result = best_of_n(policy, tokenizer, prompts, reward_fn, cfg.n, sampling, cfg.seed, device,
                       cfg.precision, cfg.batch_size)
    elapsed = time.time() - t0

    # 4. Report: reward of the kept answer vs a single sample (the first), gold of both.
    rows = torch.arange(len(prompts.ids))
    summary = {"prompts": len(prompts.ids), "n": cfg.n, "kl_analytic": analytic_kl(cfg.n),
               "reward_best": float(result.rewards[rows, result.best].mean()),
               "reward_single": float(result.rewards[:, 0].mean()),
               "ended_best": float(result.ended[rows, result.best].float().mean()),
               "seconds": elapsed}
    gold_best = gold_single = None
    if cfg.gold:
        from alignkit.judges.gold import GoldScorer

        gold = GoldScorer(token_counter=tokenizer)
        gold_best = gold.score(prompts.texts, result.picked(), prompts.categories,
                               result.ended[rows, result.best].tolist())
        gold_single = gold.score(prompts.texts, [c[0] for c in result.candidates],
                                 prompts.categories, result.ended[:, 0].tolist())
        summary.update(gold_best=sum(gold_best) / len(gold_best),
                       gold_single=sum(gold_single) / len(gold_single))
    metrics = MetricsLog(output)
    metrics.log(0, summary, split="summary")
    metrics.close()
    path = output / "best.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i, text in enumerate(prompts.texts):
            rec = {"prompt": text, "response": result.candidates[i][int(result.best[i])],
                   "reward": float(result.rewards[i, result.best[i]]),
                   "candidates": result.candidates[i],
                   "rewards": [round(float(x), 4) for x in result.rewards[i]]}
            if gold_best is not None:
                rec["gold"] = gold_best[i]
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(path)
    log.info("best-of-%d on %d prompts: reward %.3f (single sample %.3f), KL %.3f nats%s; wrote %s",
             cfg.n, len(prompts.ids), summary["reward_best"], summary["reward_single"],
             summary["kl_analytic"],
             f", gold {summary['gold_best']:.3f} (single {summary['gold_single']:.3f})"
             if cfg.gold else "", path)
    return {"summary": summary, "result": result, "output": path}
