"""Reward-model training throughput and peak memory: alignkit against TRL's ``RewardTrainer``.

    python bench/reward_throughput.py                  # both workloads (~10 min on 2 idle cores)
    python bench/reward_throughput.py --quick          # MiniLM, a few steps: checks the harness
    python bench/reward_throughput.py --workloads minilm --steps 40 --repeats 3
    python bench/reward_throughput.py --workloads smollm2 --lora 16   # LoRA on both sides

Workloads (same model, data, batch of preference pairs, max length and steps on every side; one
reward model, i.e. ``--ensemble 1``; full fine-tuning unless ``--lora``, fp32):
- ``minilm``: the packaged all-MiniLM-L6-v2 encoder (``--model minilm``, 22M parameters);
- ``smollm2``: SmolLM2-135M-Instruct (``--model default``) as a causal reward model.
Full fine-tuning on both by default: alignkit's reward recipe trains every weight, and TRL's
``RewardTrainer`` does the same when given no ``peft_config``. ``--lora R``: LoRA adapters of rank
R (alpha 2R, no dropout) on the attention projections instead, on both sides (alignkit
``--lora``; TRL a peft ``LoraConfig`` with ``task_type="SEQ_CLS"``, which also trains the
classifier's ``score`` head, as alignkit trains its head).

Data: a pairwise preference file generated from the shipped demonstrations
(``alignkit.data.readers.shipped_data_path("demo")``, 340 records with unique prompts): chosen =
the record's completion; rejected = the completion of the record half the file away (even
records) or the prompt echoed back (odd records). Deterministic; one pair per prompt, so a batch
of 8 prompt groups is a batch of 8 pairs. alignkit reads it as ``{prompt, chosen, rejected}``.
TRL gets the same pairs in exactly the order alignkit draws its batches
(``train_sampling_strategy="sequential"`` over alignkit's order), so every optimiser step trains on
the same eight pairs everywhere:
- ``smollm2``: as conversational records (``prompt=[user]``, ``chosen``/``rejected=[assistant]``),
  which TRL renders with the chat template itself, as alignkit's causal backbone does;
- ``minilm``: as TRL's pre-tokenised format (``chosen_ids``/``rejected_ids``) holding alignkit's
  own encoding of each (prompt, response) text pair, ``[CLS] prompt [SEP] response [SEP]``. TRL's
  text path cannot take this encoder: it appends ``tokenizer.eos_token`` to every standard
  (non-conversational) response, and a BERT tokenizer has none (``str.endswith(None)`` fails).
  TRL's collator passes no ``token_type_ids`` (zeros for BERT); alignkit passes the segment ids.
The real tokens of every step are counted on both sides (from the batches each collator builds)
and checked equal.

Frameworks (``--frameworks``):
- ``alignkit``: ``alignkit.cli.run(RewardConfig(...))``, ``ensemble=1``,
  ``eval_fraction=0``, ``warmup_steps=0``, no progress bar, no checkpoints;
- ``trl``: ``RewardTrainer`` with TRL's defaults for precision and memory (bf16 mixed precision
  and gradient checkpointing; ``use_cpu=True`` on CPU, which TRL demands for bf16 there);
- ``trl-fp32``: the same with ``bf16=False`` and ``gradient_checkpointing=False``.
By default ``minilm`` runs alignkit, trl-fp32 and trl (cut to ``--trl-default-steps``) and
``smollm2`` runs alignkit and trl-fp32 (bf16 matmuls on a CPU without AVX-512/AMX are 50-100x
slower than fp32; see bench/README.md).

Measured (each framework in its own fresh subprocess, one after the other, never concurrently):
- throughput: preference pairs per optimiser step divided by the wall time between the ends of
  consecutive optimiser steps, over steps warmup+1..N (batch building, forward, backward,
  clipping, the optimiser step and each framework's per-step logging included). alignkit's pairs
  and step-end times come from the ``split == "train"`` rows of ``<output>/metrics.jsonl``
  (``pairs``, ``time``; its own ``pairs_per_s`` and ``step_time_s`` are kept as ``reported_*``);
  TRL's from a callback and from every batch its collator builds.
- peak memory: peak RSS of the process (``getrusage``) at the end of training (alignkit: when it
  starts the post-training normalisation pass; TRL: ``on_train_end``, nothing saved); on CUDA
  also ``torch.cuda.max_memory_allocated``.
alignkit's post-training normalisation pass (one forward over every training response to fit the
reward offset and scale; not training) is skipped here: after peak memory is noted it returns
at once, leaving offset 0 and scale 1, so a SmolLM2 run does not spend a minute after the
measurement.

Results: a table on stdout (ratios alignkit/TRL: pairs/s > 1 and memory < 1 favour alignkit) and
JSON in ``bench/results/reward_throughput.json`` (``--quick``: ``reward_throughput_quick.json``).
Run it alone: on a 2-core machine a second torch job slows both up to 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()  # the child's clock starts before any heavy import

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import (  # noqa: E402
    run_child,
    BUSY_SHARE,
    RunFailed,
    children_cpu_s,
    cpu_busy_s,
    cuda_peak_mib,
    fmt,
    idle_check,
    machine_facts,
    others_share,
    peak_rss_mib,
    spawn,
    summarise,
    sync,
    versions,
    write_json,
)

RESULTS = HERE / "results"
FRAMEWORKS = ("alignkit", "alignkit-nopack", "trl", "trl-fp32")
WORKLOADS = {
    # name: alignkit --model, backbone kind, learning rate, default steps, default frameworks.
    # TRL's default (bf16 autocast + gradient checkpointing) is left out for SmolLM2: bf16
    # matmuls on a CPU without AVX-512/AMX make each step take minutes (opt in with --frameworks).
    "minilm": {"model": "minilm", "backbone": "encoder", "lr": 5e-5, "steps": 40,
               "frameworks": ["alignkit", "trl-fp32", "trl"],
               "lora_targets": ["query", "key", "value"]},
    "smollm2": {"model": "default", "backbone": "causal", "lr": 1e-5, "steps": 12,
                "frameworks": ["alignkit", "trl-fp32"],
                "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
}


def to_pairs(summary: dict) -> dict:
    """``summarise`` counts 'tokens'; here the unit is preference pairs."""
    out = dict(summary)
    out["timed_pairs"] = out.pop("timed_tokens")
    out["pairs_per_s"] = out.pop("tokens_per_s")
    return out


# ---------------------------------------------------------------------------------------------
# child: one framework, one workload, in a fresh process


def child_alignkit(spec: dict) -> dict:
    import torch

    from alignkit.cli import run
    from alignkit.config import RewardConfig
    from alignkit.models.lora import count_parameters
    from alignkit.training import reward as reward_training
    from alignkit.utils.metrics import read_metrics

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    out = Path(spec["workdir"]) / "alignkit"
    cfg = RewardConfig(
        model=spec["model"], data=spec["data_path"], backbone="auto", ensemble=1,
        device=spec["device"], eval_fraction=0.0, max_length=spec["max_length"], lr=spec["lr"],
        warmup_steps=0, batch_size=spec["batch_size"], grad_accum=1, max_steps=spec["steps"],
        output=str(out), seed=spec["seed"], log_every=1, eval_every=0, save_every=0,
        overwrite=True, progress=False, packing=spec["framework"] != "alignkit-nopack",
        lora=bool(spec["lora_r"]), lora_r=spec["lora_r"] or 16,
        lora_alpha=2 * spec["lora_r"] or 32, lora_dropout=0.0,
        lora_targets=",".join(spec["lora_targets"]))

    # Observe (not change) training: count what each batch holds as alignkit builds it (once per
    # step with grad_accum 1), and note the peak memory once training is over.
    batches: list[dict] = []
    at_end: dict = {}
    real_batch, real_fit = reward_training.preference_batch, reward_training.fit_normalisation

    def preference_batch(groups, model, cfg):
        batch = real_batch(groups, model, cfg)
        batches.append({"pairs": batch.num_pairs, "tokens": batch.num_tokens,
                        "positions": int(batch.input_ids.numel()),
                        "computed": batch.computed_tokens, "packed": batch.packed})
        return batch

    def fit_normalisation(model, groups, cfg, device):  # after the last step: not timed
        sync(spec["device"])
        at_end.update(peak_rss_mib=peak_rss_mib(), cuda_peak_mib=cuda_peak_mib(spec["device"]))
        # the normalisation forward over every training response is skipped (see the docstring)

    reward_training.preference_batch = preference_batch
    reward_training.fit_normalisation = fit_normalisation
    try:
        trained = run(cfg)["model"]
    finally:
        reward_training.preference_batch = real_batch
        reward_training.fit_normalisation = real_fit
    if not at_end:  # the normalisation forward ran (and its memory counted): not this benchmark
        raise SystemExit("alignkit: the reward stage did not call "
                         "alignkit.training.reward.fit_normalisation, so it could not be skipped")

    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"]
    rows.sort(key=lambda r: r["step"])
    steps = [int(r["step"]) for r in rows]
    if steps != list(range(1, spec["steps"] + 1)):
        raise SystemExit(f"alignkit metrics.jsonl: expected train rows for steps 1..{spec['steps']}, "
                         f"got {steps}")
    setup = next((r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "setup"), {})
    if int(setup.get("skipped_records", 0)) or int(setup.get("heldout_prompts", 0)):
        raise SystemExit(f"alignkit dropped or held out records: {setup}")
    pairs = [int(r["pairs"]) for r in rows]
    batches = batches[:len(rows)]
    if [b["pairs"] for b in batches] != pairs:
        raise SystemExit("alignkit: the batches counted do not match metrics.jsonl 'pairs'")
    if all("time" in r for r in rows):
        ends = [float(r["time"]) for r in rows]
    else:  # no wall-clock stamp: fall back to alignkit's own step timer
        ends = [sum(float(x["step_time_s"]) for x in rows[:k + 1]) for k in range(len(rows))]
    result = to_pairs(summarise(ends, pairs, spec["warmup"]))
    result.update(steps_done=len(rows), stopped_early=False)
    timed = rows[spec["warmup"]:]
    result.update(
        pairs_per_step=pairs, tokens_per_step=[b["tokens"] for b in batches],
        positions_per_step=[b["positions"] for b in batches],
        computed_per_step=[b["computed"] for b in batches],
        packed_steps=sum(bool(b["packed"]) for b in batches),
        # alignkit's own numbers (its step timer starts at batch building, stops after zero_grad)
        reported_pairs_per_s=sum(r["pairs"] for r in timed) / sum(r["step_time_s"] for r in timed),
        reported_pairs_per_s_median=statistics.median(r["pairs_per_s"] for r in timed),
        reported_step_time_s_median=statistics.median(r["step_time_s"] for r in timed),
        startup_s=float(rows[0]["time"]) - STARTED if "time" in rows[0] else None,
        peak_rss_mib=at_end.get("peak_rss_mib") or peak_rss_mib(),
        peak_rss_lifetime_mib=peak_rss_mib(),
        cuda_peak_mib=at_end.get("cuda_peak_mib"), rss_after_import_mib=rss_import,
        loss_first=float(rows[0]["loss"]), loss_last=float(rows[-1]["loss"]),
        settings={"backbone": setup.get("backbone"), "members": cfg.ensemble,
                  "precision": "fp32 (the reward recipe has no mixed precision)",
                  "optimizer": "torch AdamW (fused where available)", "schedule": cfg.schedule,
                  "gradient_checkpointing": False, "max_length": cfg.max_length,
                  "max_grad_norm": cfg.max_grad_norm, "weight_decay": cfg.weight_decay,
                  "trainable_params": count_parameters(trained)[0]})
    return result


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    device = spec["device"]
    prepared = json.loads(Path(spec["trl_data_path"]).read_text())
    # alignkit's batch order, step by step; TRL reads it sequentially, batch_size at a time.
    ordered = [prepared[i] for batch in spec["order"] for i in batch]
    dataset = Dataset.from_list(ordered)

    defaults = spec["framework"] == "trl"
    kwargs = {} if defaults else {"bf16": False, "gradient_checkpointing": False}
    args = RewardConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, max_steps=spec["steps"], max_length=spec["max_length"],
        learning_rate=spec["lr"], warmup_steps=0, seed=spec["seed"], report_to="none",
        save_strategy="no", eval_strategy="no", train_sampling_strategy="sequential",
        disable_tqdm=True, use_cpu=device == "cpu", **kwargs)

    step_ends: list[float] = []
    pairs: list[int] = []
    tokens: list[int] = []
    positions: list[int] = []
    at_end: dict = {}

    class Clock(TrainerCallback):
        """Step-end times; stops a run that is over its time budget once a step is timed."""

        def on_train_begin(self, args, state, control, **kw):
            self.began = time.time()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            step_ends.append(time.time())
            over = spec["budget_s"] and step_ends[-1] - self.began > spec["budget_s"]
            if over and len(step_ends) > spec["warmup"]:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kw):
            at_end.update(peak_rss_mib=peak_rss_mib(), cuda_peak_mib=cuda_peak_mib(device))

    # RewardTrainer loads AutoModelForSequenceClassification(num_labels=1) from the path itself.
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    peft_config = None
    if spec["lora_r"]:
        from peft import LoraConfig
        peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=2 * spec["lora_r"],
                                 lora_dropout=0.0, target_modules=spec["lora_targets"],
                                 task_type="SEQ_CLS")
    trainer = RewardTrainer(model=spec["model_path"], args=args, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[Clock()],
                            peft_config=peft_config)
    if len(trainer.train_dataset) != len(ordered):
        raise SystemExit(f"TRL kept {len(trainer.train_dataset)} of {len(ordered)} pairs "
                         f"(max_length filter?); the order would no longer match alignkit's")

    # Count every batch as TRL's collator builds it (on the host, so no device sync is added to
    # the step). Batches come in order; the loader may collate one ahead.
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        pairs.append(int(batch["input_ids"].shape[0]) // 2)  # chosen rows, then rejected rows
        tokens.append(int(batch["attention_mask"].sum()))
        positions.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    train_out = trainer.train()
    if not spec["warmup"] < len(step_ends) <= min(spec["steps"], len(pairs)):
        raise SystemExit(f"TRL ran {len(step_ends)} steps / collated {len(pairs)} batches, "
                         f"expected {spec['steps']} steps")
    del pairs[len(step_ends):], tokens[len(step_ends):], positions[len(step_ends):]
    result = to_pairs(summarise(step_ends, pairs, spec["warmup"]))
    result.update(steps_done=len(step_ends), stopped_early=len(step_ends) < spec["steps"])
    model = trainer.model
    result.update(
        pairs_per_step=pairs, tokens_per_step=tokens, positions_per_step=positions,
        startup_s=step_ends[0] - STARTED,
        peak_rss_mib=at_end.get("peak_rss_mib") or peak_rss_mib(),
        peak_rss_lifetime_mib=peak_rss_mib(),
        cuda_peak_mib=at_end.get("cuda_peak_mib"), rss_after_import_mib=rss_import,
        loss_last=float(train_out.training_loss),
        settings={"model_class": type(model).__name__, "bf16": bool(args.bf16),
                  "gradient_checkpointing": bool(args.gradient_checkpointing),
                  "optimizer": getattr(args.optim, "value", str(args.optim)),
                  "schedule": getattr(args.lr_scheduler_type, "value",
                                      str(args.lr_scheduler_type)),
                  "disable_dropout": bool(args.disable_dropout), "max_length": args.max_length,
                  "max_grad_norm": args.max_grad_norm, "weight_decay": args.weight_decay,
                  "logging_steps": args.logging_steps,
                  "trainable_params": sum(p.numel() for p in model.parameters()
                                          if p.requires_grad)})
    return result


# ---------------------------------------------------------------------------------------------
# prepare: the preference file, TRL's view of it, and alignkit's batch order (in a subprocess,
# so the parent stays light)


def make_pairs(records: list[dict]) -> list[dict]:
    """chosen = the completion; rejected = the completion half the file away (even records) or
    the prompt echoed back (odd records)."""
    n = len(records)
    pairs = []
    for i, r in enumerate(records):
        rejected = records[(i + n // 2) % n]["completion"] if i % 2 == 0 else r["prompt"]
        if rejected.strip() == r["completion"].strip():
            rejected = r["prompt"]
        pairs.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": rejected})
    return pairs


def run_prepare(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from transformers import AutoTokenizer

    from alignkit.data.preferences import encode_response
    from alignkit.data.readers import shipped_data_path
    from alignkit.data.sft import micro_batch_indices
    from alignkit.training.reward import resolve_reward_base

    demo = shipped_data_path("demo")
    records = [json.loads(line) for line in demo.read_text().splitlines() if line.strip()]
    if len({r["prompt"] for r in records}) != len(records):
        raise SystemExit(f"{demo}: prompts are not unique, so prompt groups would not be pairs")
    pairs = make_pairs(records)

    # alignkit's encoding of every response, per workload; a pair longer than --max-length on
    # any workload is dropped for all (alignkit rejects it, TRL would filter it out)
    out: dict = {"workloads": {}}
    encoded = {}
    for name in spec["workloads"]:
        w = WORKLOADS[name]
        path = resolve_reward_base(w["model"])
        tok = AutoTokenizer.from_pretrained(path)
        encoded[name] = [(encode_response(tok, p["prompt"], p["chosen"], w["backbone"]),
                          encode_response(tok, p["prompt"], p["rejected"], w["backbone"]))
                         for p in pairs]
        out["workloads"][name] = {"model_path": path}
    keep = [i for i in range(len(pairs))
            if all(max(len(c[0]), len(r[0])) <= spec["max_length"]
                   for enc in encoded.values() for c, r in [enc[i]])]
    pairs = [pairs[i] for i in keep]
    workdir = Path(spec["workdir"])
    data_path = workdir / "pairs.jsonl"
    data_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    for name in spec["workloads"]:
        enc = [encoded[name][i] for i in keep]
        if WORKLOADS[name]["backbone"] == "encoder":
            # TRL's pre-tokenised format, holding exactly alignkit's ids
            trl = [{"chosen_ids": c[0], "rejected_ids": r[0]} for c, r in enc]
        else:
            trl = [{"prompt": [{"role": "user", "content": p["prompt"]}],
                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                    "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
        trl_path = workdir / f"trl-{name}.json"
        trl_path.write_text(json.dumps(trl))
        out["workloads"][name].update(trl_data_path=str(trl_path),
                                      mean_tokens_per_pair=sum(len(c[0]) + len(r[0])
                                                               for c, r in enc) / len(enc))
    n = len(pairs)
    out.update(data_path=str(data_path), n_records=len(records), n_pairs=n,
               dropped_too_long=len(records) - n,
               rejected_kinds={"other completion": sum(p["rejected"] != p["prompt"] for p in pairs),
                               "prompt echoed": sum(p["rejected"] == p["prompt"] for p in pairs)},
               order=[micro_batch_indices(k, n, spec["batch_size"], spec["seed"])
                      for k in range(spec["steps"])])
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# parent


def build_summary(results: list[dict]) -> list[dict]:
    """Median throughput and highest peak over repeats; ratios alignkit/each TRL variant."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["framework"]), []).append(r)
    rows = []
    for (workload, framework), rs in groups.items():
        rows.append({
            "workload": workload, "framework": framework, "repeats": len(rs),
            "steps": min(r["steps_done"] for r in rs), "timed_steps": min(r["timed_steps"] for r in rs),
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rs),
            "s_per_step": statistics.median(r["s_per_step"] for r in rs),
            "pairs_per_step_mean": statistics.mean(statistics.mean(r["pairs_per_step"]) for r in rs),
            "tokens_per_step_mean": statistics.mean(statistics.mean(r["tokens_per_step"]) for r in rs),
            "positions_per_step_mean": statistics.mean(statistics.mean(r["positions_per_step"])
                                                       for r in rs),
            "computed_per_step_mean": statistics.mean(statistics.mean(
                r.get("computed_per_step") or r["tokens_per_step"]) for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "cuda_peak_mib": (max(r["cuda_peak_mib"] for r in rs)
                              if rs[0].get("cuda_peak_mib") is not None else None),
            "startup_s": (statistics.median(r["startup_s"] for r in rs)
                          if all(r["startup_s"] is not None for r in rs) else None),
        })
    for row in rows:
        ref = next((x for x in rows if x["workload"] == row["workload"]
                    and x["framework"] == "alignkit"), None)
        if ref is None or not row["framework"].startswith("trl"):
            continue
        row["alignkit_over_trl_pairs_per_s"] = ref["pairs_per_s"] / row["pairs_per_s"]
        row["alignkit_over_trl_peak_rss"] = ref["peak_rss_mib"] / row["peak_rss_mib"]
        if ref["cuda_peak_mib"] and row["cuda_peak_mib"]:
            row["alignkit_over_trl_cuda_peak"] = ref["cuda_peak_mib"] / row["cuda_peak_mib"]
    return rows


def data_checks(results: list[dict]) -> dict:
    """Per workload: do all runs see the same pairs and real tokens at every common step?"""
    out = {}
    for workload in dict.fromkeys(r["workload"] for r in results):
        runs = [r for r in results if r["workload"] == workload]
        common = min(len(r["tokens_per_step"]) for r in runs)
        first = runs[0]
        same = all(r["tokens_per_step"][:common] == first["tokens_per_step"][:common]
                   and r["pairs_per_step"][:common] == first["pairs_per_step"][:common]
                   for r in runs)
        out[workload] = {"same_pairs_and_tokens_every_step": same, "common_steps": common,
                         "tokens_in_common_steps": {f"{r['framework']}-{r['repeat']}":
                                                    sum(r["tokens_per_step"][:common]) for r in runs}}
    return out


def print_table(summary: list[dict], checks: dict, settings: dict) -> None:
    print()
    print(f"Reward-model training throughput: batch {settings['batch_size']} pairs, grad accum 1, "
          f"max length {settings['max_length']}, device {settings['device']}, 1 member, "
          f"{settings['training'].split(',')[0]}; timed: steps {settings['warmup'] + 1}..N")
    cuda = any(r["cuda_peak_mib"] is not None for r in summary)
    head = (f"{'workload':<8} {'framework':<15} {'steps':>5} {'pairs/step':>10} {'tok/step':>8} "
            f"{'run/step':>8} {'pos/step':>8} {'pairs/s':>8} {'s/step':>7} {'peak RSS MiB':>12} "
            + (f"{'CUDA MiB':>9} " if cuda else "")
            + f"{'startup s':>9}  {'alignkit/TRL pairs/s':>20} {'alignkit/TRL mem':>16}")
    print(head)
    print("-" * len(head))
    for r in summary:
        print(f"{r['workload']:<8} {r['framework']:<15} {r['steps']:>5} "
              f"{r['pairs_per_step_mean']:>10.0f} {r['tokens_per_step_mean']:>8.0f} "
              f"{r['computed_per_step_mean']:>8.0f} {r['positions_per_step_mean']:>8.0f} "
              f"{r['pairs_per_s']:>8.2f} {r['s_per_step']:>7.3f} {r['peak_rss_mib']:>12.0f} "
              + (f"{fmt(r['cuda_peak_mib'], '.0f'):>9} " if cuda else "")
              + f"{fmt(r['startup_s'], '.1f'):>9}  "
              f"{fmt(r.get('alignkit_over_trl_pairs_per_s'), '.2f'):>19}x "
              f"{fmt(r.get('alignkit_over_trl_peak_rss'), '.2f'):>15}x")
    for workload, c in checks.items():
        state = ("identical" if c["same_pairs_and_tokens_every_step"]
                 else "DIFFERENT (check the data path)")
        totals = set(c["tokens_in_common_steps"].values())
        print(f"{workload}: pairs and real tokens per step {state} across runs over their "
              f"{c['common_steps']} common steps ({'/'.join(map(str, sorted(totals)))} tokens)")
    print("ratios: pairs/s > 1 means alignkit is faster; mem < 1 means alignkit peaks lower")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="MiniLM only, 8 steps (2 warm-up), TRL defaults 4 steps: checks the "
                        "harness.")
    p.add_argument("--workloads", default=None,
                   help=f"Comma-separated, from {','.join(WORKLOADS)} (default: all; --quick: "
                        "minilm).")
    p.add_argument("--frameworks", default=None,
                   help=f"Comma-separated, from {','.join(FRAMEWORKS)}, for every workload "
                        "(default: " + "; ".join(f"{k}: {','.join(v['frameworks'])}"
                                                 for k, v in WORKLOADS.items()) + ").")
    p.add_argument("--steps", type=int, default=None,
                   help="Optimiser steps per run, at most one epoch of full batches (default: "
                        + ", ".join(f"{k} {v['steps']}" for k, v in WORKLOADS.items())
                        + "; --quick: 8).")
    p.add_argument("--trl-default-steps", type=int, default=0,
                   help="Steps of the 'trl' (bf16 + checkpointing) runs, which are slow on CPU; "
                        "they train on the first batches of the others' order (default: 10; "
                        "--quick: 4).")
    p.add_argument("--budget-s", type=int, default=900,
                   help="A TRL run still training after this many seconds stops at the next step "
                        "end, once a step past the warm-up is timed; 0: no limit "
                        "(default: %(default)s).")
    p.add_argument("--warmup", type=int, default=2,
                   help="Leading steps left out of the timing (default: %(default)s).")
    p.add_argument("--repeats", type=int, default=1,
                   help="Runs per framework, interleaved; the table shows the median "
                        "(default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=8,
                   help="Preference pairs per optimiser step (= alignkit prompt groups, one pair "
                        "each) (default: %(default)s).")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lora", type=int, default=0,
                   help="LoRA rank on both sides (0: full fine-tuning; default: %(default)s).")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s).")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every run (0: torch's default).")
    p.add_argument("--timeout", type=int, default=3600, help="Seconds allowed per run.")
    p.add_argument("--log-dir", default=None,
                   help="Keep every run's stdout/stderr here (default: a temporary folder, shown "
                        "only when a run fails).")
    p.add_argument("--json", default=None,
                   help="Where to write the results (default: bench/results/reward_throughput.json;"
                        " --quick: bench/results/reward_throughput_quick.json).")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workloads = (args.workloads.split(",") if args.workloads
                 else ["minilm"] if args.quick else list(WORKLOADS))
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown {w!r} (choose from {', '.join(WORKLOADS)})")
    frameworks = {w: args.frameworks.split(",") if args.frameworks else WORKLOADS[w]["frameworks"]
                  for w in workloads}
    for f in frameworks[workloads[0]]:
        if f not in FRAMEWORKS:
            raise SystemExit(f"--frameworks: unknown {f!r} (choose from {', '.join(FRAMEWORKS)})")
    if args.frameworks and "alignkit" not in frameworks[workloads[0]]:
        print("note: without 'alignkit' in --frameworks there are no ratios", file=sys.stderr)
    steps = {w: args.steps or (8 if args.quick else WORKLOADS[w]["steps"]) for w in workloads}
    trl_default_steps = args.trl_default_steps or (4 if args.quick else 10)
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first timed step is measured from the "
                         "end of the step before it)")
    for w, n in steps.items():
        n_min = min(n, trl_default_steps) if "trl" in frameworks[w] else n
        if n_min < args.warmup + 1:
            raise SystemExit(f"{w}: --steps ({n}) and --trl-default-steps ({trl_default_steps}) "
                             f"must be more than --warmup ({args.warmup})")
    json_path = Path(args.json) if args.json else RESULTS / (
        "reward_throughput_quick.json" if args.quick else "reward_throughput.json")

    settings = {"batch_size_pairs": args.batch_size, "batch_size": args.batch_size,
                "grad_accum": 1, "max_length": args.max_length, "warmup": args.warmup,
                "steps": steps, "trl_default_steps": trl_default_steps,
                "budget_s": args.budget_s, "frameworks": frameworks, "device": args.device,
                "seed": args.seed, "repeats": args.repeats, "threads": args.threads or None,
                "members": 1,
                "training": (f"LoRA r {args.lora}, alpha {2 * args.lora}" if args.lora
                             else "full fine-tuning") + ", fp32 (trl: TRL's defaults)",
                "workloads": {w: {k: v for k, v in WORKLOADS[w].items()
                                  if k not in ("steps", "frameworks")} for w in workloads}}
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: list[dict] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alignkit-reward-bench-") as tmp:
        workdir = Path(tmp)
        print(f"preparing preference data and batch order ({', '.join(workloads)}) ...", flush=True)
        try:
            prep = spawn(__file__, "--prepare",
                         {"workloads": workloads, "batch_size": args.batch_size,
                          "seed": args.seed, "steps": max(steps.values()),
                          "max_length": args.max_length, "workdir": str(workdir)},
                         workdir, "prepare", args.timeout, log_dir)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        # one epoch of full batches at most: alignkit's last batch of an epoch is partial, and
        # TRL, reading the same order batch_size at a time, would then see different batches
        if prep["n_pairs"] // args.batch_size < max(steps.values()):
            raise SystemExit(f"--steps: the preference data has {prep['n_pairs']} pairs, so at "
                             f"most {prep['n_pairs'] // args.batch_size} full batches of "
                             f"{args.batch_size}")
        settings["data"] = {k: prep[k] for k in ("n_records", "n_pairs", "dropped_too_long",
                                                 "rejected_kinds")}
        settings["data"]["mean_tokens_per_pair"] = {
            w: round(prep["workloads"][w]["mean_tokens_per_pair"], 1) for w in workloads}
        for workload in workloads:
            w = WORKLOADS[workload]
            for rep in range(args.repeats):
                for framework in frameworks[workload]:
                    label = f"{workload}-{framework}-{rep}"
                    n_steps = (min(steps[workload], trl_default_steps) if framework == "trl"
                               else steps[workload])
                    before = idle_check()
                    print(f"run {label}: {n_steps} steps"
                          + (f" (WARNING: other work is using {before:.0%} of the CPUs)"
                             if before is not None and before > BUSY_SHARE else "")
                          + " ...", flush=True)
                    spec = {"framework": framework, "model": w["model"],
                            "model_path": prep["workloads"][workload]["model_path"],
                            "trl_data_path": prep["workloads"][workload]["trl_data_path"],
                            "data_path": prep["data_path"], "lr": w["lr"], "steps": n_steps,
                            "warmup": args.warmup, "batch_size": args.batch_size,
                            "max_length": args.max_length, "seed": args.seed,
                            "device": args.device, "threads": args.threads,
                            "order": prep["order"][:n_steps], "budget_s": args.budget_s,
                            "lora_r": args.lora, "lora_targets": w["lora_targets"],
                            "workdir": str(workdir / label)}
                    t0, busy0, child0 = time.time(), cpu_busy_s(), children_cpu_s()
                    try:
                        r = spawn(__file__, "--child", spec, workdir, label, args.timeout, log_dir)
                    except RunFailed as e:  # keep going: the other runs still count
                        print(e, file=sys.stderr, flush=True)
                        failed.append(label)
                        continue
                    wall = time.time() - t0
                    during = others_share(busy0, cpu_busy_s(), children_cpu_s() - child0, wall)
                    r.update(workload=workload, framework=framework, repeat=rep,
                             others_cpu_share_before=before, others_cpu_share_during=during,
                             load_avg_1min=os.getloadavg()[0], run_wall_s=wall)
                    print(f"  {r['pairs_per_s']:.2f} pairs/s, {r['s_per_step']:.3f} s/step, "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB, run {wall:.0f} s"
                          + (f", others used {during:.0%} of the CPUs meanwhile"
                             if during is not None else ""), flush=True)
                    results.append(r)

    if not results:
        raise SystemExit("every run failed")
    summary = build_summary(results)
    checks = data_checks(results)
    print_table(summary, checks, settings)
    busy_runs = [f"{r['workload']}-{r['framework']}-{r['repeat']}" for r in results
                 if max(r["others_cpu_share_before"] or 0, r["others_cpu_share_during"] or 0)
                 > BUSY_SHARE]
    if busy_runs:
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during "
              f"{', '.join(busy_runs)}: those numbers are not trustworthy; rerun on a quiet "
              "machine", file=sys.stderr)
    payload = {
        "benchmark": "reward_throughput",
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.time() - started,
        "machine": machine_facts(),
        "versions": versions(), "settings": settings, "data_checks": checks,
        "summary": summary, "runs": results,
        "definitions": {
            "pairs": "preference pairs (chosen, rejected) in an optimiser step; alignkit: "
                     "metrics.jsonl 'pairs'; TRL: half the rows of each collated batch",
            "pairs_per_s": "timed pairs / wall time between the end of step `warmup` and the end "
                           "of the last step",
            "tokens": "real (non-padding) tokens of the step's chosen and rejected sequences "
                      "(attention_mask sum of the batch each collator builds)",
            "positions": "input_ids.numel() of the step's batch (real tokens plus padding)",
            "peak_rss_mib": "getrusage ru_maxrss at the end of training (alignkit: when the "
                            "post-training normalisation pass starts; TRL: on_train_end, no "
                            "saving)",
            "startup_s": "seconds from the process start (before imports) to the end of step 1",
            "others_cpu_share_during": "share of all CPUs used by processes other than the run "
                                       "while it ran (/proc/stat minus the run's own CPU time); "
                                       f"above {BUSY_SHARE} the run is flagged as untrustworthy",
        },
    }
    if busy_runs:
        payload["busy_runs"] = busy_runs
    if failed:
        payload["failed_runs"] = failed
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def child_for(spec: dict):
    return child_alignkit if spec["framework"].startswith("alignkit") else child_trl


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2], child_for, STARTED)
    elif len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        run_prepare(sys.argv[2])
    else:
        raise SystemExit(main())
