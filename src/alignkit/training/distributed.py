"""Data parallelism under ``torchrun``: the process group, each rank's share of a step's
examples, sums across ranks, and the model wrapped for it, in one of two strategies
(``--distributed``):

- ``ddp`` (``DistributedDataParallel``): every rank holds the whole model, its gradients and the
  optimiser state; the backward all-reduces (averages) the gradients.
- ``fsdp`` (FSDP2, ``fully_shard``): every decoder layer of every Hugging Face model inside the
  trained module is one unit, and the ``StepForward`` wrapper is the root, owning the rest
  (embeddings, final norm, LM head, reward heads). Each rank holds 1/N of every parameter, of its
  gradient and of the optimiser state; a unit is all-gathered for its forward and backward and
  freed after, and the backward reduce-scatters (averages) the gradients. Forwards outside the
  wrapper (evaluation, sampling) run with every unit gathered (``gathered``).

A plain ``alignkit <stage>`` is one process and touches none of this (no process group, no
wrapper). Under ``torchrun --nproc_per_node N`` every rank builds the same model from the same
seed, takes every N-th example of each of the step's micro-batches, and normalises its losses by
the whole step's count (summed across ranks), so that the gradients both strategies average
(times N) equal the one-process step's: the global batch, the example order and the loss
normalisation do not depend on the world size or the strategy.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from alignkit.errors import UserError
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
    """The model as the data-parallel wrapper sees it: ``forward(compute, *args)`` runs
    ``compute(model, *args)``, so a trainer's own forward (hidden states only where targets are,
    several reward members, a policy with its value head) goes through the wrapper's forward:
    DDP then synchronises its gradients, and FSDP gathers the parameters the root owns (the
    forwards call the decoder stack and the LM head separately, so only a forward of the whole
    wrapper sees them all)."""

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


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers of every Hugging Face model inside ``model`` (a policy, LoRA-wrapped
    or not, the backbones of a reward ensemble; a backbone shared by several members once): the
    outermost ``GradientCheckpointingLayer``s, else the classes the model names in
    ``_no_split_modules``."""
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    found: list[torch.nn.Module] = []
    covered: set[int] = set()
    for hf in model.modules():
        if id(hf) in covered or not isinstance(hf, PreTrainedModel):
            continue
        covered.update(id(m) for m in hf.modules())
        names = set(getattr(hf, "_no_split_modules", None) or ())
        for kind in (lambda m: isinstance(m, GradientCheckpointingLayer),
                     lambda m: type(m).__name__ in names):
            inner: set[int] = set()
            layers = []
            for m in hf.modules():
                if id(m) not in inner and m is not hf and kind(m):
                    layers.append(m)
                    inner.update(id(x) for x in m.modules())
            if layers:
                found += layers
                break
    return found


def shard(model: torch.nn.Module, device: str, world: World, cpu_offload: bool = False,
          what: str = "the model"):
    """FSDP2 around the model: ``fully_shard`` on each of its decoder layers, then on the
    ``StepForward`` wrapper (the root, returned). ``cpu_offload``: the shards, their gradients and
    the optimiser step live in CPU memory (a run on the CPU has them there already). Gradient
    reduction averages over the ranks, as DDP's does."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise UserError(f"--distributed fsdp: {what} has no Hugging Face decoder layers to shard "
                        f"({type(model).__name__}); use --distributed ddp")
    mesh = init_device_mesh(torch.device(device).type, (world.size,))
    offload = cpu_offload and mesh.device_type != "cpu"
    options = {"mesh": mesh, "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy()}
    for layer in layers:
        fully_shard(layer, **options)
    root = fully_shard(StepForward(model), **options)
    # FSDP2 takes the first module to run a forward as the root: an evaluation that calls a
    # layer before any training step must not become it
    with torch.no_grad():
        root(lambda inner: None)
    root.reshard()
    return root


def is_sharded(wrapper) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(wrapper, FSDPModule)


@contextlib.contextmanager
def no_sync(wrapper, sync: bool):
    """Accumulate gradients locally (no all-reduce or reduce-scatter) unless ``sync``: the last
    micro-batch of a step synchronises what every micro-batch added."""
    if wrapper is None or sync:
        yield
    elif is_sharded(wrapper):
        wrapper.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapper.set_requires_gradient_sync(True)
    else:
        with wrapper.no_sync():
            yield


@contextlib.contextmanager
def gathered(root):
    """Every FSDP unit of ``root`` (the layers and the root itself) gathered and kept whole for
    the duration, for forwards that do not go through the wrapper (evaluation, reference
    log-probs, sampling): inside, a forward runs no collective, so processes may run different
    numbers of them (each sampling its own share of prompts to its own lengths). Every process
    holds the whole weights meanwhile (but no gradients: it is not for training steps)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            # the root keeps its own parameters from forward to backward, the layers free theirs
            unit.set_reshard_after_forward(unit is not root, recurse=False)
            unit.reshard()


def skeleton(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s structure with its parameters on the meta device (no memory): the
    module tree and containers copied, buffers and every other object (configs, tokenizer, a
    reward model's spec) shared. Made before sharding, it is what ``plain_copy`` fills with the
    full weights at the end (FSDP modules cannot be copied)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"),
                                         requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b
    for m in model.modules():
        for key, value in vars(m).items():
            if not key.startswith("_") and not isinstance(
                    value, (torch.nn.Module, torch.Tensor, list, dict, set, tuple)):
                memo[id(value)] = value
    return copy.deepcopy(model, memo)


def plain_copy(sharded: torch.nn.Module, template: torch.nn.Module, world: World):
    """The sharded ``sharded`` model's full weights (every rank takes part in the gathering) in
    ``template`` (its ``skeleton``), on the CPU of the first rank; ``None`` on the others. Tied
    parameters stay tied."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True,
                                                                   cpu_offload=True))
    if not world.is_main:
        return None
    names: dict[int, list[tuple[torch.nn.Module, str, str]]] = {}
    for prefix, module in template.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is not None:
                names.setdefault(id(p), []).append(
                    (module, name, f"{prefix}.{name}" if prefix else name))
    for uses in names.values():
        key = next((k for _, _, k in uses if k in full), None)
        if key is None:
            raise RuntimeError(f"no gathered weights for {uses[0][2]}")
        old = uses[0][0]._parameters[uses[0][1]]
        value = torch.nn.Parameter(full[key], requires_grad=old.requires_grad)
        for module, name, _ in uses:
            module._parameters[name] = value
    return template.to("cpu")
