"""Best-of-n (rejection sampling; Stiennon et al. 2020, Nakano et al. 2021): n answers per prompt
from the shared sampler, the one the reward function scores highest kept. The KL of the
best-of-n policy to the sampling policy has the closed form ``log n - (n - 1) / n`` (Stiennon et
al. 2020, appendix; an upper bound per Beirami et al. 2024), so best-of-n sits on the same
reward-vs-KL frontier as PPO and DPO."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignkit.data.prompts import Prompts
from alignkit.errors import UserError
from alignkit.evaluation.policy import decode_responses
from alignkit.generation.sampler import SamplingConfig, row_seed, sample
from alignkit.models.precision import autocast
from alignkit.utils.distributed import World, gather_shares, share


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
def sample_candidates(policy, tokenizer, prompts: Prompts, n: int, sampling: SamplingConfig,
                      seed: int, device: str, precision: str = "auto", batch_size: int = 32,
                      world: World = World(), engine=None, reward_fn=None,
                      progress: str | None = None
                      ) -> list[tuple[list[str], list[float] | None, list[bool]]]:
    """n samples per prompt, sample j of prompt i drawn from its own stream seeded by (``seed``,
    i, j): the same candidates whatever the batch, the caller's RNG untouched. One (answers,
    rewards or None without ``reward_fn``, ended) triple per prompt, in prompt order.

    Under torchrun (``world``) each process samples (and scores) its contiguous share of the
    prompts, and every process gets the whole result. ``progress``: the description of a
    progress bar on stderr over the answers (None: none; the first process's share)."""
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    mine = share(list(range(len(prompts.ids))), world)
    part: list[tuple[list[str], list[float] | None, list[bool]]] = []
    if mine:
        ids = [prompts.ids[i] for i in mine for _ in range(n)]
        seeds = [row_seed(seed, i, j) for i in mine for j in range(n)]
        with autocast(device, precision):
            rollout = sample(policy, ids, tokenizer.pad_token_id, tokenizer.eos_token_id,
                             sampling, with_logprobs=False, batch_size=batch_size,
                             row_seeds=seeds, engine=engine,
                             progress=progress if world.is_main else None)
        answers = decode_responses(tokenizer, rollout)
        rewards = None
        if reward_fn is not None:
            texts = [prompts.texts[i] for i in mine for _ in range(n)]
            rewards = reward_fn(texts, answers)["combined"].float().cpu().tolist()
        ended = rollout.ended.cpu().tolist()
        part = [(answers[p * n:(p + 1) * n],
                 None if rewards is None else rewards[p * n:(p + 1) * n],
                 ended[p * n:(p + 1) * n]) for p in range(len(mine))]
    return gather_shares(part, world)


def best_of_n(policy, tokenizer, prompts: Prompts, reward_fn, n: int, sampling: SamplingConfig,
              seed: int, device: str, precision: str = "auto", batch_size: int = 32,
              world: World = World(), engine=None, progress: str | None = None) -> BestOfN:
    """n samples per prompt (``sample_candidates``), scored by ``reward_fn(prompts, responses)
    -> {"combined": (B,)}``; the argmax is kept. Under torchrun every process gets the whole
    result in prompt order. ``progress``: the description of a progress bar over the n answers
    per prompt (None: none)."""
    every = sample_candidates(policy, tokenizer, prompts, n, sampling, seed, device, precision,
                              batch_size, world, engine, reward_fn, progress)
    rewards_all = torch.tensor([r for _, r, _ in every], dtype=torch.float32).view(-1, n)
    return BestOfN([c for c, _, _ in every], rewards_all,
                   torch.tensor([e for _, _, e in every], dtype=torch.bool).view(-1, n),
                   rewards_all.argmax(1))


def summarise(result: BestOfN, prompts: Prompts, n: int, gold=None) -> tuple[dict, list | None]:
    """The reward of the kept answer against a single sample (the first drawn), the analytic
    KL, and with a gold scorer the gold score of both. Returns the summary and the kept answers'
    gold scores (None without a scorer)."""
    rows = torch.arange(len(prompts.ids))
    summary = {"prompts": len(prompts.ids), "n": n, "kl_analytic": analytic_kl(n),
               "reward_best": float(result.rewards[rows, result.best].mean()),
               "reward_single": float(result.rewards[:, 0].mean()),
               "ended_best": float(result.ended[rows, result.best].float().mean())}
    if gold is None:
        return summary, None
    gold_best = gold.score(prompts.texts, result.picked(), prompts.categories,
                           result.ended[rows, result.best].tolist())
    gold_single = gold.score(prompts.texts, [c[0] for c in result.candidates],
                             prompts.categories, result.ended[:, 0].tolist())
    summary.update(gold_best=sum(gold_best) / len(gold_best),
                   gold_single=sum(gold_single) / len(gold_single))
    return summary, gold_best


def best_records(result: BestOfN, prompts: Prompts, gold_best: list | None = None) -> list[dict]:
    """One record per prompt: the kept answer and its reward, every candidate and its reward
    (and the kept answer's gold score)."""
    records = []
    for i, text in enumerate(prompts.texts):
        rec = {"prompt": text, "response": result.candidates[i][int(result.best[i])],
               "reward": float(result.rewards[i, result.best[i]]),
               "candidates": result.candidates[i],
               "rewards": [round(float(x), 4) for x in result.rewards[i]]}
        if gold_best is not None:
            rec["gold"] = gold_best[i]
        records.append(rec)
    return records
