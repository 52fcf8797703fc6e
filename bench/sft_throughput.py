"""SFT throughput and peak memory: alignkit against TRL's ``SFTTrainer``, side by side.

    python bench/sft_throughput.py                  # both workloads (~6 min on 2 idle cores)
    python bench/sft_throughput.py --quick          # tiny model, a few steps: checks the harness
    python bench/sft_throughput.py --workloads tiny --steps 40 --repeats 3

Workloads (same model, data, batch, max length and steps on every side):
- ``tiny``: a random Llama-style model (``alignkit.models.tiny``), full fine-tuning, fp32;
- ``smollm2``: SmolLM2-135M-Instruct (``--model default``) with LoRA r=16 on q,k,v,o, fp32.

Data: the shipped demonstrations (``{prompt, completion, category}``), rendered with the model's
chat template, loss on the completion only. TRL gets them as conversational prompt-completion
records (so it applies the chat template and its completion-only loss) in exactly the order
alignkit draws its batches (``train_sampling_strategy="sequential"`` over alignkit's order), so
every optimiser step sees the same eight examples on every side.

Frameworks (``--frameworks``):
- ``alignkit``: ``alignkit.cli.run(SFTConfig(...))`` with its defaults (padding-free
  packing), no progress bar, no checkpoints, no evaluation;
- ``alignkit-nopack``: the same with ``packing=False`` (right padding, like TRL's default);
- ``trl``: ``SFTTrainer`` with TRL's defaults for precision and memory (bf16 mixed precision and
  gradient checkpointing; ``use_cpu=True`` on CPU, which TRL demands for bf16 there);
- ``trl-fp32``: the same with ``bf16=False`` and ``gradient_checkpointing=False``.
By default ``tiny`` runs alignkit, trl-fp32 and trl (cut to ``--trl-default-steps``), ``smollm2``
runs alignkit and trl-fp32: torch's bf16 matmuls on a CPU without AVX-512/AMX are 50-100x slower
than fp32, which makes a SmolLM2 step under TRL's defaults take minutes.

Measured (each framework in its own fresh subprocess, one after the other, never concurrently):
- throughput: real (non-padding) tokens of the examples processed per optimiser step, divided by
  wall time between the ends of consecutive optimiser steps, over steps warmup+1..N (data loading,
  the step, and each framework's per-step logging included). alignkit's tokens and step-end times
  come from ``<output>/metrics.jsonl`` (``tokens``, ``time``; its own ``tokens_per_s`` and
  ``step_time_s`` are kept for reference); TRL's from a callback and from the attention mask of
  every batch its collator builds. Equal per-step token counts are checked and reported.
- peak memory: peak RSS of the process (``getrusage``: torch allocates natively, so tracemalloc
  would miss it) at the end of training, before alignkit writes ``final/`` (the lifetime peak is
  kept too); on CUDA also ``torch.cuda.max_memory_allocated``.

Results: a table on stdout (ratios alignkit/TRL: tokens/s > 1 and memory < 1 favour alignkit)
and JSON in ``bench/results/sft_throughput.json`` (``--quick``: ``sft_throughput_quick.json``).
Run it alone: on a 2-core machine a second torch job slows both up to 10x.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    tiny_model_folder,
    versions,
    write_json,
)

RESULTS = HERE / "results"
# alignkit variants: SFTConfig overrides on top of its defaults
ALIGNKIT = {"alignkit": {}, "alignkit-nopack": {"packing": False},
            "alignkit-noshare": {"share_prefix": False}}
FRAMEWORKS = (*ALIGNKIT, "trl", "trl-fp32")
WORKLOADS = {
    # name: LoRA, learning rate, default steps, frameworks run when --frameworks is not given.
    # TRL's default (bf16 autocast) is left out for SmolLM2: on a CPU without AVX-512/AMX, torch's
    # bf16 matmuls run ~50-100x slower than fp32, so a single step takes minutes (opt in with
    # --frameworks alignkit,trl-fp32,trl).
    "tiny": {"lora": False, "lr": 2e-5, "steps": 40, "frameworks": ["alignkit", "trl-fp32", "trl"],
             "sizes": {"hidden_size": 256, "num_layers": 4, "num_heads": 4,
                       "intermediate_size": 512}},
    "smollm2": {"lora": True, "lr": 1e-4, "steps": 20, "frameworks": ["alignkit", "trl-fp32"]},
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


# ---------------------------------------------------------------------------------------------
# memory


# ---------------------------------------------------------------------------------------------
# timing: same definition on both sides


# ---------------------------------------------------------------------------------------------
# child: one framework, one workload, in a fresh process


def child_alignkit(spec: dict) -> dict:
    import torch

    from alignkit.cli import run
    from alignkit.config import SFTConfig
    from alignkit.models import checkpoint as ckpt
    from alignkit.utils.metrics import read_metrics

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    out = Path(spec["workdir"]) / "alignkit"
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    overrides = ALIGNKIT[spec["framework"]]
    if not set(overrides) <= known:
        raise SystemExit(f"{spec['framework']}: this alignkit has no option "
                         f"{', '.join(sorted(set(overrides) - known))}")
    cfg = SFTConfig(
        model=spec["model"], data="demo", lora=spec["lora"], lora_r=LORA["r"],
        lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        lora_targets=",".join(LORA["targets"]), device=spec["device"],
        precision=spec["alignkit_precision"], eval_fraction=0.0, max_length=spec["max_length"],
        lr=spec["lr"], warmup_steps=0, batch_size=spec["batch_size"], grad_accum=1,
        max_steps=spec["steps"], output=str(out), seed=spec["seed"], log_every=1, eval_every=0,
        save_every=0, overwrite=True, progress=False, **overrides)

    # Observe (not change) the run: note the peak memory once training is over, before final/.
    at_end: dict = {}
    real_save_final = ckpt.save_final

    def save_final(*args, **kwargs):
        sync(spec["device"])
        at_end.update(peak_rss_mib=peak_rss_mib(), cuda_peak_mib=cuda_peak_mib(spec["device"]))
        return real_save_final(*args, **kwargs)

    ckpt.save_final = save_final
    try:
        run(cfg)
    finally:
        ckpt.save_final = real_save_final

    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"]
    rows.sort(key=lambda r: r["step"])
    steps = [int(r["step"]) for r in rows]
    if steps != list(range(1, spec["steps"] + 1)):
        raise SystemExit(f"alignkit metrics.jsonl: expected train rows for steps 1..{spec['steps']}, "
                         f"got {steps}")
    tokens = [int(r["tokens"]) for r in rows]
    if all("time" in r for r in rows):
        ends = [float(r["time"]) for r in rows]
    else:  # no wall-clock stamp: fall back to alignkit's own step timer
        ends = [sum(float(x["step_time_s"]) for x in rows[:k + 1]) for k in range(len(rows))]
    result = summarise(ends, tokens, spec["warmup"])
    result.update(steps_done=len(rows), stopped_early=False)
    timed = rows[spec["warmup"]:]
    result.update(
        tokens_per_step=tokens, target_tokens_per_step=[int(r["target_tokens"]) for r in rows],
        # positions actually run (fewer than tokens when a shared prompt prefix runs once per row)
        computed_tokens_per_step=[int(r.get("computed_tokens", r["tokens"])) for r in rows],
        # alignkit's own numbers (its step timer starts at batch building, stops after zero_grad)
        reported_tokens_per_s=sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
        reported_step_time_s_median=statistics.median(r["step_time_s"] for r in timed),
        startup_s=float(rows[0]["time"]) - STARTED if "time" in rows[0] else None,
        # before final/ is written; the lifetime peak if that hook did not fire
        peak_rss_mib=at_end.get("peak_rss_mib") or peak_rss_mib(),
        peak_rss_lifetime_mib=peak_rss_mib(),
        cuda_peak_mib=at_end.get("cuda_peak_mib"), rss_after_import_mib=rss_import,
        loss_first=float(rows[0]["loss"]), loss_last=float(rows[-1]["loss"]),
        settings={"packing": cfg.packing, "share_prefix": getattr(cfg, "share_prefix", None),
                  "precision": cfg.precision, "optimizer": "torch AdamW",
                  "gradient_checkpointing": False, "max_length": cfg.max_length})
    return result


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    device = spec["device"]
    records = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()
               if line.strip()]
    # alignkit's batch order, step by step; TRL reads it sequentially, 8 at a time.
    ordered = [records[i] for batch in spec["order"] for i in batch]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["completion"]}]} for r in ordered])

    defaults = spec["framework"] == "trl"
    kwargs = {} if defaults else {"bf16": False, "gradient_checkpointing": False}
    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, max_steps=spec["steps"], max_length=spec["max_length"],
        learning_rate=spec["lr"], warmup_steps=0, seed=spec["seed"], report_to="none",
        save_strategy="no", eval_strategy="no", train_sampling_strategy="sequential",
        disable_tqdm=True, use_cpu=device == "cpu", **kwargs)

    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                 lora_dropout=LORA["dropout"], target_modules=LORA["targets"],
                                 bias="none", task_type="CAUSAL_LM")

    step_ends: list[float] = []
    tokens: list[int] = []
    targets: list[int] = []
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

    trainer = SFTTrainer(model=spec["model"], args=args, train_dataset=dataset,
                         peft_config=peft_config, callbacks=[Clock()])

    # Count the real tokens of every batch as TRL's collator builds it (on the host, so no device
    # sync is added to the step). Batches come in order; the loader may collate one ahead.
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        mask = batch.get("attention_mask")
        tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        targets.append(int((batch["labels"][:, 1:] != -100).sum()))  # positions with a loss
        return batch

    trainer.data_collator = counting_collator
    train_out = trainer.train()
    if not spec["warmup"] < len(step_ends) <= min(spec["steps"], len(tokens)):
        raise SystemExit(f"TRL ran {len(step_ends)} steps / collated {len(tokens)} batches, "
                         f"expected {spec['steps']} steps")
    del tokens[len(step_ends):], targets[len(step_ends):]
    result = summarise(step_ends, tokens, spec["warmup"])
    result.update(steps_done=len(step_ends), stopped_early=len(step_ends) < spec["steps"])
    result.update(
        tokens_per_step=tokens, target_tokens_per_step=targets,
        startup_s=step_ends[0] - STARTED,
        peak_rss_mib=at_end.get("peak_rss_mib") or peak_rss_mib(),
        peak_rss_lifetime_mib=peak_rss_mib(),
        cuda_peak_mib=at_end.get("cuda_peak_mib"), rss_after_import_mib=rss_import,
        loss_last=float(train_out.training_loss),
        settings={"bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
                  "optimizer": getattr(args.optim, "value", str(args.optim)),
                  "padding_free": bool(args.padding_free),
                  "packing": bool(args.packing), "max_length": args.max_length,
                  "logging_steps": args.logging_steps})
    return result


# ---------------------------------------------------------------------------------------------
# prepare: model folders and alignkit's batch order (in a subprocess, so the parent stays light)


def run_prepare(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from alignkit.data.readers import shipped_data_path
    from alignkit.data.sft import micro_batch_indices
    from alignkit.models.loading import resolve_model

    out = {}
    for name in spec["workloads"]:
        w = WORKLOADS[name]
        if name == "tiny":
            model = tiny_model_folder(w["sizes"])
        else:
            model = resolve_model("default")
        out[name] = {"model": model}
    data = shipped_data_path("demo")
    n = sum(1 for line in data.read_text().splitlines() if line.strip())
    out["data_path"] = str(data)
    out["n_records"] = n
    out["order"] = [micro_batch_indices(k, n, spec["batch_size"], spec["seed"])
                    for k in range(spec["steps"])]
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
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "s_per_step": statistics.median(r["s_per_step"] for r in rs),
            "tokens_per_step_mean": statistics.mean(statistics.mean(r["tokens_per_step"]) for r in rs),
            "computed_tokens_per_step_mean": statistics.mean(
                statistics.mean(r.get("computed_tokens_per_step") or r["tokens_per_step"])
                for r in rs),
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
        row["alignkit_over_trl_tokens_per_s"] = ref["tokens_per_s"] / row["tokens_per_s"]
        row["alignkit_over_trl_peak_rss"] = ref["peak_rss_mib"] / row["peak_rss_mib"]
        if ref["cuda_peak_mib"] and row["cuda_peak_mib"]:
            row["alignkit_over_trl_cuda_peak"] = ref["cuda_peak_mib"] / row["cuda_peak_mib"]
    return rows


def token_checks(results: list[dict]) -> dict:
    """Per workload: do all runs see the same real tokens at every step they have in common?"""
    out = {}
    for workload in dict.fromkeys(r["workload"] for r in results):
        seqs = {f"{r['framework']}-{r['repeat']}": r["tokens_per_step"] for r in results
                if r["workload"] == workload}
        common = min(len(v) for v in seqs.values())
        first = next(iter(seqs.values()))[:common]
        out[workload] = {"same_tokens_every_step": all(v[:common] == first for v in seqs.values()),
                         "common_steps": common,
                         "tokens_in_common_steps": {k: sum(v[:common]) for k, v in seqs.items()}}
    return out


def print_table(summary: list[dict], checks: dict, settings: dict) -> None:
    print()
    print(f"SFT throughput: batch {settings['batch_size']}, grad accum 1, max length "
          f"{settings['max_length']}, device {settings['device']}; tokens = real (non-padding) tokens "
          f"per optimiser step; timed: steps {settings['warmup'] + 1}..N")
    cuda = any(r["cuda_peak_mib"] is not None for r in summary)
    head = (f"{'workload':<9} {'framework':<16} {'steps':>5} {'tok/step':>8} {'run/step':>8} "
            f"{'tok/s':>9} "
            f"{'s/step':>7} {'peak RSS MiB':>12} " + (f"{'CUDA MiB':>9} " if cuda else "")
            + f"{'startup s':>9}  {'alignkit/TRL tok/s':>18} {'alignkit/TRL mem':>16}")
    print(head)
    print("-" * len(head))
    for r in summary:
        print(f"{r['workload']:<9} {r['framework']:<16} {r['steps']:>5} "
              f"{r['tokens_per_step_mean']:>8.0f} {r['computed_tokens_per_step_mean']:>8.0f} "
              f"{r['tokens_per_s']:>9.0f} {r['s_per_step']:>7.3f} {r['peak_rss_mib']:>12.0f} "
              + (f"{fmt(r['cuda_peak_mib'], '.0f'):>9} " if cuda else "")
              + f"{fmt(r['startup_s'], '.1f'):>9}  "
              f"{fmt(r.get('alignkit_over_trl_tokens_per_s'), '.2f'):>17}x "
              f"{fmt(r.get('alignkit_over_trl_peak_rss'), '.2f'):>15}x")
    for workload, c in checks.items():
        state = "identical" if c["same_tokens_every_step"] else "DIFFERENT (check the data path)"
        totals = set(c["tokens_in_common_steps"].values())
        print(f"{workload}: real tokens per step {state} across runs over their "
              f"{c['common_steps']} common steps ({'/'.join(map(str, sorted(totals)))} tokens)")
    print("tok/step: real tokens of the step's examples (what tok/s counts); run/step: positions "
          "the model actually ran (alignkit runs a prompt prefix shared by a packed row once)")
    print("ratios: tok/s > 1 means alignkit is faster; mem < 1 means alignkit peaks lower")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="Tiny workload, 8 steps (2 warm-up): checks that the harness works.")
    p.add_argument("--workloads", default=None,
                   help=f"Comma-separated, from {','.join(WORKLOADS)} (default: all; --quick: tiny).")
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
                        "they train on the first batches of the others' order (default: 6; "
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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s).")
    p.add_argument("--alignkit-precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="alignkit --precision (default: %(default)s; TRL's are set per framework).")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every run (0: torch's default).")
    p.add_argument("--timeout", type=int, default=3600, help="Seconds allowed per run.")
    p.add_argument("--log-dir", default=None,
                   help="Keep every run's stdout/stderr here (default: a temporary folder, shown "
                        "only when a run fails).")
    p.add_argument("--json", default=None,
                   help="Where to write the results (default: bench/results/sft_throughput.json; "
                        "--quick: bench/results/sft_throughput_quick.json).")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workloads = (args.workloads.split(",") if args.workloads
                 else ["tiny"] if args.quick else list(WORKLOADS))
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
    trl_default_steps = args.trl_default_steps or (4 if args.quick else 6)
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first timed step is measured from the "
                         "end of the step before it)")
    for w, n in steps.items():
        if min(n, trl_default_steps) < args.warmup + 1:
            raise SystemExit(f"{w}: --steps ({n}) and --trl-default-steps ({trl_default_steps}) "
                             f"must be more than --warmup ({args.warmup})")
    json_path = Path(args.json) if args.json else RESULTS / (
        "sft_throughput_quick.json" if args.quick else "sft_throughput.json")

    settings = {"batch_size": args.batch_size, "grad_accum": 1, "max_length": args.max_length,
                "warmup": args.warmup, "steps": steps, "trl_default_steps": trl_default_steps,
                "budget_s": args.budget_s, "frameworks": frameworks, "device": args.device,
                "seed": args.seed, "repeats": args.repeats, "threads": args.threads or None,
                "alignkit_precision": args.alignkit_precision, "lora": LORA,
                "workloads": {w: {k: v for k, v in WORKLOADS[w].items()
                                  if k not in ("steps", "frameworks")}
                              for w in workloads}}
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: list[dict] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-") as tmp:
        workdir = Path(tmp)
        print(f"preparing models and data order ({', '.join(workloads)}) ...", flush=True)
        try:
            prep = spawn(__file__, "--prepare",
                         {"workloads": workloads, "batch_size": args.batch_size,
                          "seed": args.seed, "steps": max(steps.values())},
                         workdir, "prepare", args.timeout, log_dir)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        # one epoch of full batches at most: alignkit's last batch of an epoch is partial, and
        # TRL, reading the same order 8 at a time, would then see different batches
        if prep["n_records"] // args.batch_size < max(steps.values()):
            raise SystemExit(f"--steps: the demo data has {prep['n_records']} records, so at most "
                             f"{prep['n_records'] // args.batch_size} full batches of "
                             f"{args.batch_size}")
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
                    spec = {"framework": framework, "model": prep[workload]["model"],
                            "lora": w["lora"], "lr": w["lr"], "steps": n_steps,
                            "warmup": args.warmup, "batch_size": args.batch_size,
                            "max_length": args.max_length, "seed": args.seed,
                            "device": args.device, "threads": args.threads,
                            "alignkit_precision": args.alignkit_precision,
                            "data_path": prep["data_path"],
                            "order": prep["order"][:n_steps], "budget_s": args.budget_s,
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
                    print(f"  {r['tokens_per_s']:.0f} tok/s, {r['s_per_step']:.3f} s/step, "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB, run {wall:.0f} s"
                          + (f", others used {during:.0%} of the CPUs meanwhile"
                             if during is not None else ""), flush=True)
                    results.append(r)

    if not results:
        raise SystemExit("every run failed")
    summary = build_summary(results)
    checks = token_checks(results)
    print_table(summary, checks, settings)
    busy_runs = [f"{r['workload']}-{r['framework']}-{r['repeat']}" for r in results
                 if max(r["others_cpu_share_before"] or 0, r["others_cpu_share_during"] or 0)
                 > BUSY_SHARE]
    if busy_runs:
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during "
              f"{', '.join(busy_runs)}: those numbers are not trustworthy; rerun on a quiet "
              "machine", file=sys.stderr)
    payload = {
        "benchmark": "sft_throughput",
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.time() - started,
        "machine": machine_facts(),
        "versions": versions(), "settings": settings, "token_checks": checks,
        "summary": summary, "runs": results,
        "definitions": {
            "tokens": "real (non-padding) tokens of the examples in an optimiser step, prompt and "
                      "template included; alignkit: metrics.jsonl 'tokens'; TRL: attention_mask "
                      "sum of each batch entering training_step",
            "tokens_per_s": "timed tokens / wall time between the end of step `warmup` and the "
                            "end of the last step",
            "peak_rss_mib": "getrusage ru_maxrss at the end of training (alignkit: before final/ "
                            "is written; TRL: on_train_end, no saving)",
            "startup_s": "seconds from the process start (before imports) to the end of step 1",
            "others_cpu_share_during": "share of all CPUs used by processes other than the run "
                                       "while it ran (/proc/stat minus the run's own CPU time); "
                                       f"above {BUSY_SHARE} the run is flagged as untrustworthy",
        },
    }
    if failed:
        payload["failed_runs"] = failed
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def child_for(spec: dict):
    return child_alignkit if spec["framework"] in ALIGNKIT else child_trl


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2], child_for, STARTED)
    elif len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        run_prepare(sys.argv[2])
    else:
        raise SystemExit(main())
