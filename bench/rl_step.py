"""One RL step, alignkit against TRL's ``GRPOTrainer`` and ``RLOOTrainer``: seconds per step
(sample -> score -> reference log-probs -> one optimiser step) and peak memory.

    python bench/rl_step.py --quick        # harness check: 4 steps per framework (~2 min idle)
    python bench/rl_step.py                # 12 steps, alignkit grpo+rloo vs TRL fp32 (~6 min idle)
    python bench/rl_step.py --frameworks alignkit,trl-fp32,trl   # adds TRL's defaults (bf16)

Workload (identical on every side): the random tiny Llama of the SFT benchmark (hidden 256,
4 layers, byte-level vocabulary), full fine-tuning in fp32, 8 prompts from the shipped demo
prompts per step (alignkit's batch order; TRL reads the same prompts sequentially), 4 samples per
prompt (32 responses), at most 48 new tokens, temperature 1, no top-p/top-k, KL coefficient
0.04 to a frozen reference copy, one optimiser step per batch, gradient clipping 1.0, AdamW.
The reward is a Python function of the text (the share of spaces), so the reward model costs
nothing and the step is the framework's own machinery. Each framework runs in its own fresh
process, one after the other (``harness.spawn``).

Timing: wall time between the ends of consecutive optimiser steps, steps ``warmup+1..N``.
Mean response length per step is recorded on both sides (the work per step depends on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    cpu_name,
    fmt,
    idle_check,
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
# framework: (side, estimator, TRL's defaults?)
FRAMEWORKS = {
    "alignkit": ("alignkit", "grpo", False),
    "alignkit-rloo": ("alignkit", "rloo", False),
    "trl-fp32": ("trl", "grpo", False),
    "trl-rloo-fp32": ("trl", "rloo", False),
    "trl": ("trl", "grpo", True),
}
DEFAULT_FRAMEWORKS = ["alignkit", "trl-fp32", "alignkit-rloo", "trl-rloo-fp32"]
PEER = {"alignkit": "trl-fp32", "alignkit-rloo": "trl-rloo-fp32"}


def space_share(text: str) -> float:
    return text.count(" ") / max(len(text), 1)


# ---------------------------------------------------------------------------------------------
# children


def child_alignkit(spec: dict) -> dict:
    import torch

    from alignkit.cli import run
    from alignkit.config import PPOConfig
    from alignkit.utils.metrics import read_metrics

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    peak: dict = {}

    def reward(prompts, responses):
        peak.setdefault("rss", peak_rss_mib())
        return {"combined": torch.tensor([space_share(r) for r in responses])}

    rollouts = spec["prompts_per_step"] * spec["samples"]
    cfg = PPOConfig(model=spec["model"], reward_model=None, data=spec["data_path"],
                    eval_data=None, advantage=spec["estimator"],
                    samples_per_prompt=spec["samples"], batch_size=spec["prompts_per_step"],
                    minibatch_size=rollouts, ppo_epochs=1, max_steps=spec["steps"],
                    max_new_tokens=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
                    kl_coef=spec["beta"], lr=spec["lr"], missing_eos_penalty=0.0,
                    output=str(Path(spec["workdir"]) / "run"), save_every=0, progress=False,
                    seed=spec["seed"], device=spec["device"], precision="fp32", log_every=1)
    out = run(cfg, reward_fn=reward)
    rss_train = peak_rss_mib()
    rows = [r for r in read_metrics(out["metrics"]) if r["split"] == "train"]
    lengths = [r["response_length"] for r in rows]
    result = summarise([r["time"] for r in rows], [round(x * rollouts) for x in lengths],
                       spec["warmup"])
    result.update(peak_rss_mib=rss_train, rss_after_import_mib=rss_import,
                  mean_response_length=lengths, startup_s=rows[0]["time"] - STARTED,
                  gen_tokens_per_s=statistics.median(r["gen_tokens_per_s"] for r in rows[1:]),
                  train_tokens_per_s=statistics.median(r["train_tokens_per_s"] for r in rows[1:]),
                  reward_first=rows[0]["score"], reward_last=rows[-1]["score"])
    return result


def child_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mib()
    if spec["estimator"] == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

    prompts = [json.loads(line)["prompt"] for line in
               Path(spec["data_path"]).read_text().splitlines() if line.strip()]
    ordered = [prompts[i] for batch in spec["order"] for i in batch]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in ordered])

    def reward(completions, **kwargs):
        return [space_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    step_ends: list[float] = []
    lengths: list[float] = []
    records: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
                records.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    kwargs = {} if spec["trl_defaults"] else {"bf16": False, "gradient_checkpointing": False}
    rollouts = spec["prompts_per_step"] * spec["samples"]
    args = Config(output_dir=str(Path(spec["workdir"]) / "trl"),
                  per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
                  num_generations=spec["samples"], max_completion_length=spec["max_new_tokens"],
                  temperature=1.0, top_p=1.0, top_k=0, beta=spec["beta"],
                  learning_rate=spec["lr"], max_steps=spec["steps"], num_iterations=1,
                  shuffle_dataset=False, seed=spec["seed"], logging_steps=1, report_to="none",
                  save_strategy="no", disable_tqdm=True, max_grad_norm=1.0,
                  use_cpu=spec["device"] == "cpu", **kwargs)
    trainer = Trainer(model=spec["model"], reward_funcs=reward, args=args,
                      train_dataset=dataset, callbacks=[Clock()])
    trainer.train()
    rss_train = peak_rss_mib()
    result = summarise(step_ends, [round(x * rollouts) for x in lengths], spec["warmup"])
    result.update(peak_rss_mib=rss_train, rss_after_import_mib=rss_import,
                  mean_response_length=lengths, startup_s=step_ends[0] - STARTED,
                  reward_first=records[0].get("reward"), reward_last=records[-1].get("reward"),
                  trl_args={"beta": args.beta, "loss_type": getattr(args, "loss_type", None),
                            "gradient_checkpointing": bool(args.gradient_checkpointing),
                            "bf16": bool(args.bf16), "num_iterations": args.num_iterations,
                            "generation_batch_size": args.generation_batch_size})
    return result


def run_prepare(spec_path: str) -> None:
    """The tiny model, the prompt file, alignkit's batch order, and a check that TRL's chat
    rendering of a prompt gives alignkit's token ids."""
    spec = json.loads(Path(spec_path).read_text())
    from transformers import AutoTokenizer

    from alignkit.data.readers import read_records
    from alignkit.data.sft import stream_batch_indices
    from alignkit.data.tokenize import render_prompt

    model = tiny_model_folder(TINY)
    prompts = [r.fields["prompt"] for r in read_records("demo-prompts")]
    data_path = Path(spec["workdir"]) / "prompts.jsonl"
    data_path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    tok = AutoTokenizer.from_pretrained(model)
    ours = tok(render_prompt(tok, prompts[0], "auto"), add_special_tokens=False)["input_ids"]
    theirs = tok.apply_chat_template([{"role": "user", "content": prompts[0]}],
                                     add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else list(theirs)
    order = [stream_batch_indices(k, len(prompts), spec["prompts_per_step"], spec["seed"])
             for k in range(spec["steps"])]
    Path(spec["result"]).write_text(json.dumps({
        "model": model, "data_path": str(data_path), "n_prompts": len(prompts), "order": order,
        "prompt_ids_identical": list(ours) == list(theirs)}))


# ---------------------------------------------------------------------------------------------
# parent


def print_table(results: list[dict]) -> list[dict]:
    by = {r["framework"]: r for r in results}
    print(f"\n{'framework':<15}{'s/step':>8}{'median':>8}{'resp len':>9}{'peak MiB':>9}"
          f"{'startup':>8}{'speed x':>8}{'mem x':>7}")
    summary = []
    for name, r in by.items():
        peer = by.get(PEER.get(name, ""))
        speed = peer["s_per_step"] / r["s_per_step"] if peer else None
        mem = r["peak_rss_mib"] / peer["peak_rss_mib"] if peer else None
        length = statistics.mean(r["mean_response_length"][1:] or r["mean_response_length"])
        print(f"{name:<15}{r['s_per_step']:>8.3f}{r['s_per_step_median']:>8.3f}{length:>9.1f}"
              f"{r['peak_rss_mib']:>9.0f}{r['startup_s']:>8.1f}{fmt(speed, '.2f'):>7}x"
              f"{fmt(mem, '.2f'):>6}x")
        summary.append({"framework": name, "s_per_step": r["s_per_step"],
                        "s_per_step_median": r["s_per_step_median"],
                        "mean_response_length": length, "peak_rss_mib": r["peak_rss_mib"],
                        "peer": PEER.get(name), "speedup_vs_peer": speed,
                        "memory_vs_peer": mem})
    print("speed x = peer s/step / alignkit s/step (above 1: alignkit faster); mem x = alignkit "
          "peak RSS / peer's (below 1: alignkit lower)")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 steps per framework")
    p.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                   help=f"comma-separated, from {', '.join(FRAMEWORKS)}")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (default 12)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    frameworks = args.frameworks.split(",")
    for f in frameworks:
        if f not in FRAMEWORKS:
            raise SystemExit(f"--frameworks: unknown {f!r} (choose from {', '.join(FRAMEWORKS)})")
    steps = args.steps or (4 if args.quick else 12)
    if steps < args.warmup + 1 or args.warmup < 1:
        raise SystemExit("--steps must be more than --warmup, and --warmup at least 1")
    json_path = Path(args.json) if args.json else RESULTS / (
        "rl_step_quick.json" if args.quick else "rl_step.json")
    settings = {k: getattr(args, k) for k in ("prompts_per_step", "samples", "max_new_tokens",
                                              "beta", "lr", "seed", "device", "warmup")}
    settings.update(steps=steps, frameworks=frameworks, model="tiny", sizes=TINY,
                    training="full fine-tuning, fp32, frozen reference copy, one optimiser step "
                             "per batch")
    started = time.time()
    results, failed = [], []
    with tempfile.TemporaryDirectory(prefix="alignkit-rl-bench-") as tmp:
        workdir = Path(tmp)
        try:
            prep = spawn(__file__, "--prepare", {"prompts_per_step": args.prompts_per_step,
                                                 "steps": steps, "seed": args.seed,
                                                 "workdir": str(workdir)},
                         workdir, "prepare", args.timeout)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        if not prep["prompt_ids_identical"]:
            print("WARNING: TRL's chat rendering of a prompt differs from alignkit's",
                  file=sys.stderr)
        settings["prompt_ids_identical"] = prep["prompt_ids_identical"]
        for framework in frameworks:
            side, estimator, defaults = FRAMEWORKS[framework]
            before = idle_check()
            print(f"run {framework}: {steps} steps ...", flush=True)
            spec = {"framework": framework, "estimator": estimator, "trl_defaults": defaults,
                    "model": prep["model"], "data_path": prep["data_path"],
                    "order": prep["order"], "steps": steps, "warmup": args.warmup,
                    "prompts_per_step": args.prompts_per_step, "samples": args.samples,
                    "max_new_tokens": args.max_new_tokens, "beta": args.beta, "lr": args.lr,
                    "seed": args.seed, "device": args.device, "threads": args.threads,
                    "workdir": str(workdir / framework)}
            t0, busy0, child0 = time.time(), cpu_busy_s(), children_cpu_s()
            try:
                r = spawn(__file__, "--child", spec, workdir, framework, args.timeout)
            except RunFailed as e:
                print(e, file=sys.stderr, flush=True)
                failed.append(framework)
                continue
            wall = time.time() - t0
            during = others_share(busy0, cpu_busy_s(), children_cpu_s() - child0, wall)
            r.update(framework=framework, others_cpu_share_before=before,
                     others_cpu_share_during=during, run_wall_s=wall)
            print(f"  {r['s_per_step']:.3f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB"
                  + (f", others used {during:.0%} of the CPUs meanwhile"
                     if during is not None else ""), flush=True)
            results.append(r)
    if not results:
        raise SystemExit("every run failed")
    summary = print_table(results)
    busy = [r["framework"] for r in results
            if max(r["others_cpu_share_before"] or 0, r["others_cpu_share_during"] or 0)
            > BUSY_SHARE]
    if busy:
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during "
              f"{', '.join(busy)}: rerun on a quiet machine", file=sys.stderr)
    write_json(json_path, {
        "benchmark": "rl_step", "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.time() - started,
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(), "settings": settings, "summary": summary, "runs": results,
        "busy_runs": busy, "failed_runs": failed})
    print(f"wrote {json_path}")
    return 1 if failed else 0


def child_for(spec: dict):
    return child_alignkit if FRAMEWORKS[spec["framework"]][0] == "alignkit" else child_trl


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2], child_for, STARTED)
    elif len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        run_prepare(sys.argv[2])
    else:
        raise SystemExit(main())
