"""One RL step, alignkit against TRL's ``GRPOTrainer`` and ``RLOOTrainer``: seconds per step
(sample -> score -> reference log-probs -> one optimiser step) and peak memory.

    python bench/rl_step.py --quick        # harness check: 4 steps per framework (~2 min idle)
    python bench/rl_step.py                # 12 steps, alignkit grpo+rloo vs TRL fp32 (~6 min idle)
    python bench/rl_step.py --frameworks alignkit,trl-fp32,trl   # adds TRL's defaults (bf16)
    python bench/rl_step.py --workload smollm2-lora --quick   # harness check, 3 steps each
    python bench/rl_step.py --workload smollm2-lora           # + alignkit with vLLM rollouts

Workloads (identical on every side):
- ``tiny`` (default): the random tiny Llama of the SFT benchmark (hidden 256, 4 layers,
  byte-level vocabulary), full fine-tuning in fp32 with a frozen reference copy, at most 48 new
  tokens, learning rate 1e-5.
- ``smollm2-lora``: the packaged SmolLM2-135M-Instruct (alignkit ``model="default"``; TRL loads
  the folder ``resolve_model("default")`` resolves to), LoRA r=16, alpha 32, no dropout, on
  q/k/v/o (alignkit ``lora=True``; TRL ``peft_config``); the reference is the adapter-free policy
  on both sides; at most 32 new tokens, learning rate 5e-5, constant on both sides.
Both: 8 prompts from the shipped demo prompts per step (alignkit's batch order; TRL reads the
same prompts sequentially), 4 samples per prompt (32 responses), temperature 1, no top-p/top-k,
KL coefficient 0.04, one optimiser step per batch, gradient clipping 1.0, AdamW, fp32 training.
The reward is a Python function of the text (the share of spaces), so the reward model costs
nothing and the step is the framework's own machinery. Each framework runs in its own fresh
process, one after the other (``harness.spawn``).

Rollout engines: ``alignkit*`` frameworks sample with alignkit's own sampler; ``alignkit*-vllm*``
with the colocated vLLM engine (``rollout_engine="vllm"``: ``-vllm`` fp32 with merged-weight
pushes, ``-vllm-bf16`` bf16 rollouts with fp32 training, ``-vllm-adapter`` fp32 serving the LoRA
adapter). vLLM lives in another environment than TRL: those children run under
``--vllm-python``; every run records its interpreter and library versions. TRL runs without
vLLM (its vLLM modes are not measured here). The engine's start-up (vLLM import, engine build)
is timed apart (``engine_init_s``; it is also inside ``startup_s``, the time from process start
to the end of step 1) and the log-prob gap between the engine's and the trainer's log-probs of
the sampled tokens is read from alignkit's metrics rows.

Timing: wall time between the ends of consecutive optimiser steps, steps ``warmup+1..N``.
Mean response length per step is recorded on both sides (the work per step depends on it).
"""

from __future__ import annotations

import argparse
import json
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
REPO = HERE.parent
TINY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 512}
LORA = {"r": 16, "alpha": 32, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def framework(side: str, estimator: str, trl_defaults: bool = False, engine: str = "hf",
              dtype: str = "auto", sync: str = "auto") -> dict:
    """side, advantage estimator, TRL's own defaults (bf16, checkpointing)?, alignkit's rollout
    engine and, with vLLM, its dtype and weight sync."""
    return {"side": side, "estimator": estimator, "trl_defaults": trl_defaults,
            "engine": engine, "rollout_dtype": dtype, "rollout_sync": sync}


FRAMEWORKS = {
    "alignkit": framework("alignkit", "grpo"),
    "alignkit-rloo": framework("alignkit", "rloo"),
    "alignkit-vllm": framework("alignkit", "grpo", engine="vllm", dtype="fp32", sync="merged"),
    "alignkit-rloo-vllm": framework("alignkit", "rloo", engine="vllm", dtype="fp32",
                                    sync="merged"),
    "alignkit-vllm-bf16": framework("alignkit", "grpo", engine="vllm", dtype="bf16",
                                    sync="merged"),
    "alignkit-vllm-adapter": framework("alignkit", "grpo", engine="vllm", dtype="fp32",
                                       sync="adapter"),
    "trl-fp32": framework("trl", "grpo"),
    "trl-rloo-fp32": framework("trl", "rloo"),
    "trl": framework("trl", "grpo", trl_defaults=True),
}
DEFAULT_FRAMEWORKS = ["alignkit", "trl-fp32", "alignkit-rloo", "trl-rloo-fp32"]
WORKLOADS = {
    "tiny": {"model": "tiny", "lora": False, "max_new_tokens": 48, "lr": 1e-5, "steps": 12,
             "quick_steps": 4, "constant_lr": False, "frameworks": DEFAULT_FRAMEWORKS,
             "json": "rl_step"},
    "smollm2-lora": {"model": "default", "lora": True, "max_new_tokens": 32, "lr": 5e-5,
                     "steps": 6, "quick_steps": 3, "constant_lr": True,
                     "frameworks": ["alignkit", "alignkit-vllm", "alignkit-vllm-bf16",
                                    "alignkit-vllm-adapter", "trl-fp32", "alignkit-rloo",
                                    "alignkit-rloo-vllm", "trl-rloo-fp32"],
                     "json": "rl_step_smollm2_lora"},
}
TARGET_SPEEDUP = 2.5  # the issue's target: an RL step at least this much faster than TRL's


def peer(name: str) -> str | None:
    """The TRL run an alignkit run is compared with (same estimator, fp32, no vLLM)."""
    f = FRAMEWORKS[name]
    if f["side"] != "alignkit":
        return None
    return "trl-fp32" if f["estimator"] == "grpo" else "trl-rloo-fp32"


def hf_peer(name: str) -> str | None:
    """The alignkit run with its own sampler a vLLM run is compared with."""
    f = FRAMEWORKS[name]
    if f["side"] != "alignkit" or f["engine"] == "hf":
        return None
    return "alignkit" if f["estimator"] == "grpo" else "alignkit-rloo"


def default_vllm_python() -> str:
    """The environment ``scripts/test_vllm.sh`` builds."""
    return str(REPO / ".venv-vllm" / "bin" / "python")


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
    engines = watch_engines() if spec["engine"] == "vllm" else []

    def reward(prompts, responses):
        peak.setdefault("rss", peak_rss_mib())
        return {"combined": torch.tensor([space_share(r) for r in responses])}

    rollouts = spec["prompts_per_step"] * spec["samples"]
    lora = {"lora": True, "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": 0.0,
            "lora_targets": ",".join(LORA["targets"])} if spec["lora"] else {"lora": False}
    cfg = PPOConfig(model=spec["alignkit_model"], reward_model=None, data=spec["data_path"],
                    eval_data=None, advantage=spec["estimator"],
                    samples_per_prompt=spec["samples"], batch_size=spec["prompts_per_step"],
                    minibatch_size=rollouts, ppo_epochs=1, max_steps=spec["steps"],
                    max_new_tokens=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
                    kl_coef=spec["beta"], lr=spec["lr"], missing_eos_penalty=0.0,
                    output=str(Path(spec["workdir"]) / "run"), save_every=0, progress=False,
                    seed=spec["seed"], device=spec["device"], precision="fp32", log_every=1,
                    rollout_engine=spec["engine"], rollout_dtype=spec["rollout_dtype"],
                    rollout_sync=spec["rollout_sync"], **lora)
    out = run(cfg, reward_fn=reward)
    rss_train = peak_rss_mib()
    rows = [r for r in read_metrics(out["metrics"]) if r["split"] == "train"]
    lengths = [r["response_length"] for r in rows]
    result = summarise([r["time"] for r in rows], [round(x * rollouts) for x in lengths],
                       spec["warmup"])
    result.update(peak_rss_mib=rss_train, rss_after_import_mib=rss_import,
                  mean_response_length=lengths, startup_s=rows[0]["time"] - STARTED,
                  first_step_s=rows[0]["step_time_s"],
                  step_time_s=[r["step_time_s"] for r in rows],
                  gen_tokens_per_s=statistics.median(r["gen_tokens_per_s"] for r in rows[1:]),
                  train_tokens_per_s=statistics.median(r["train_tokens_per_s"] for r in rows[1:]),
                  reward_first=rows[0]["score"], reward_last=rows[-1]["score"],
                  ended_fraction=[r.get("ended_fraction") for r in rows],
                  rollout_config={"engine": cfg.rollout_engine, "dtype": cfg.rollout_dtype,
                                  "sync": cfg.rollout_sync})
    if spec["engine"] == "vllm":
        result.update(engine_result(rows, engines, spec["warmup"]))
    return result


def watch_engines() -> list:
    """Every vLLM engine the run builds (appended once built), with the seconds its
    construction took: the vLLM import and the engine build (``init_s``)."""
    from alignkit.generation import vllm_engine

    built: list = []
    real = vllm_engine.VLLMEngine.__post_init__

    def post_init(self):
        t0 = time.time()
        real(self)
        self.stats["init_s"] = time.time() - t0
        self.stats["began_after_s"] = t0 - STARTED  # since the child process started
        built.append(self)

    vllm_engine.VLLMEngine.__post_init__ = post_init  # the dataclass __init__ looks it up here
    return built


def engine_result(rows: list[dict], engines: list, warmup: int) -> dict:
    """A vLLM run's engine figures: start-up, weight pushes per timed step, and the log-prob gap
    between the engine and the trainer on the sampled tokens (per step and over the run)."""
    push = [r.get("rollout_push_s", 0.0) for r in rows]
    push_per_step = [push[0]] + [push[k] - push[k - 1] for k in range(1, len(push))]
    timed = push_per_step[warmup:]
    gaps = [r["engine_logprob_gap"] for r in rows if "engine_logprob_gap" in r]
    gap_max = [r["engine_logprob_gap_max"] for r in rows if "engine_logprob_gap_max" in r]
    seq_gaps = [r["engine_seq_logprob_gap"] for r in rows if "engine_seq_logprob_gap" in r]
    stats = engines[0].stats if engines else {}
    return {"engines_built": len(engines), "engine_init_s": stats.get("init_s"),
            "engine_start_s": stats.get("start_s"),
            "engine_began_after_s": stats.get("began_after_s"),
            "engine_dtype": engines[0].dtype if engines else None,
            "engine_sync": engines[0].sync if engines else None,
            "rollout_pushes": rows[-1].get("rollout_pushes"),
            "adapter_pushes": stats.get("adapter_pushes"),
            "push_s_per_step": push_per_step,
            "push_s_per_timed_step": statistics.mean(timed) if timed else None,
            "engine_logprob_gap": gaps, "engine_logprob_gap_max": gap_max,
            "engine_seq_logprob_gap": seq_gaps,
            "gap_mean": statistics.mean(gaps) if gaps else None,
            "gap_max": max(gap_max) if gap_max else None,
            "seq_gap_mean": statistics.mean(seq_gaps) if seq_gaps else None}


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
    began: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            began.append(time.time())

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
                records.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    kwargs = {} if spec["trl_defaults"] else {"bf16": False, "gradient_checkpointing": False}
    if spec["constant_lr"]:
        kwargs["lr_scheduler_type"] = "constant"  # alignkit's PPO schedule
    rollouts = spec["prompts_per_step"] * spec["samples"]
    args = Config(output_dir=str(Path(spec["workdir"]) / "trl"),
                  per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
                  num_generations=spec["samples"], max_completion_length=spec["max_new_tokens"],
                  temperature=1.0, top_p=1.0, top_k=0, beta=spec["beta"],
                  learning_rate=spec["lr"], max_steps=spec["steps"], num_iterations=1,
                  shuffle_dataset=False, seed=spec["seed"], logging_steps=1, report_to="none",
                  save_strategy="no", disable_tqdm=True, max_grad_norm=1.0,
                  use_cpu=spec["device"] == "cpu", **kwargs)
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                 target_modules=LORA["targets"], bias="none",
                                 task_type="CAUSAL_LM")
    trainer = Trainer(model=spec["model"], reward_funcs=reward, args=args,
                      train_dataset=dataset, peft_config=peft_config, callbacks=[Clock()])
    weights_dtype = str(next(trainer.model.parameters()).dtype)
    trainer.train()
    rss_train = peak_rss_mib()
    result = summarise(step_ends, [round(x * rollouts) for x in lengths], spec["warmup"])
    result.update(peak_rss_mib=rss_train, rss_after_import_mib=rss_import,
                  mean_response_length=lengths, startup_s=step_ends[0] - STARTED,
                  first_step_s=step_ends[0] - began[0] if began else None,
                  reward_first=records[0].get("reward"), reward_last=records[-1].get("reward"),
                  trl_args={"beta": args.beta, "loss_type": getattr(args, "loss_type", None),
                            "gradient_checkpointing": bool(args.gradient_checkpointing),
                            "bf16": bool(args.bf16), "num_iterations": args.num_iterations,
                            "generation_batch_size": args.generation_batch_size,
                            "lr_scheduler_type": str(args.lr_scheduler_type),
                            "peft": peft_config is not None, "weights_dtype": weights_dtype})
    return result


def run_prepare(spec_path: str) -> None:
    """The tiny model, the prompt file, alignkit's batch order, and a check that TRL's chat
    rendering of a prompt gives alignkit's token ids."""
    spec = json.loads(Path(spec_path).read_text())
    from transformers import AutoTokenizer

    from alignkit.data.readers import read_records
    from alignkit.data.sft import stream_batch_indices
    from alignkit.data.tokenize import render_prompt
    from alignkit.models.loading import resolve_model

    model = (tiny_model_folder(TINY) if WORKLOADS[spec["workload"]]["model"] == "tiny"
             else resolve_model(WORKLOADS[spec["workload"]]["model"]))
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
    print(f"\n{'framework':<22}{'s/step':>8}{'median':>8}{'resp len':>9}{'peak MiB':>9}"
          f"{'startup':>8}{'engine':>7}{'push/st':>8}{'gap':>9}{'gap max':>8}{'seq gap':>8}"
          f"{'vs TRL':>8}{'mem x':>7}{'vs hf':>7}")
    summary = []
    for name, r in by.items():
        trl = by.get(peer(name) or "")
        hf = by.get(hf_peer(name) or "")
        speed = trl["s_per_step"] / r["s_per_step"] if trl else None
        mem = r["peak_rss_mib"] / trl["peak_rss_mib"] if trl else None
        vs_hf = hf["s_per_step"] / r["s_per_step"] if hf else None
        length = statistics.mean(r["mean_response_length"][1:] or r["mean_response_length"])
        print(f"{name:<22}{r['s_per_step']:>8.3f}{r['s_per_step_median']:>8.3f}{length:>9.1f}"
              f"{r['peak_rss_mib']:>9.0f}{r['startup_s']:>8.1f}"
              f"{fmt(r.get('engine_init_s'), '.1f'):>7}"
              f"{fmt(r.get('push_s_per_timed_step'), '.3f'):>8}"
              f"{fmt(r.get('gap_mean'), '.2e'):>9}{fmt(r.get('gap_max'), '.3f'):>8}"
              f"{fmt(r.get('seq_gap_mean'), '.3f'):>8}"
              f"{fmt(speed, '.2f'):>7}x{fmt(mem, '.2f'):>6}x{fmt(vs_hf, '.2f'):>6}x")
        summary.append({"framework": name, "s_per_step": r["s_per_step"],
                        "s_per_step_median": r["s_per_step_median"],
                        "mean_response_length": length, "peak_rss_mib": r["peak_rss_mib"],
                        "startup_s": r["startup_s"], "first_step_s": r.get("first_step_s"),
                        "engine_init_s": r.get("engine_init_s"),
                        "push_s_per_timed_step": r.get("push_s_per_timed_step"),
                        "gap_mean": r.get("gap_mean"), "gap_max": r.get("gap_max"),
                        "seq_gap_mean": r.get("seq_gap_mean"),
                        "gen_tokens_per_s": r.get("gen_tokens_per_s"),
                        "peer": peer(name), "speedup_vs_peer": speed,
                        "memory_vs_peer": mem,
                        "target_speedup_met": None if speed is None else speed >= TARGET_SPEEDUP,
                        "hf_peer": hf_peer(name), "speedup_vs_hf": vs_hf,
                        "python": r.get("python")})
    print("speed x = peer s/step / alignkit s/step (above 1: alignkit faster); mem x = alignkit "
          "peak RSS / peer's (below 1: alignkit lower); vs hf = the same estimator with "
          "alignkit's own sampler / with vLLM; engine = vLLM import + build s (in startup); "
          "push/st = weight-push s per timed step; gap = mean |trainer - engine| log-prob per "
          "token, gap max = largest, seq gap = mean |difference of a response's summed "
          f"log-probs|; target: {TARGET_SPEEDUP}x TRL")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="tiny", choices=list(WORKLOADS),
                   help="tiny: random tiny Llama, full FT; smollm2-lora: SmolLM2-135M-Instruct "
                        "with LoRA r=16 (default frameworks add alignkit with vLLM rollouts)")
    p.add_argument("--quick", action="store_true",
                   help="harness check: 4 steps per framework (3 on smollm2-lora)")
    p.add_argument("--frameworks", default=None,
                   help=f"comma-separated, from {', '.join(FRAMEWORKS)} (default: the "
                        f"workload's)")
    p.add_argument("--steps", type=int, default=None,
                   help="RL steps per run (default 12 on tiny, 6 on smollm2-lora)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 48 on tiny, 32 on smollm2-lora")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=None,
                   help="default 1e-5 on tiny, 5e-5 on smollm2-lora")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--vllm-python", default=default_vllm_python(),
                   help="interpreter with vLLM and alignkit for the *-vllm* frameworks "
                        "(default: .venv-vllm/bin/python in the repository, which "
                        "scripts/test_vllm.sh builds)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    workload = WORKLOADS[args.workload]
    frameworks = args.frameworks.split(",") if args.frameworks else list(workload["frameworks"])
    for f in frameworks:
        if f not in FRAMEWORKS:
            raise SystemExit(f"--frameworks: unknown {f!r} (choose from {', '.join(FRAMEWORKS)})")
    uses_vllm = [f for f in frameworks if FRAMEWORKS[f]["engine"] == "vllm"]
    if uses_vllm and not Path(args.vllm_python).exists():
        raise SystemExit(f"--vllm-python {args.vllm_python}: no such interpreter (needed by "
                         f"{', '.join(uses_vllm)})")
    steps = args.steps or (workload["quick_steps"] if args.quick else workload["steps"])
    if steps < args.warmup + 1 or args.warmup < 1:
        raise SystemExit("--steps must be more than --warmup, and --warmup at least 1")
    max_new_tokens = args.max_new_tokens or workload["max_new_tokens"]
    lr = args.lr if args.lr is not None else workload["lr"]
    json_path = Path(args.json) if args.json else RESULTS / (
        workload["json"] + ("_quick.json" if args.quick else ".json"))
    settings = {k: getattr(args, k) for k in ("prompts_per_step", "samples", "beta", "seed",
                                              "device", "warmup", "workload")}
    settings.update(steps=steps, frameworks=frameworks, max_new_tokens=max_new_tokens, lr=lr,
                    lr_schedule="constant" if workload["constant_lr"] else
                    "alignkit constant, TRL its default (linear decay)",
                    interpreters={"main": sys.executable,
                                  "vllm": args.vllm_python if uses_vllm else None},
                    frameworks_config={f: FRAMEWORKS[f] for f in frameworks})
    if workload["model"] == "tiny":
        settings.update(model="tiny", sizes=TINY,
                        training="full fine-tuning, fp32, frozen reference copy, one optimiser "
                                 "step per batch")
    else:
        settings.update(model=workload["model"], lora=LORA,
                        training="LoRA, fp32, reference = the adapter-free policy, one optimiser "
                                 "step per batch")
    started = time.time()
    results, failed = [], []
    with tempfile.TemporaryDirectory(prefix="alignkit-rl-bench-") as tmp:
        workdir = Path(tmp)
        try:
            prep = spawn(__file__, "--prepare", {"prompts_per_step": args.prompts_per_step,
                                                 "steps": steps, "seed": args.seed,
                                                 "workload": args.workload,
                                                 "workdir": str(workdir)},
                         workdir, "prepare", args.timeout)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        if not prep["prompt_ids_identical"]:
            print("WARNING: TRL's chat rendering of a prompt differs from alignkit's",
                  file=sys.stderr)
        settings["prompt_ids_identical"] = prep["prompt_ids_identical"]
        settings["model_path"] = prep["model"]
        for name in frameworks:
            fw = FRAMEWORKS[name]
            python = args.vllm_python if fw["engine"] == "vllm" else sys.executable
            before = idle_check()
            print(f"run {name}: {steps} steps ...", flush=True)
            spec = {"framework": name, "estimator": fw["estimator"],
                    "trl_defaults": fw["trl_defaults"], "engine": fw["engine"],
                    "rollout_dtype": fw["rollout_dtype"], "rollout_sync": fw["rollout_sync"],
                    "model": prep["model"],
                    "alignkit_model": prep["model"] if workload["model"] == "tiny"
                    else workload["model"],
                    "lora": workload["lora"], "constant_lr": workload["constant_lr"],
                    "data_path": prep["data_path"],
                    "order": prep["order"], "steps": steps, "warmup": args.warmup,
                    "prompts_per_step": args.prompts_per_step, "samples": args.samples,
                    "max_new_tokens": max_new_tokens, "beta": args.beta, "lr": lr,
                    "seed": args.seed, "device": args.device, "threads": args.threads,
                    "workdir": str(workdir / name)}
            t0, busy0, child0 = time.time(), cpu_busy_s(), children_cpu_s()
            try:
                r = spawn(__file__, "--child", spec, workdir, name, args.timeout, python=python)
            except RunFailed as e:
                print(e, file=sys.stderr, flush=True)
                failed.append(name)
                continue
            wall = time.time() - t0
            during = others_share(busy0, cpu_busy_s(), children_cpu_s() - child0, wall)
            r.update(framework=name, others_cpu_share_before=before,
                     others_cpu_share_during=during, run_wall_s=wall)
            print(f"  {r['s_per_step']:.3f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB"
                  + (f", engine start {r['engine_init_s']:.1f} s, log-prob gap "
                     f"{r['gap_mean']:.2e} (max {r['gap_max']:.3f})"
                     if r.get("engine_init_s") is not None and r.get("gap_mean") is not None
                     else "")
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
        "machine": machine_facts(),
        "versions": versions(), "settings": settings, "summary": summary, "runs": results,
        "busy_runs": busy, "failed_runs": failed})
    print(f"wrote {json_path}")
    return 1 if failed else 0


def child_for(spec: dict):
    pick = child_alignkit if FRAMEWORKS[spec["framework"]]["side"] == "alignkit" else child_trl

    def child(spec: dict) -> dict:
        result = pick(spec)
        result.update(python=sys.executable, python_version=platform.python_version(),
                      versions=versions())
        return result

    return child


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2], child_for, STARTED)
    elif len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        run_prepare(sys.argv[2])
    else:
        raise SystemExit(main())
