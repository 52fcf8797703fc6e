"""What a run's timings ran on: the processor, its vector units, the threads torch used and the
GPU. The same demo took 22 minutes on one 2-core cloud VM and 38 on another of an older processor
generation, so a wall-clock time without its machine cannot be compared."""

from __future__ import annotations

import platform

# the instruction sets that decide CPU matmul speed, best first: what ``machine_line`` names
_VECTOR_UNITS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512_f", "AVX-512"),
                 ("avx2", "AVX2"))


def describe_machine(device: str) -> dict:
    """The machine a run timed on: ``cpu`` (the name the processor reports), ``architecture``,
    ``physical_cores``, ``torch_threads``, ``vector_units`` (which of AMX, AVX-512 BF16,
    AVX-512, AVX2 it has), ``torch`` (version), and on CUDA ``gpu`` (the device's name)."""
    import torch

    caps = _cpu_capabilities()
    info = {
        "cpu": str(caps.get("cpu_name") or platform.processor() or "unknown"),
        "architecture": str(caps.get("architecture") or platform.machine()),
        "physical_cores": caps.get("num_physical_cores"),
        "torch_threads": torch.get_num_threads(),
        "vector_units": [name for key, name in _VECTOR_UNITS if caps.get(key)],
        "torch": str(torch.__version__),
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_capabilities() -> dict:
    import torch

    try:  # the processor's name and feature flags as cpuinfo reads them; older torch lacks it
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        return {}


def machine_line(info: dict) -> str:
    """One line for a run's output, naming the best vector unit: ``machine: Intel Xeon 2.80GHz
    (x86_64, 2 cores, AVX-512), 2 torch threads, torch 2.13.0+cpu``; the GPU's name first where
    there is one."""
    units = info.get("vector_units")
    units = [str(u) for u in units] if isinstance(units, list) else []
    cores = info.get("physical_cores")
    details = [str(info.get("architecture", "?")), *([f"{cores} cores"] if cores else []),
               *units[:1]]
    cpu = f"{info.get('cpu', 'unknown')} ({', '.join(details)})"
    gpu = f"{info['gpu']}; " if info.get("gpu") else ""
    return (f"machine: {gpu}{cpu}, {info.get('torch_threads')} torch threads, "
            f"torch {info.get('torch')}")
