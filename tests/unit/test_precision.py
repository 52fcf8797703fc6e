"""What ``--precision`` means on a device: ``auto`` is bf16 autocast on CUDA and fp32 on CPU;
the name a run records in its set-up row (``numerics``)."""

import pytest

from alignkit.models import precision

pytestmark = pytest.mark.unit


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu_and_asked_for_is_what_runs():
    import torch

    assert precision.numerics_name("cpu", "auto") == "fp32"
    assert precision.autocast_dtype("cpu", "auto") is None
    assert precision.numerics_name("cuda:1", "auto") == "bf16"
    assert precision.autocast_dtype("cuda", "auto") == torch.bfloat16
    for device in ("cpu", "cuda"):
        assert [precision.numerics_name(device, p) for p in ("fp32", "bf16", "fp16")] == \
            ["fp32", "bf16", "fp16"]
    assert precision.autocast_dtype("cpu", "fp16") == torch.float16


def test_the_context_computes_in_what_it_names():
    import torch

    a = torch.ones(2, 2)
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    for name in ("fp32", "bf16"):
        with precision.autocast("cpu", name):
            out = a @ a
        assert names[out.dtype] == name == precision.numerics_name("cpu", name)
