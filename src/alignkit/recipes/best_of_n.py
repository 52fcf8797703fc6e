"""``alignkit best-of-n``: sample n answers per prompt with the shared sampler and keep the one the
reward model scores highest (rejection sampling / best-of-n, Stiennon et al. 2020; Nakano et al.
2021). No training; the KL of the best-of-n policy to the sampling policy has the closed form
``log n - (n - 1) / n`` (``alignkit.evaluation.best_of_n``), reported beside the gold score so
best-of-n sits on the same reward-vs-KL frontier as PPO and DPO.
"""

from __future__ import annotations

import logging
import time

from alignkit.config import BestOfNConfig, config_to_dict, save_config
from alignkit.data.prompts import Prompts, load_prompts
from alignkit.evaluation.best_of_n import best_of_n, best_records, summarise
from alignkit.generation.sampler import SamplingConfig
from alignkit.generation.vllm_engine import engine_for
from alignkit.models.loading import load_model_and_tokenizer, load_tokenizer, pick_device
from alignkit.models.reward import RewardFunction
from alignkit.training.distributed import init_world
from alignkit.training.engine import prepare_output
from alignkit.utils.distributed import barrier
from alignkit.utils.files import write_jsonl_atomic
from alignkit.utils.metrics import MetricsLog

log = logging.getLogger("alignkit.best_of_n")


def main(cfg: BestOfNConfig) -> dict:
    # 1. The output folder checked (never clobbered); device.
    world, device = init_world(pick_device(cfg.device))
    prepare_output(cfg, write=False)

    # 2. Policy (or a vLLM engine serving it), prompts, reward model (and gold scorer).
    engine = engine_for(cfg, cfg.model)
    if engine is None:
        policy, tokenizer = load_model_and_tokenizer(cfg.model, device)
        policy.eval()
    else:
        policy, tokenizer = None, load_tokenizer(cfg.model)
    prompts = load_prompts(cfg.data, tokenizer, cfg.chat, cfg.max_prompt_length, cfg.skip_invalid)
    if cfg.max_prompts:
        k = cfg.max_prompts
        prompts = Prompts(prompts.texts[:k], prompts.ids[:k], prompts.categories[:k])
    reward_fn = RewardFunction(cfg.reward_model, device, cfg.combine)
    gold = None
    if cfg.gold:
        from alignkit.judges.gold import GoldScorer

        gold = GoldScorer(token_counter=tokenizer)
    # the input was accepted: the folder and the resolved config (by the first process)
    output = prepare_output(cfg, write=world.is_main)
    if world.is_main:
        save_config(cfg, output)
    barrier(world)

    # 3. Sample n per prompt, score, keep the best (each process its share of the prompts).
    t0 = time.time()
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    result = best_of_n(policy, tokenizer, prompts, reward_fn, cfg.n, sampling, cfg.seed, device,
                       cfg.precision, cfg.batch_size, world, engine)
    elapsed = time.time() - t0

    # 4. Report: reward of the kept answer vs a single sample (the first), gold of both; the
    #    first process writes.
    summary, gold_best = summarise(result, prompts, cfg.n, gold)
    summary["seconds"] = elapsed
    path = output / "best.jsonl"
    if not world.is_main:
        return {"summary": summary, "result": result, "output": path}
    metrics = MetricsLog(output, config=config_to_dict(cfg))
    metrics.log(0, summary, split="summary")
    metrics.close()
    write_jsonl_atomic(best_records(result, prompts, gold_best), path)
    log.info("best-of-%d on %d prompts: reward %.3f (single sample %.3f), KL %.3f nats%s; wrote %s",
             cfg.n, len(prompts.ids), summary["reward_best"], summary["reward_single"],
             summary["kl_analytic"],
             f", gold {summary['gold_best']:.3f} (single {summary['gold_single']:.3f})"
             if cfg.gold else "", path)
    return {"summary": summary, "result": result, "output": path}
