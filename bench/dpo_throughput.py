"""DPO training throughput (pairs/s) and peak memory: alignkit against TRL's ``DPOTrainer``.

    python bench/dpo_throughput.py --quick          # harness check: tiny model, 6 steps (~2 min)
    python bench/dpo_throughput.py                  # tiny (20 steps) + SmolLM2 LoRA (8 steps)
    python bench/dpo_throughput.py --workloads smollm2 --frameworks alignkit,trl-fp32

Workloads (same model, pairs, batch and steps on every side):

- ``tiny``: the random tiny Llama of the other benchmarks (hidden 256, 4 layers), full
  fine-tuning, fp32;
- ``smollm2``: SmolLM2-135M-Instruct with LoRA r=16, alpha 32 on q/k/v/o, fp32.

Pairs: the 340 shipped demonstrations, chosen = the demonstration, rejected = another prompt's
demonstration (even records) or the prompt echoed back (odd records), as in the reward benchmark;
8 pairs per optimiser step, in alignkit's batch order (TRL reads the same pairs sequentially).
Both sides get conversational records and apply the model's chat template themselves.

Frameworks (each in its own fresh process, one after the other):

- ``alignkit``: the ``alignkit dpo`` stage (``alignkit.cli.run(DPOConfig(...))``) with its
  defaults (padding-free rows, each prompt run once for both responses, reference log-probs
  computed once before step 1 and cached);
- ``alignkit-nopack``: the same with ``packing=False`` (right-padded rows);
- ``trl-fp32``: ``DPOTrainer`` with ``bf16=False, gradient_checkpointing=False`` and its default
  reference handling (a reference forward every step);
- ``trl-fp32-precompute``: the same with ``precompute_ref_log_probs=True`` (TRL's cache, like
  alignkit's);
- ``trl``: TRL's defaults (bf16 autocast, gradient checkpointing; slow on CPUs without AMX).

Timing: wall time between the ends of consecutive optimiser steps, steps ``warmup+1..N``; the
reference pre-pass of ``alignkit`` and ``trl-fp32-precompute`` happens before step 1 and is
reported as ``startup_s``. Peak memory: ``ru_maxrss`` of the run's process after training.
"""

from __future__ import annotations

import argparse
import json
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
    fmt,
    idle_check,
    machine_facts,
    others_share,
    peak_rss_mib,
    spawn,
    summarise,
    tiny_model_folder,
    versions,
    write_json,
)

RESULTS = HERE / "results"
TINY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 512}
LORA = {"r": 16, "alpha": 32, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
WORKLOADS = {
    "tiny": {"lora": False, "lr": 5e-6, "steps": 20,
             "frameworks": ["alignkit", "alignkit-nopack", "trl-fp32", "trl-fp32-precompute"]},
    "smollm2": {"lora": True, "lr": 5e-5, "steps": 8,
                "frameworks": ["alignkit", "trl-fp32", "trl-fp32-precompute"]},
}
FRAMEWORKS = ("alignkit", "alignkit-nopack", "trl-fp32", "trl-fp32-precompute", "trl")


# ---------------------------------------------------------------------------------------------
# children


def child_alignkit(spec: dict) -> dict:
    import torch

    from alignkit.cli import run
    from alignkit.config import DPOConfig
    from alignkit.models import checkpoint as ckpt
    from alignkit.utils.metrics import read_metrics

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    out = Path(spec["workdir"]) / "alignkit"
    lora = WORKLOADS[spec["workload"]]["lora"]
    cfg = DPOConfig(model=spec["model"], data=spec["data_path"], output=str(out),
                    max_steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"],
                    beta=0.1, eval_fraction=0.0, sample_prompts=None, save_every=0,
                    eval_every=0, log_every=1, progress=False, seed=spec["seed"],
                    device=spec["device"], precision="fp32", max_length=spec["max_length"],
                    packing=spec["framework"] != "alignkit-nopack", lora=lora,
                    lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                    lora_targets=",".join(LORA["targets"]), schedule="constant")
    peak: dict = {}
    real_save = ckpt.save_final

    def save_final(*a, **kw):  # after the last step: note the training peak first
        peak["rss"] = peak_rss_mib()
        return real_save(*a, **kw)

    ckpt.save_final = save_final  # the trainer saves through the module: the hook reaches it
    try:
        run(cfg)
    finally:
        ckpt.save_final = real_save
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    result = summarise([r["time"] for r in rows], [int(r["pairs"]) for r in rows],
                       spec["warmup"])
    result.update(pairs_per_s=result.pop("tokens_per_s"), peak_rss_mib=peak["rss"],
                  startup_s=rows[0]["time"] - STARTED,
                  tokens_per_step=[int(r["tokens"]) for r in rows],
                  computed_per_step=[int(r["computed_tokens"]) for r in rows],
                  loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"])
    return result


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    pairs = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    ordered = [pairs[i] for batch in spec["order"] for i in batch]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in ordered])
    step_ends: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.time())

    kwargs = {} if spec["framework"] == "trl" else {"bf16": False,
                                                     "gradient_checkpointing": False}
    args = DPOConfig(output_dir=str(Path(spec["workdir"]) / "trl"),
                     per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
                     max_steps=spec["steps"], learning_rate=spec["lr"], beta=0.1,
                     max_length=spec["max_length"], lr_scheduler_type="constant",
                     precompute_ref_log_probs=spec["framework"] == "trl-fp32-precompute",
                     seed=spec["seed"], report_to="none", save_strategy="no",
                     eval_strategy="no", train_sampling_strategy="sequential",
                     disable_tqdm=True, logging_steps=1, use_cpu=spec["device"] == "cpu",
                     **kwargs)
    peft_config = None
    if WORKLOADS[spec["workload"]]["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                 target_modules=LORA["targets"], bias="none",
                                 task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=spec["model"], args=args, train_dataset=dataset,
                         peft_config=peft_config, callbacks=[Clock()])
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    rss = peak_rss_mib()
    # the precompute pass collates every batch once before training: keep the training ones
    tokens = tokens[-len(step_ends):] if len(tokens) > len(step_ends) else tokens
    result = summarise(step_ends, [spec["batch_size"]] * len(step_ends), spec["warmup"])
    result.update(pairs_per_s=result.pop("tokens_per_s"), peak_rss_mib=rss,
                  startup_s=step_ends[0] - STARTED, tokens_per_step=tokens)
    return result


def demo_pairs(records: list[dict]) -> list[dict]:
    """One preference pair per demonstration: chosen = its completion; rejected = the completion
    of the record half the file away (even records) or the prompt echoed back (odd records)."""
    n = len(records)
    pairs = []
    for i, r in enumerate(records):
        rejected = records[(i + n // 2) % n]["completion"] if i % 2 == 0 else r["prompt"]
        if rejected.strip() == r["completion"].strip():
            rejected = r["prompt"]
        pairs.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": rejected})
    return pairs


def run_prepare(spec_path: str) -> None:
    """Model folders, the pair file (one pair per unique prompt) and alignkit's batch order."""
    spec = json.loads(Path(spec_path).read_text())
    from alignkit.data.readers import shipped_data_path
    from alignkit.data.sft import micro_batch_indices
    from alignkit.models.loading import resolve_model

    records = [json.loads(line) for line in shipped_data_path("demo").read_text().splitlines()
               if line.strip()]
    n = len(records)
    data_path = Path(spec["workdir"]) / "pairs.jsonl"
    data_path.write_text("".join(json.dumps(p) + "\n" for p in demo_pairs(records)))
    models = {w: tiny_model_folder(TINY) if w == "tiny" else resolve_model("default")
              for w in spec["workloads"]}
    order = [micro_batch_indices(k, n, spec["batch_size"], spec["seed"])
             for k in range(spec["steps"])]
    Path(spec["result"]).write_text(json.dumps({"models": models, "data_path": str(data_path),
                                                "n_pairs": n, "order": order}))


# ---------------------------------------------------------------------------------------------
# parent


def print_table(results: list[dict]) -> list[dict]:
    print(f"\n{'workload':<9}{'framework':<21}{'pairs/s':>8}{'s/step':>8}{'tok/step':>9}"
          f"{'peak MiB':>9}{'startup':>8}  vs trl-fp32 (speed, mem)")
    summary = []
    for r in results:
        peer = next((p for p in results if p["workload"] == r["workload"]
                     and p["framework"] == "trl-fp32"), None)
        speed = r["pairs_per_s"] / peer["pairs_per_s"] if peer else None
        mem = r["peak_rss_mib"] / peer["peak_rss_mib"] if peer else None
        tok = statistics.mean(r["tokens_per_step"]) if r.get("tokens_per_step") else None
        print(f"{r['workload']:<9}{r['framework']:<21}{r['pairs_per_s']:>8.2f}"
              f"{r['s_per_step']:>8.3f}{fmt(tok, '.0f'):>9}{r['peak_rss_mib']:>9.0f}"
              f"{r['startup_s']:>8.1f}  {fmt(speed, '.2f')}x, {fmt(mem, '.2f')}x")
        summary.append({k: r.get(k) for k in ("workload", "framework", "pairs_per_s",
                                              "s_per_step", "peak_rss_mib", "startup_s")}
                       | {"speed_vs_trl_fp32": speed, "memory_vs_trl_fp32": mem,
                          "mean_tokens_per_step": tok})
    print("speed above 1: alignkit faster; memory below 1: alignkit lower. tok/step: real tokens "
          "of the step's chosen + rejected sequences (prompt included in each)")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny workload, 6 steps")
    p.add_argument("--workloads", default=None, help=f"comma-separated, from {', '.join(WORKLOADS)}")
    p.add_argument("--frameworks", default=None, help=f"comma-separated, from {', '.join(FRAMEWORKS)}")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    workloads = args.workloads.split(",") if args.workloads else (
        ["tiny"] if args.quick else list(WORKLOADS))
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown {w!r}")
    frameworks = {w: args.frameworks.split(",") if args.frameworks else WORKLOADS[w]["frameworks"]
                  for w in workloads}
    for fs in frameworks.values():
        for f in fs:
            if f not in FRAMEWORKS:
                raise SystemExit(f"--frameworks: unknown {f!r}")
    steps = {w: args.steps or (6 if args.quick else WORKLOADS[w]["steps"]) for w in workloads}
    json_path = Path(args.json) if args.json else RESULTS / (
        "dpo_throughput_quick.json" if args.quick else "dpo_throughput.json")
    started = time.time()
    results, failed = [], []
    with tempfile.TemporaryDirectory(prefix="alignkit-dpo-bench-") as tmp:
        workdir = Path(tmp)
        try:
            prep = spawn(__file__, "--prepare", {"workloads": workloads, "seed": args.seed,
                                                 "batch_size": args.batch_size,
                                                 "steps": max(steps.values()),
                                                 "workdir": str(workdir)},
                         workdir, "prepare", args.timeout)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        for w in workloads:
            for framework in frameworks[w]:
                label = f"{w}-{framework}"
                before = idle_check()
                print(f"run {label}: {steps[w]} steps ...", flush=True)
                spec = {"workload": w, "framework": framework, "model": prep["models"][w],
                        "data_path": prep["data_path"], "order": prep["order"][:steps[w]],
                        "steps": steps[w], "warmup": args.warmup, "batch_size": args.batch_size,
                        "lr": WORKLOADS[w]["lr"], "max_length": args.max_length,
                        "seed": args.seed, "device": args.device, "threads": args.threads,
                        "workdir": str(workdir / label)}
                t0, busy0, child0 = time.time(), cpu_busy_s(), children_cpu_s()
                try:
                    r = spawn(__file__, "--child", spec, workdir, label, args.timeout)
                except RunFailed as e:
                    print(e, file=sys.stderr, flush=True)
                    failed.append(label)
                    continue
                wall = time.time() - t0
                during = others_share(busy0, cpu_busy_s(), children_cpu_s() - child0, wall)
                r.update(workload=w, framework=framework, others_cpu_share_before=before,
                         others_cpu_share_during=during, run_wall_s=wall)
                print(f"  {r['pairs_per_s']:.2f} pairs/s, {r['s_per_step']:.3f} s/step, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB"
                      + (f", others used {during:.0%} of the CPUs" if during is not None else ""),
                      flush=True)
                results.append(r)
    if not results:
        raise SystemExit("every run failed")
    summary = print_table(results)
    busy = [f"{r['workload']}-{r['framework']}" for r in results
            if max(r["others_cpu_share_before"] or 0, r["others_cpu_share_during"] or 0)
            > BUSY_SHARE]
    if busy:
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during "
              f"{', '.join(busy)}: rerun on a quiet machine", file=sys.stderr)
    write_json(json_path, {
        "benchmark": "dpo_throughput", "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.time() - started,
        "machine": machine_facts(),
        "versions": versions(),
        "settings": {"batch_size_pairs": args.batch_size, "steps": steps, "warmup": args.warmup,
                     "max_length": args.max_length, "beta": 0.1, "lora": LORA, "tiny": TINY,
                     "frameworks": frameworks, "n_pairs": prep["n_pairs"]},
        "summary": summary, "runs": results, "busy_runs": busy, "failed_runs": failed})
    print(f"wrote {json_path}")
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
