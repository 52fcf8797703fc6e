"""``alignkit study overoptimisation``: reward over-optimisation on the demo task, measured.

Gao et al. (2022) showed that optimising a learned reward model (the proxy) raises the true
reward (gold) only up to a point, with curves of a known shape in ``d = sqrt(KL)``; Coste et al.
(2023) showed that reward-model ensembles optimised by their worst case (WCO) or by their mean
less their disagreement (UWO) push that point out, especially with noisy labels. This pipeline
runs both experiments with the simulated panel and the hidden gold scorer that stand in for
people: the starting policy's answers to training prompts are ranked at each label-noise
level; a MiniLM ensemble learns from each level's rankings; then best-of-n (n = 1 ... --bon-n,
exact over every n-subset of the samples) and PPO at each KL coefficient optimise each proxy
(member 0 alone, the mean, WCO, UWO), and gold and proxy are read against ``sqrt(KL)``.
Best-of-n also reads every member alone and averages their curves prompt by prompt
(``single-avg``): the expected single reward model, where member 0 is one draw of it.

It drives the stage recipes like the demo does (sft, reward, ppo, each with its own config,
saved beside its outputs); the numbers are ``alignkit.evaluation.overoptimisation``'s.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from alignkit.config import StudyConfig, save_config
from alignkit.errors import DataError, UserError
from alignkit.evaluation.overoptimisation import (PROXIES, best_of_n_by_proxy, default_ns,
                                                  fit_curve, forecast_lead, peak_and_fall,
                                                  rl_points)
from alignkit.models.loading import load_model_and_tokenizer, pick_device
from alignkit.recipes import ppo, reward, sft
from alignkit.utils.files import write_jsonl_atomic, write_text_atomic
from alignkit.utils.logs import StageClock, log
from alignkit.utils.machine import describe_machine, machine_line


def noise_folder(root: Path, rate: float) -> Path:
    return root / f"noise-{rate:g}"


def ppo_folder(root: Path, rate: float, proxy: str, coef: float) -> Path:
    return noise_folder(root, rate) / f"ppo-{proxy}-kl{coef:g}"


def sample_candidates_for_labels(cfg: StudyConfig, policy, tokenizer) -> list[dict]:
    """K answers per training prompt (``--label.temperatures``, ``--label.base-answers``: from
    --model before SFT), sampled once and ranked at every noise level."""
    from alignkit.data.prompts import read_prompts
    from alignkit.generation.responses import sample_diverse_responses

    items = read_prompts("demo-prompts", cfg.label.prompts)
    base = (load_model_and_tokenizer(cfg.model, pick_device(cfg.device))[0]
            if cfg.label.base_answers else None)
    sample_diverse_responses(policy, tokenizer, items, cfg.label.num_responses,
                             cfg.max_new_tokens, cfg.label.temperature_list(), cfg.seed,
                             base_model=base, base_responses=cfg.label.base_answers,
                             progress="sampling answers for labelling" if cfg.progress else None)
    return items


def label_at_noise(cfg: StudyConfig, items: list[dict], scorer, rate: float,
                   path: Path) -> dict:
    """The simulated panel ranks the candidates with ``rate`` of its pairwise labels flipped;
    returns the agreement report (agreement with gold, the Bayes-optimal ceiling)."""
    from alignkit.feedback.labelling import label_items, write_labels
    from alignkit.feedback.simulated import (DEFAULT_ANNOTATORS, SimulatedPanel,
                                             with_label_noise, with_length_bias)

    annotators = with_length_bias(with_label_noise(DEFAULT_ANNOTATORS, rate),
                                  cfg.label.length_bias)
    panel = SimulatedPanel(annotators, seed=cfg.seed,
                           gold_scale=cfg.label.gold_scale, scorer=scorer)
    records = label_items(items, scorer, panel, cfg.label.labels_per_prompt)
    return write_labels(records, path, panel)


def best_of_n_samples(cfg: StudyConfig, policy, tokenizer, scorer, device: str) -> list[dict]:
    """--bon-n answers to each of --bon-prompts held-out prompts and their gold scores, one
    row per prompt (``prompt``, ``responses``, ``ended``, ``gold``)."""
    from alignkit.data.prompts import load_prompts
    from alignkit.evaluation.best_of_n import sample_candidates
    from alignkit.generation.sampler import SamplingConfig

    prompts = load_prompts("demo-prompts-heldout", tokenizer)
    count = min(cfg.bon_prompts, len(prompts.ids))
    prompts = dataclasses.replace(prompts, texts=prompts.texts[:count], ids=prompts.ids[:count],
                                  categories=prompts.categories[:count])
    every = sample_candidates(policy, tokenizer, prompts, cfg.bon_n,
                              SamplingConfig(cfg.max_new_tokens, 1.0), cfg.seed + 1, device,
                              cfg.precision)
    rows = []
    for text, category, (answers, _, ended) in zip(prompts.texts, prompts.categories, every):
        gold = scorer.score([text] * cfg.bon_n, answers, [category] * cfg.bon_n, ended)
        rows.append({"prompt": text, "responses": answers, "ended": ended, "gold": gold})
    return rows


def reused_bon_samples(cfg: StudyConfig) -> list[dict] | None:
    """--bon-samples: an earlier study's rows, cut to the first --bon-prompts prompts and the
    first --bon-n answers of each; every malformed line named by file, line and field."""
    import math

    from alignkit.data.readers import read_records

    if not cfg.bon_samples:
        return None
    records = read_records(cfg.bon_samples)
    problems, rows = [], []
    for record in records[:cfg.bon_prompts]:
        row = record.fields
        responses, gold = row.get("responses"), row.get("gold")
        ended = row.get("ended", [True] * len(responses or []))
        if not isinstance(row.get("prompt"), str) or not row["prompt"]:
            problems.append(f"{record.where}: field 'prompt': a non-empty string is required")
        elif not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            problems.append(f"{record.where}: field 'responses': a list of strings is required")
        elif len(responses) < cfg.bon_n:
            problems.append(f"{record.where}: field 'responses': {len(responses)} answers, fewer "
                            f"than --bon-n {cfg.bon_n}")
        elif not isinstance(gold, list) or len(gold) != len(responses) or not all(
                isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g)
                for g in gold):
            problems.append(f"{record.where}: field 'gold': one finite number per answer is "
                            f"required")
        elif not isinstance(ended, list) or len(ended) != len(responses):
            problems.append(f"{record.where}: field 'ended': one true/false per answer is "
                            f"required")
        else:
            rows.append({"prompt": row["prompt"], "responses": responses[:cfg.bon_n],
                         "ended": ended[:cfg.bon_n], "gold": gold[:cfg.bon_n]})
    if problems:
        raise DataError(problems)
    if len(records) < cfg.bon_prompts:
        raise UserError(f"--bon-samples {cfg.bon_samples}: {len(records)} prompts, fewer than "
                        f"--bon-prompts {cfg.bon_prompts}")
    return rows


def bon_sample_tensors(rows: list[dict]) -> dict:
    """The study's view of best-of-n rows: every (prompt, answer) pair flattened prompt-major,
    and gold and each answer's word count as [prompts, n] float64 tensors."""
    from alignkit.feedback.simulated import response_words

    return {"texts": [row["prompt"] for row in rows for _ in row["responses"]],
            "answers": [a for row in rows for a in row["responses"]],
            "gold": torch.tensor([row["gold"] for row in rows], dtype=torch.float64),
            "words": torch.tensor([[response_words(a) for a in row["responses"]]
                                   for row in rows], dtype=torch.float64)}


def best_of_n_study(cfg: StudyConfig, samples: dict, reward_final: Path, device: str) -> dict:
    """Every proxy's best-of-n curve over the samples, its fit of Gao et al.'s BoN form, where
    gold peaked, and how often the proxy orders two answers as gold does."""
    from alignkit.models.reward import RewardModel

    members = RewardModel.load(str(reward_final), device).score(
        samples["texts"], samples["answers"]).per_member.float().cpu()
    return best_of_n_by_proxy(members, samples["gold"], default_ns(cfg.bon_n),
                              cfg.proxy_names(), cfg.uwo_lambda, samples["words"])


def ppo_study(cfg: StudyConfig, policy: str, rate: float, reward_final: Path,
              root: Path) -> dict:
    """One PPO run per proxy and KL coefficient: its held-out readings, where gold peaked, how
    early the forecast warned, the checkpoint the lower confidence bound chose and its gold
    regret; then Gao et al.'s RL form fitted to each proxy's readings of every run."""
    out = {}
    for proxy in cfg.proxy_names():
        runs, points = [], []
        for coef in cfg.coefficients():
            folder = ppo_folder(root, rate, proxy, coef)
            run_cfg = dataclasses.replace(
                cfg.ppo, model=policy, reward_model=str(reward_final), output=str(folder),
                kl_coef=coef, combine=PROXIES[proxy] or "mean",
                uncertainty_penalty=cfg.uwo_lambda,
                reward_members=1 if proxy == "single" else None,
                max_new_tokens=cfg.max_new_tokens, precision=cfg.precision, overwrite=True,
                seed=cfg.seed, device=cfg.device, progress=cfg.progress)
            run_cfg.validate()
            result = ppo.main(run_cfg)
            readings = rl_points(result["monitor"])
            best = [json.loads(line) for line in result["metrics"].read_text().splitlines()
                    if '"best"' in line]
            runs.append({"kl_coef": coef, "folder": str(folder), "readings": readings,
                         "peak": peak_and_fall(readings),
                         "forecast": forecast_lead(result["monitor"], run_cfg.forecast_margin),
                         "selection": {k: best[-1].get(k) for k in (
                             "best_by", "selected_step", "gold_best_step", "selected_gold",
                             "selection_regret")} if best else {}})
            points += readings
        out[proxy] = {"runs": runs, "fit": fit_curve(points, "rl")}
    return out


def write_summary(root: Path, summary: dict) -> None:
    """``study.json``, replaced atomically (``complete``: false while parts are still to come)."""
    write_text_atomic(root / "study.json", json.dumps(summary, indent=1))


def print_level(rate: float, level: dict) -> None:
    """One noise level's table, printed (and flushed) as soon as it is measured."""
    labels = level["labels"]
    print(f"\nlabel noise {rate:.0%}: labels agree with gold {labels['gold_agreement']:.3f}"
          f" (Bayes ceiling {labels['bayes_optimal']:.3f}); ensemble held-out accuracy "
          f"{level['reward_eval'].get('accuracy', float('nan')):.3f}", flush=True)
    longer = labels.get("longer_chosen")
    if longer and longer["pairs"]:
        print(f"  of {longer['pairs']} labelled pairs of different lengths, the labels chose the "
              f"longer answer {longer['labels']:.0%}, gold prefers it {longer['gold']:.0%}",
              flush=True)
    print(f"  {'proxy':<10} {'pair acc':>8} | {'BoN gold n=1 -> peak (n) -> last':>34} "
          f"{'drop +/- s.e.':>15} {'fell':>5} {'R2':>5} | "
          f"{'PPO gold start -> peak (KL) -> last':>36} {'fell':>5} {'R2':>5} {'lead':>5} "
          f"{'regret':>6}", flush=True)
    for proxy in level.get("bon", {}) or level.get("ppo", {}):
        bon, rl = level.get("bon", {}).get(proxy), level.get("ppo", {}).get(proxy)
        cells = [f"  {proxy:<10}"]
        if bon:
            c, pk = bon["curve"], bon["peak"]
            peak_n = max(c, key=lambda p: p["gold"])["n"]
            r2 = bon["fit"]["r2"] if bon["fit"] else float("nan")
            cells.append(f"{bon['gold_pair_accuracy']:>8.3f} | {c[0]['gold']:>9.3f} -> "
                         f"{pk['peak_gold']:.3f} ({peak_n:>2}) -> {pk['last_gold']:.3f}   "
                         f"{pk['drop']:>6.3f} +/- {pk['drop_se']:.3f} "
                         f"{'yes' if pk['fell'] else 'no':>5} {r2:>5.2f} |")
        else:
            cells.append(f"{'':>8} | {'':>34} {'':>15} {'':>5} {'':>5} |")
        if rl:
            run = max(rl["runs"], key=lambda r: r["readings"][-1]["kl"])
            pk, first = run["peak"], run["readings"][0]
            r2 = rl["fit"]["r2"] if rl["fit"] else float("nan")
            lead = run["forecast"]["lead_steps"]
            regret = run["selection"].get("selection_regret")
            cells.append(f"{first['gold']:>9.3f} -> {pk['peak_gold']:.3f} ({pk['peak_kl']:>5.2f})"
                         f" -> {pk['last_gold']:.3f}  {'yes' if pk['fell'] else 'no':>5} "
                         f"{r2:>5.2f} {'-' if lead is None else lead:>5} "
                         f"{'-' if regret is None else f'{regret:.3f}':>6}")
        print(" ".join(cells), flush=True)


def overoptimisation(cfg: StudyConfig) -> dict:
    from alignkit.judges.gold import GoldScorer

    clock = StageClock()
    # 1. Flags; --quick shortens every part; the study's folder.
    cfg.validate()
    given, cfg = cfg, cfg.shortened() if cfg.quick else cfg
    root = Path(cfg.output)
    bon_rows = reused_bon_samples(cfg)

    # 2. The starting policy: --policy, or the demo's stage 1 (LoRA SFT) into <output>/sft.
    policy_path = cfg.policy
    if policy_path is None:
        stage1 = dataclasses.replace(cfg.sft, model=cfg.model, output=str(root / "sft"),
                                     precision=cfg.precision, overwrite=cfg.overwrite,
                                     seed=cfg.seed, device=cfg.device, progress=cfg.progress)
        stage1.validate()
        policy_path = str(sft.main(stage1).final)
        clock.lap("sft")
    save_config(given, root)
    device = pick_device(cfg.device)
    policy, tokenizer = load_model_and_tokenizer(policy_path, device)
    policy.eval()
    scorer = GoldScorer(token_counter=tokenizer)

    # 3. Candidates to label (training prompts) and best-of-n samples (held-out prompts), drawn
    #    once from the starting policy and shared by every noise level and proxy.
    log.info("study: sampling %d answers to each of %d training prompts", cfg.label.num_responses,
             cfg.label.prompts)
    items = sample_candidates_for_labels(cfg, policy, tokenizer)
    clock.lap("candidates")
    samples = None
    if bon_rows is None and cfg.bon_n > 0:
        log.info("study: sampling %d answers to each of %d held-out prompts", cfg.bon_n,
                 cfg.bon_prompts)
        bon_rows = best_of_n_samples(cfg, policy, tokenizer, scorer, device)
        clock.lap("bon-samples")
    if bon_rows is not None:  # the samples beside the study's numbers, for any later analysis
        target = root / "bon_samples.jsonl"
        if not (cfg.bon_samples and target.exists() and target.samefile(cfg.bon_samples)):
            write_jsonl_atomic(bon_rows, target)
        samples = bon_sample_tensors(bon_rows)
    del policy

    # 4. Each noise level: the panel's rankings, the ensemble learned from them, best-of-n
    #    against every proxy, then PPO against every proxy at every KL coefficient.
    levels = {}
    summary = {"policy": policy_path, "label_length_bias": cfg.label.length_bias,
               "uwo_lambda": cfg.uwo_lambda, "bon_n": cfg.bon_n,
               "bon_prompts": cfg.bon_prompts if samples is not None else 0,
               "bon_samples_from": cfg.bon_samples if samples is not None else None,
               "kl_coefs": cfg.coefficients(), "proxies": cfg.proxy_names(), "levels": levels,
               "complete": False}
    for rate in cfg.levels():
        folder = noise_folder(root, rate)
        labels = label_at_noise(cfg, items, scorer, rate, folder / "prefs.jsonl")
        clock.lap(f"labels-{rate:g}")
        stage2 = dataclasses.replace(cfg.reward, data=str(folder / "prefs.jsonl"),
                                     output=str(folder / "reward"), overwrite=True,
                                     seed=cfg.seed, device=cfg.device, progress=cfg.progress)
        stage2.validate()
        trained = reward.main(stage2)
        clock.lap(f"reward-{rate:g}")
        level = {"labels": labels, "reward_eval": trained["eval"],
                 "reward_model": str(trained["final"])}
        levels[f"{rate:g}"] = level
        if samples is not None:  # each part is in study.json as soon as it is measured
            level["bon"] = best_of_n_study(cfg, samples, trained["final"], device)
            write_summary(root, summary)
            clock.lap(f"bon-{rate:g}")
        if cfg.coefficients() and rate in cfg.ppo_levels():
            level["ppo"] = ppo_study(cfg, policy_path, rate, trained["final"], root)
            write_summary(root, summary)
            clock.lap(f"ppo-{rate:g}")
        print_level(rate, level)

    # 5. The study's numbers beside its outputs, then the run report with its plots.
    from alignkit.evaluation.report import build_report

    summary.update(complete=True, seconds=clock.elapsed(),
                   stage_seconds=clock.seconds, machine=describe_machine(device))
    write_summary(root, summary)
    summary["report"] = str(build_report(root).path)
    print(f"study: {root / 'study.json'}\n{clock.line(summary['seconds'])}\n"
          f"{machine_line(summary['machine'])}\nreport: {summary['report']}", flush=True)
    return summary
