"""Data parallelism on CPU: 1 process against 2, alignkit (``torchrun``) beside TRL
(``accelerate launch``), and the memory ``--gradient-checkpointing`` saves, as whole processes.

    python bench/distributed.py                     # SmolLM2 LoRA, 6 steps, 2 repeats
    python bench/distributed.py --quick             # tiny model, 3 steps, 1 repeat: checks the harness
    python bench/distributed.py --configs sft,trl-sft --steps 10 --repeats 3

Configurations (``--configs``), each a pair of commands run one after the other:

- ``sft``: ``python -m alignkit sft --lora ...`` against ``python -m torch.distributed.run
  --standalone --nproc_per_node=2 -m alignkit sft --lora ...`` (gloo);
- ``dpo``: the same for ``alignkit dpo --lora`` (reference log-probs computed before step 1);
- ``trl-sft`` / ``trl-dpo``: ``SFTTrainer`` / ``DPOTrainer`` with LoRA in fp32
  (``bench/distributed_trl.py``) as ``python bench/distributed_trl.py`` against ``accelerate
  launch --multi_gpu --num_processes 2 ...`` (on a machine without GPUs ``--multi_gpu`` is the
  launcher that starts N processes; the Trainer joins them with gloo);
- ``gc``: ``alignkit sft --lora`` in one process with the whole step as one micro-batch
  (``--batch-size batch x grad-accum --grad-accum 1``), without and with
  ``--gradient-checkpointing``.

Same work at every world size: a step is ``--batch-size x --grad-accum`` examples (default
4 x 2 = 8) in alignkit's shuffled order; each of N processes runs ``grad-accum / N`` of its
micro-batches. TRL reads the same examples in the same order (sequential sampler over
alignkit's order; accelerate gives micro-batch k to process k mod N, as alignkit does).

Interleaved: every repeat runs every configuration's commands in turn (sft-1, sft-2, dpo-1,
dpo-2, ...), so load on the machine falls on both sides of each ratio alike. Threads: the
machine's cores (``--threads``, default all) are split among a command's processes
(``OMP_NUM_THREADS``: 2 cores -> 1 process x 2 threads, 2 processes x 1 thread).

Measured per command:
- ``s/step``: alignkit: median ``step_time_s`` of ``metrics.jsonl`` over steps 2..N (its own
  timer; step 1 is the warm-up); TRL: median interval between consecutive optimiser-step ends
  (``on_step_end``), steps 2..N. ``interval``: that interval for both (alignkit's from the
  ``time`` column), the definition the alignkit/TRL ratios use;
- ``wall``: the whole command, start to exit (imports, model loads, data preparation,
  alignkit's DPO reference pass, training, final save);
- peak RSS: the command's process tree is polled every 0.1 s for each process's ``VmHWM`` (the
  kernel's peak resident set of that process, so a peak between two polls is not missed unless
  the process exits right after it); ``sum`` adds the peaks of the launcher (``torchrun`` /
  ``accelerate launch``, none for one process) and the training processes, ``workers`` of the
  training processes only, ``largest`` is the biggest single one. A short-lived fork of a
  helper counts in neither. RSS counts the shared libraries (libtorch) in every process, so the
  sum overstates what 2 processes take from the machine; ``PSS`` (the largest sampled total
  proportional set size of the tree, every 0.5 s) splits shared pages among their users.

Output: a table on stdout and ``bench/results/distributed.json`` (``--quick``:
``distributed_quick.json``; ``--out`` to choose). Run it alone: on 2 cores a second torch job
slows both several times; runs during which other processes used more than 10% of the CPUs are
flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import (  # noqa: E402
    BUSY_SHARE,
    RunFailed,
    children_cpu_s,
    cpu_busy_s,
    fmt,
    idle_check,
    machine_facts,
    others_share,
    spawn,
    versions,
    write_json,
)

RESULTS = HERE / "results"
CONFIGS = ("sft", "dpo", "trl-sft", "trl-dpo", "gc")
TINY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 512}
LR = {"sft": 1e-4, "dpo": 5e-5}  # as sft_throughput.py / dpo_throughput.py on SmolLM2 LoRA
POLL_S = 0.1
PSS_EVERY = 5  # polls between PSS samples (reading smaps_rollup costs more)


# ---------------------------------------------------------------------------------------------
# prepare (in a subprocess, so this process never imports torch): model folder, pairs, orders


def run_prepare(spec_path: str) -> None:
    from dpo_throughput import demo_pairs

    from alignkit.data.readers import shipped_data_path
    from alignkit.data.sft import micro_batch_indices
    from alignkit.models.loading import resolve_model

    spec = json.loads(Path(spec_path).read_text())
    if spec["model"] == "tiny":
        from harness import tiny_model_folder

        model = tiny_model_folder(TINY)
    else:
        model = resolve_model("default")
    demo = shipped_data_path("demo")
    records = [json.loads(line) for line in demo.read_text().splitlines() if line.strip()]
    pairs = demo_pairs(records)[:spec["pairs"] or None]
    pairs_path = Path(spec["workdir"]) / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))

    def order(n: int) -> list[list[int]]:
        return [micro_batch_indices(k, n, spec["batch_size"], spec["seed"])
                for k in range(spec["micro_batches"])]

    Path(spec["result"]).write_text(json.dumps({
        "model": str(model), "sft_data": str(demo), "dpo_data": str(pairs_path),
        "n": {"sft": len(records), "dpo": len(pairs)},
        "order": {"sft": order(len(records)), "dpo": order(len(pairs))}}))


# ---------------------------------------------------------------------------------------------
# one command as a whole: wall time and the peak RSS of every process in its tree


def vm_hwm_kib(pid: int) -> int | None:
    """The kernel's peak resident set of ``pid`` (Linux ``/proc/<pid>/status`` VmHWM), KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size of ``pid`` now (shared pages divided among their users), KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_measured(cmd: list[str], env: dict, log_path: Path, timeout: float) -> dict:
    """Run ``cmd`` (in a session of its own) and poll its process tree every ``POLL_S``: each
    process's peak RSS (VmHWM; RSS where /proc is missing), parent and command line, and every
    ``PSS_EVERY`` polls the total PSS of the tree. Wall time from start to exit. Raises RunFailed
    on a non-zero exit or a timeout."""
    import psutil

    procs: dict[int, dict] = {}  # pid -> {"peak_kib", "cmd", "ppid"}
    use_proc = Path("/proc/self/status").is_file()
    pss_peak = [0]

    def sample(root: psutil.Process, polls: int) -> None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        pss_now = 0
        for p in tree:
            try:
                # latest command line: a fork shows its parent's until it execs
                cmdline, ppid = " ".join(p.cmdline()), p.ppid()
            except psutil.Error:
                continue
            info = procs.setdefault(p.pid, {"peak_kib": 0, "cmd": "", "ppid": ppid})
            info["cmd"] = cmdline or info["cmd"]
            kib = vm_hwm_kib(p.pid) if use_proc else None
            if kib is None:
                try:
                    kib = p.memory_info().rss // 1024
                except psutil.Error:
                    continue
            info["peak_kib"] = max(info["peak_kib"], kib)
            if use_proc and polls % PSS_EVERY == 0:
                pss_now += pss_kib(p.pid) or 0
        pss_peak[0] = max(pss_peak[0], pss_now)

    self0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, child0 = cpu_busy_s(), children_cpu_s()
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    root = psutil.Process(proc.pid)
    killed, polls = False, 0
    while True:
        sample(root, polls)
        polls += 1
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this run started
            pid, status, usage = os.wait4(proc.pid, 0)
            killed = True
            break
        time.sleep(POLL_S)
    wall = time.time() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    during = others_share(busy0, cpu_busy_s(), children_cpu_s() - child0 + own, wall)
    if killed or code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        why = f"killed after {timeout:.0f} s" if killed else f"exit {code}"
        raise RunFailed(f"{' '.join(cmd[:6])} ... failed ({why}); last lines of its log:\n{tail}")
    return {"started": t0, "wall_s": wall, "root": proc.pid, "procs": procs,
            "pss_peak_total_mib": pss_peak[0] / 1024 if use_proc else None,
            # the kernel's exact maximum over the root and every descendant it reaped
            "maxrss_tree_exact_mib": usage.ru_maxrss / 1024,
            "others_cpu_share_during": during}


def roles(m: dict, nproc: int, launchers: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """The command's launcher (the root when there are several processes) and its training
    processes (the root itself, or the root's children that are not forks of the launcher).
    Anything else in the tree (a short-lived fork of a helper) is neither."""
    root = m["root"]
    if nproc == 1:
        return [], [root]
    workers = [pid for pid, p in m["procs"].items() if p["ppid"] == root and p["cmd"]
               and not any(x in p["cmd"] for x in launchers)]
    return [root], workers


# ---------------------------------------------------------------------------------------------
# the commands


def variants(configs: list[str], step_batch: int) -> list[dict]:
    """(config, label, processes) of every command of a repeat, in the order they run."""
    out = []
    for c in configs:
        if c == "gc":
            label = f"alignkit sft, batch {step_batch}x1"
            out += [{"config": c, "label": label, "nproc": 1, "gc": False},
                    {"config": c, "label": f"{label} --gradient-checkpointing", "nproc": 1,
                     "gc": True}]
        else:
            name = c.replace("trl-", "TRL ") if c.startswith("trl") else f"alignkit {c}"
            out += [{"config": c, "label": name, "nproc": n, "gc": False} for n in (1, 2)]
    return out


def command(v: dict, args, prep: dict, out: Path,
            threads: int) -> tuple[list[str], tuple[str, ...], Path]:
    """The command line, what only its launcher's command line holds, and the file it writes
    its step record to (alignkit: metrics.jsonl; TRL: the result JSON)."""
    py = sys.executable
    trainer = "dpo" if v["config"] in ("dpo", "trl-dpo") else "sft"
    if v["config"].startswith("trl"):
        spec = {"trainer": trainer, "model": prep["model"],
                "data_path": prep[f"{trainer}_data"], "order": prep["order"][trainer],
                "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                "steps": args.steps, "lr": LR[trainer], "max_length": args.max_length,
                "seed": args.seed, "device": "cpu", "output": str(out / "trl"),
                "result": str(out / "result.json"),
                "ddp_find_unused_parameters": False if args.trl_no_find_unused else None}
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(spec))
        script = str(HERE / "distributed_trl.py")
        launch = [py] if v["nproc"] == 1 else [
            py, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(v["nproc"]), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads),
            "--main_process_port", "0"]
        return ([*launch, script, str(out / "spec.json")], ("accelerate.commands.launch",),
                out / "result.json")
    launch = [py, "-m", "alignkit"] if v["nproc"] == 1 else [
        py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={v['nproc']}",
        "-m", "alignkit"]
    batch, accum = ((args.batch_size * args.grad_accum, 1) if v["config"] == "gc"
                    else (args.batch_size, args.grad_accum))
    flags = [trainer, "--model", prep["model"], "--data",
             "demo" if trainer == "sft" else prep["dpo_data"],
             "--lora", "--lora-r", "16", "--lora-alpha", "32",
             "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--device", "cpu",
             "--precision", "fp32", "--eval-fraction", "0", "--max-length", str(args.max_length),
             "--lr", str(LR[trainer]), "--batch-size", str(batch), "--grad-accum", str(accum),
             "--max-steps", str(args.steps), "--seed", str(args.seed), "--log-every", "1",
             "--eval-every", "0", "--save-every", "0", "--no-progress", "--overwrite",
             "--output", str(out)]
    if trainer == "dpo":
        # no sampling at evaluation (an empty value; the literal 'none' is read as a file name)
        flags += ["--beta", "0.1", "--schedule", "constant", "--sample-prompts", ""]
    if v["gc"]:
        flags.append("--gradient-checkpointing")
    return [*launch, *flags], ("torch.distributed.run",), out / "metrics.jsonl"


def step_record(v: dict, record: Path, started: float, steps: int) -> dict:
    """Per-step times and losses of a finished command; step 1 is left out of the timing."""
    if v["config"].startswith("trl"):
        r = json.loads(record.read_text())
        if r["world_size"] != v["nproc"]:
            raise RunFailed(f"TRL ran on {r['world_size']} processes, not {v['nproc']}")
        ends, losses, own = r["step_ends"], r["losses"], None
        extra = {k: r[k] for k in ("world_size", "grad_accum_per_process", "torch_threads",
                                   "ddp_backend", "ddp_find_unused_parameters",
                                   "distributed_type")}
    else:
        rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        rows = sorted((r for r in rows if r.get("split") == "train"), key=lambda r: r["step"])
        ends, losses = [float(r["time"]) for r in rows], [r.get("loss") for r in rows]
        own = [float(r["step_time_s"]) for r in rows]
        extra = {"step_time_s": own}
    if len(ends) != steps:
        raise RunFailed(f"expected {steps} optimiser steps, found {len(ends)}")
    intervals = [b - a for a, b in zip(ends, ends[1:])]
    return {"s_per_step": statistics.median(own[1:] if own else intervals),
            "interval_s_per_step": statistics.median(intervals),
            "step_intervals_s": [round(x, 4) for x in intervals],
            "first_step_end_s": ends[0] - started, "losses": losses, **extra}


# ---------------------------------------------------------------------------------------------
# summary


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def largest(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def summarise(runs: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["config"], r["label"], r["nproc"], r["gc"]), []).append(r)
    rows = [{"config": c, "label": label, "nproc": n, "gc": gc, "repeats": len(rs),
             "s_per_step": median(r["s_per_step"] for r in rs),
             "interval_s_per_step": median(r["interval_s_per_step"] for r in rs),
             "wall_s": median(r["wall_s"] for r in rs),
             "first_step_end_s": median(r["first_step_end_s"] for r in rs),
             "peak_rss_sum_mib": max(r["peak_rss_sum_mib"] for r in rs),
             "peak_rss_workers_mib": max(r["peak_rss_workers_mib"] for r in rs),
             "peak_rss_largest_mib": max(r["peak_rss_largest_mib"] for r in rs),
             "pss_peak_total_mib": largest(r["pss_peak_total_mib"] for r in rs),
             "workers": max(r["workers"] for r in rs)}
            for (c, label, n, gc), rs in groups.items()]

    def row(config, nproc, gc=None):
        for x in rows:
            if x["config"] == config and x["nproc"] == nproc and (gc is None or x["gc"] == gc):
                return x
        return None

    def ratio(a, b, key):
        return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None

    scaling = []
    for c in dict.fromkeys(r["config"] for r in runs):
        one, two = (row(c, 1, False), row(c, 1, True)) if c == "gc" else (row(c, 1), row(c, 2))
        if not (one and two):
            continue
        first = {n: next((r for r in runs if r["config"] == c and r["gc"] == x["gc"]
                          and r["nproc"] == x["nproc"]), None) for n, x in ((1, one), (2, two))}
        scaling.append({
            "config": c, "compare": "gc on / off" if c == "gc" else "2 / 1 processes",
            **{f"{k}_ratio": ratio(two, one, k) for k in (
                "s_per_step", "interval_s_per_step", "wall_s", "peak_rss_sum_mib",
                "peak_rss_largest_mib")},
            "loss_max_rel_diff": loss_diff(first[1], first[2])})
    versus = []
    for trainer in ("sft", "dpo"):
        for n in (1, 2):
            a, t = row(trainer, n), row(f"trl-{trainer}", n)
            if a and t:
                ra, rt = (next(r for r in runs if r["config"] == c and r["nproc"] == n)
                          for c in (trainer, f"trl-{trainer}"))
                versus.append({
                    "trainer": trainer, "nproc": n,
                    "trl_over_alignkit_interval": ratio(t, a, "interval_s_per_step"),
                    "trl_over_alignkit_wall": ratio(t, a, "wall_s"),
                    "alignkit_over_trl_rss_sum": ratio(a, t, "peak_rss_sum_mib"),
                    "alignkit_over_trl_rss_workers": ratio(a, t, "peak_rss_workers_mib"),
                    # same examples in every step: the losses agree to float error
                    "loss_max_rel_diff": loss_diff(ra, rt)})
    return {"rows": rows, "scaling": scaling, "alignkit_vs_trl": versus}


def loss_diff(a: dict | None, b: dict | None) -> float | None:
    """Largest relative difference of the per-step losses of two runs (same step, same data)."""
    if not a or not b:
        return None
    pairs = [(x, y) for x, y in zip(a["losses"], b["losses"]) if x is not None and y is not None]
    if not pairs:
        return None
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in pairs)


def print_tables(summary: dict, settings: dict) -> None:
    s = settings
    print()
    print(f"Data parallelism on CPU (gloo): {s['model_name']} LoRA r=16 fp32; a step is "
          f"{s['batch_size']} x grad-accum {s['grad_accum']} = {s['batch_size'] * s['grad_accum']} "
          f"examples at every process count; {s['steps']} steps, timed 2..{s['steps']}; "
          f"medians over {s['repeats']} interleaved repeat(s)")
    print(f"this machine has {s['cores']} cores: OMP_NUM_THREADS = "
          + ", ".join(f"{n} process{'es' if n > 1 else ''} x {t} thread{'s' if t > 1 else ''}"
                      for n, t in s["threads_per_process"].items()))
    head = (f"{'config':<9}{'command':<48}{'procs':>5}{'s/step':>8}{'interval':>9}{'wall s':>8}"
            f"{'1st step':>9}  {'peak RSS MiB sum / workers / largest':>36}{'PSS MiB':>9}")
    print(head)
    print("-" * len(head))
    for r in summary["rows"]:
        rss = (f"{r['peak_rss_sum_mib']:.0f} / {r['peak_rss_workers_mib']:.0f} / "
               f"{r['peak_rss_largest_mib']:.0f}")
        print(f"{r['config']:<9}{r['label']:<48}{r['nproc']:>5}{fmt(r['s_per_step'], '.3f'):>8}"
              f"{fmt(r['interval_s_per_step'], '.3f'):>9}{r['wall_s']:>8.1f}"
              f"{fmt(r['first_step_end_s'], '.1f'):>9}  {rss:>36}"
              f"{fmt(r['pss_peak_total_mib'], '.0f'):>9}")
    print("s/step: alignkit's step_time_s (metrics.jsonl), TRL's step-end interval; interval: "
          "step-end to step-end on both; 1st step: seconds from the command's start to the end of "
          "step 1;\npeak RSS: each process's own peak (VmHWM), added up over the launcher and the "
          "training processes (shared libraries count once per process); PSS: the largest total "
          "proportional set size of the command's processes, sampled")
    if summary["scaling"]:
        print()
        head = (f"{'config':<9}{'compare':<17}{'s/step':>8}{'interval':>9}{'wall':>7}"
                f"{'RSS sum':>9}{'largest':>9}  {'loss max rel diff':>17}")
        print(head)
        print("-" * len(head))
        for r in summary["scaling"]:
            print(f"{r['config']:<9}{r['compare']:<17}"
                  + "".join(f"{fmt(r[k + '_ratio'], '.2f') + 'x':>{w}}" for k, w in (
                      ("s_per_step", 8), ("interval_s_per_step", 9), ("wall_s", 7),
                      ("peak_rss_sum_mib", 9), ("peak_rss_largest_mib", 9)))
                  + f"  {fmt(r['loss_max_rel_diff'], '.1e'):>17}")
        print("ratios: 2 processes over 1 (gc: with over without --gradient-checkpointing); "
              "below 1 is faster / smaller")
    if summary["alignkit_vs_trl"]:
        print()
        head = (f"{'trainer':<8}{'procs':>5}  {'TRL/alignkit interval':>21}{'wall':>7}  "
                f"{'alignkit/TRL RSS sum':>20}{'workers':>9}  {'loss max rel diff':>17}")
        print(head)
        print("-" * len(head))
        for r in summary["alignkit_vs_trl"]:
            print(f"{r['trainer']:<8}{r['nproc']:>5}  "
                  f"{fmt(r['trl_over_alignkit_interval'], '.2f') + 'x':>21}"
                  f"{fmt(r['trl_over_alignkit_wall'], '.2f') + 'x':>7}  "
                  f"{fmt(r['alignkit_over_trl_rss_sum'], '.2f') + 'x':>20}"
                  f"{fmt(r['alignkit_over_trl_rss_workers'], '.2f') + 'x':>9}  "
                  f"{fmt(r['loss_max_rel_diff'], '.1e'):>17}")
        print("time ratios above 1: alignkit faster; memory ratios below 1: alignkit smaller; "
              "the losses compare the two frameworks' per-step losses (same examples)")


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="Harness check: the tiny random model, 3 steps, 1 repeat.")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"Comma-separated, from {','.join(CONFIGS)} (default: all).")
    p.add_argument("--model", choices=("smollm2", "tiny"), default=None,
                   help="smollm2: the packaged SmolLM2-135M-Instruct (--model default); tiny: the "
                        "benchmarks' random tiny Llama (default: smollm2; --quick: tiny).")
    p.add_argument("--steps", type=int, default=None,
                   help="Optimiser steps per command, at least 2 (default: 6; --quick: 3).")
    p.add_argument("--repeats", type=int, default=None,
                   help="Interleaved repeats (default: 2; --quick: 1).")
    p.add_argument("--pairs", type=int, default=None,
                   help="DPO pairs in the data file; alignkit's reference pass before step 1 "
                        "covers all of them (default: all 340; --quick: 64).")
    p.add_argument("--batch-size", type=int, default=4, help="Micro-batch (default: 4).")
    p.add_argument("--grad-accum", type=int, default=2,
                   help="Micro-batches per step, a multiple of 2 (default: 2).")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Cores to split among a command's processes (default: all, "
                        "%(default)s here).")
    p.add_argument("--trl-no-find-unused", action="store_true",
                   help="TRL under 2 processes: ddp_find_unused_parameters=False (default: "
                        "transformers' choice, True without gradient checkpointing, which costs "
                        "an extra autograd-graph traversal per step).")
    p.add_argument("--timeout", type=int, default=1800, help="Seconds allowed per command.")
    p.add_argument("--log-dir", default=None, help="Keep every command's output here.")
    p.add_argument("--out", default=None,
                   help="Results JSON (default: bench/results/distributed.json; --quick: "
                        "bench/results/distributed_quick.json).")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown {c!r} (choose from {', '.join(CONFIGS)})")
    args.model = args.model or ("tiny" if args.quick else "smollm2")
    args.steps = args.steps or (3 if args.quick else 6)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.pairs = args.pairs if args.pairs is not None else (64 if args.quick else 0)
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is the warm-up)")
    if args.grad_accum % 2:
        raise SystemExit("--grad-accum must be a multiple of 2 (the processes share it)")
    threads = {n: max(1, args.threads // n) for n in (1, 2)}
    out_path = Path(args.out) if args.out else RESULTS / (
        "distributed_quick.json" if args.quick else "distributed.json")
    settings = {"model_name": "SmolLM2-135M-Instruct" if args.model == "smollm2"
                else "tiny random Llama (hidden 256, 4 layers)",
                "model": args.model, "configs": configs, "steps": args.steps,
                "repeats": args.repeats, "dpo_pairs": args.pairs or "all",
                "batch_size": args.batch_size,
                "grad_accum": args.grad_accum, "max_length": args.max_length, "seed": args.seed,
                "lr": LR, "lora": {"r": 16, "alpha": 32, "targets": "q_proj,k_proj,v_proj,o_proj"},
                "cores": os.cpu_count(), "threads_per_process": threads,
                "trl_ddp_find_unused_parameters": False if args.trl_no_find_unused else
                "transformers default"}
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    print(f"this machine has {os.cpu_count()} cores: 1 process runs with OMP_NUM_THREADS="
          f"{threads[1]}, 2 processes with OMP_NUM_THREADS={threads[2]} each", flush=True)
    started = time.time()
    runs, failed = [], []
    with tempfile.TemporaryDirectory(prefix="alignkit-distributed-bench-") as tmp:
        workdir = Path(tmp)
        print(f"preparing the model ({args.model}), pairs and batch order ...", flush=True)
        try:
            prep = spawn(__file__, "--prepare", {
                "model": args.model, "batch_size": args.batch_size, "seed": args.seed,
                "micro_batches": args.steps * args.grad_accum, "pairs": args.pairs,
                "workdir": str(workdir)},
                workdir, "prepare", args.timeout, log_dir)
        except RunFailed as e:
            raise SystemExit(str(e)) from None
        # one epoch of full micro-batches at most: TRL reads the order one micro-batch at a time,
        # and alignkit's last micro-batch of an epoch is partial
        settings["records"] = prep["n"]
        n = min(prep["n"].values())
        if n // args.batch_size < args.steps * args.grad_accum:
            raise SystemExit(f"--steps: {n} records give at most "
                             f"{n // args.batch_size // args.grad_accum} steps of full "
                             "micro-batches in one epoch")
        for rep in range(args.repeats):
            for v in variants(configs, args.batch_size * args.grad_accum):
                n = v["nproc"]
                name = f"{v['label']} [{n} proc] #{rep + 1}"
                tag = f"{v['config']}-{'gc' if v['gc'] else n}-{rep}"
                out = workdir / tag
                cmd, launcher_marks, record = command(v, args, prep, out, threads[n])
                env = dict(os.environ, OMP_NUM_THREADS=str(threads[n]),
                           MKL_NUM_THREADS=str(threads[n]), TOKENIZERS_PARALLELISM="false",
                           PYTHONUNBUFFERED="1")
                before = idle_check(0.5)
                print(f"run {name} ..." + (f" (WARNING: other work is using {before:.0%} of the "
                                           "CPUs)" if before and before > BUSY_SHARE else ""),
                      flush=True)
                try:
                    m = run_measured(cmd, env, (log_dir or workdir) / f"{tag}.log", args.timeout)
                    steps = step_record(v, record, m["started"], args.steps)
                except RunFailed as e:
                    print(f"{name}: {e}", file=sys.stderr, flush=True)
                    failed.append(name)
                    continue
                launcher, workers = roles(m, n, launcher_marks)
                peak = {pid: m["procs"][pid]["peak_kib"] / 1024 for pid in launcher + workers}
                role = {**{pid: "launcher" for pid in launcher},
                        **{pid: "worker" for pid in workers}}
                r = {**v, "repeat": rep, "command": " ".join(cmd), **steps,
                     "wall_s": m["wall_s"], "peak_rss_sum_mib": sum(peak.values()),
                     "peak_rss_workers_mib": sum(peak[pid] for pid in workers),
                     "peak_rss_largest_mib": max(peak.values()),
                     "pss_peak_total_mib": m["pss_peak_total_mib"], "workers": len(workers),
                     "maxrss_tree_exact_mib": m["maxrss_tree_exact_mib"],
                     "processes": [{"role": role.get(pid, "other"), "cmd": p["cmd"][:200],
                                    "peak_rss_mib": round(p["peak_kib"] / 1024, 1)}
                                   for pid, p in m["procs"].items()],
                     "others_cpu_share_before": before,
                     "others_cpu_share_during": m["others_cpu_share_during"]}
                if len(workers) != n:
                    print(f"  WARNING: saw {len(workers)} training processes, expected {n}",
                          file=sys.stderr)
                during = m["others_cpu_share_during"]
                print(f"  {r['s_per_step']:.3f} s/step, wall {r['wall_s']:.1f} s, peak RSS "
                      f"{r['peak_rss_sum_mib']:.0f} MiB over {len(peak)} process(es)"
                      + (f", others used {during:.0%} of the CPUs meanwhile"
                         if during is not None else ""), flush=True)
                runs.append(r)
    if not runs:
        raise SystemExit("every run failed")
    summary = summarise(runs)
    print_tables(summary, settings)
    busy = [f"{r['label']} [{r['nproc']}] #{r['repeat'] + 1}" for r in runs
            if max(r["others_cpu_share_before"] or 0, r["others_cpu_share_during"] or 0)
            > BUSY_SHARE]
    if busy:
        which = "every run" if len(busy) == len(runs) else ", ".join(busy)
        print(f"WARNING: other work used over {BUSY_SHARE:.0%} of the CPUs during {which}: "
              "those numbers are not trustworthy; rerun on a quiet machine", file=sys.stderr)
    write_json(out_path, {
        "benchmark": "distributed", "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": time.time() - started,
        "machine": machine_facts(),
        "versions": versions(), "settings": settings, "summary": summary, "runs": runs,
        "busy_runs": busy, "failed_runs": failed,
        "definitions": {
            "s_per_step": "alignkit: median metrics.jsonl step_time_s over steps 2..N; TRL: "
                          "median interval between on_step_end times, steps 2..N",
            "interval_s_per_step": "median wall time between the ends of consecutive optimiser "
                                   "steps, steps 2..N (alignkit: metrics.jsonl 'time')",
            "wall_s": "the whole command, start to exit",
            "peak_rss_sum_mib": "sum over every process of the command (launchers included) of "
                                "its VmHWM, polled every 0.1 s",
            "peak_rss_workers_mib": "the same over the training processes only",
            "maxrss_tree_exact_mib": "wait4 ru_maxrss of the command: the largest single "
                                     "process in its tree, exact",
            "pss_peak_total_mib": "largest sum of the PSS (shared pages split among the "
                                  "processes that map them) over the whole tree, sampled every "
                                  f"{POLL_S * PSS_EVERY:.1f} s: what the command needs of the "
                                  "machine, without counting shared libraries once per process",
        }})
    print(f"wrote {out_path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        run_prepare(sys.argv[2])
    else:
        raise SystemExit(main())
