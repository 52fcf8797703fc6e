"""What a run's timings ran on: read from torch's view of the processor, printed as one line."""

import pytest
import torch

from alignkit.utils.machine import describe_machine, machine_line

pytestmark = pytest.mark.unit


def test_describe_machine_reads_torch_and_the_processor_flags():
    info = describe_machine("cpu")
    caps = torch.cpu.get_capabilities()
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["physical_cores"] == caps["num_physical_cores"]
    assert info["cpu"] == caps["cpu_name"] and info["architecture"] == caps["architecture"]
    # best first, each present exactly when its flag is
    expected = [name for key, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                       ("avx512_f", "AVX-512"), ("avx2", "AVX2"))
                if caps.get(key)]
    assert info["vector_units"] == expected
    assert "gpu" not in info


def test_machine_line_names_the_gpu_and_the_best_vector_unit():
    amx = {"cpu": "Intel Xeon Platinum 8481C", "architecture": "x86_64", "physical_cores": 2,
           "torch_threads": 2, "vector_units": ["AMX", "AVX-512 BF16", "AVX-512", "AVX2"],
           "torch": "2.13.0+cpu"}
    assert machine_line(amx) == ("machine: Intel Xeon Platinum 8481C (x86_64, 2 cores, AMX), "
                                 "2 torch threads, torch 2.13.0+cpu")
    gpu = {**amx, "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128"}
    assert machine_line(gpu) == ("machine: NVIDIA H100 80GB HBM3; Intel Xeon Platinum 8481C "
                                 "(x86_64, 2 cores, AMX), 2 torch threads, torch 2.13.0+cu128")
    # a hand-edited summary: no cores, vector units not a list -> left out, not split into letters
    odd = {"cpu": "Ampere Altra", "architecture": "aarch64", "physical_cores": None,
           "torch_threads": 4, "vector_units": "SVE", "torch": "2.13.0"}
    assert machine_line(odd) == "machine: Ampere Altra (aarch64), 4 torch threads, torch 2.13.0"
