"""Where this process stands among the processes of a ``torchrun`` launch, and the few
collectives every layer may need: sums, gathered Python objects, a barrier, each rank's share of
a list. A single process (no ``torchrun``) touches no ``torch.distributed`` at all: every
function here is then the identity or a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """What ``torchrun`` (or any launcher that sets its environment variables) asked for."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's share of a micro-batch: every ``size``-th example from ``rank`` on (the shares
    of all ranks together are the micro-batch, whatever the world size)."""
    return indices[world.rank::world.size]


def share(items: list, world: World) -> list:
    """This rank's contiguous share of ``items`` (sizes differ by at most one; the shares in
    rank order are ``items``), so that groups of neighbours (a prompt's samples) stay together
    when ``items`` lists whole groups."""
    n = len(items)
    return items[world.rank * n // world.size:(world.rank + 1) * n // world.size]


def sum_across(values: list[float] | torch.Tensor, world: World, device: str = "cpu"):
    """Elementwise sum of ``values`` over every rank (the values themselves in one process)."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    as_list = not isinstance(values, torch.Tensor)
    t = (torch.tensor(values, dtype=torch.float64, device=device) if as_list
         else values.detach().to(device=device, dtype=torch.float64).clone())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist() if as_list else t


def gather_objects(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process). Tensors inside should be
    on the CPU."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def gather_shares(items: list, world: World) -> list:
    """The inverse of ``share``: every rank's share, concatenated in rank order."""
    return [x for part in gather_objects(items, world) for x in part]


def barrier(world: World) -> None:
    """Wait until every rank is here (rank 0 has written what the others read next)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()
