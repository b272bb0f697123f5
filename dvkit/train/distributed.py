"""Data-parallel training across processes, as started by `accelerate launch` or `torchrun`.

Launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1
every process trains on its own random batches, gradients are averaged after each backward
pass, and only rank 0 writes checkpoints, draws progress and registers the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = World()


def current_world() -> World:
    """Join the process group the launcher described (once), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_gradients(parameters: Iterable[torch.nn.Parameter], world: World) -> None:
    if world.size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world.size


def gather(value: object, world: World) -> list[object]:
    """Every rank's `value`, in rank order (a list of one in a world of one)."""
    if world.size == 1:
        return [value]
    values: list[object] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
