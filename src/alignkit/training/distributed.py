"""Data parallelism under ``torchrun``: the process group, each rank's share of a step's
examples, sums across ranks, and the model wrapped in ``DistributedDataParallel``.

A plain ``alignkit <stage>`` is one process and touches none of this (no process group, no
wrapper). Under ``torchrun --nproc_per_node N`` every rank builds the same model from the same
seed, takes every N-th example of each of the step's micro-batches, and normalises its losses by
the whole step's count (summed across ranks), so that the gradients DDP averages (times N) equal
the one-process step's: the global batch, the example order and the loss normalisation do not
depend on the world size.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from alignkit.utils.distributed import World, launched_world


def init_world(device: str) -> tuple[World, str]:
    """Join the process group when launched with more than one process: NCCL on CUDA (one GPU
    per local rank), gloo on CPU. Returns (the world, this rank's device)."""
    world = launched_world()
    if not world.distributed:
        return world, device
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if not world.is_main:  # one voice: the first rank reports, the others only warn
        logging.getLogger("alignkit").setLevel(logging.WARNING)
    return world, device


class StepForward(torch.nn.Module):
    """The model as DDP sees it: ``forward(compute, *args)`` runs ``compute(model, *args)``, so
    a trainer's own forward (hidden states only where targets are, several reward members, a
    policy with its value head) goes through DDP's forward and its gradients are synchronised."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, compute, *args, **kwargs):
        return compute(self.model, *args, **kwargs)


def wrap(model: torch.nn.Module, device: str, idle_parameters: bool = False):
    """``DistributedDataParallel`` around the model. ``idle_parameters``: some trainable
    parameters sit out some micro-batches (the members of an ensemble that train on their own
    batches), so DDP must look for them after every forward."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(StepForward(model), device_ids=ids,
                                   find_unused_parameters=idle_parameters)


def no_sync(ddp, sync: bool):
    """Accumulate gradients locally (no all-reduce) unless ``sync``: the last micro-batch of a
    step synchronises what every micro-batch added."""
    if ddp is None or sync:
        return contextlib.nullcontext()
    return ddp.no_sync()
