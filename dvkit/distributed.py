"""Work across processes, as started by `accelerate launch` or `torchrun`.

Launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1
the processes join one process group and rank 0 is the only one that writes to the catalog.
Training is data-parallel: every process trains on its own random batches, gradients are
averaged after each backward pass, and only rank 0 writes checkpoints, draws progress and
registers the result. Grids (`dvkit.evaluate.grid`) split their cells over the ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dvkit.models.loading import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = World()


def launched_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_world(backend: str | None = None, timeout: float | None = None) -> World:
    """Join the process group the launcher described (once), or a world of one.

    `backend` defaults to nccl where CUDA is present, else gloo; `timeout` (seconds) bounds
    every collective (torch's default when None).
    """
    if launched_size() <= 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        limit = None if timeout is None else timedelta(seconds=timeout)
        dist.init_process_group(backend=backend, timeout=limit)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(name: str, world: World) -> torch.device:
    """The device `name` (see `resolve_device`); in a world of several processes `auto` gives
    each process the GPU of its local rank."""
    if name == "auto" and world.size > 1 and torch.cuda.is_available():
        return torch.device(f"cuda:{world.local_rank}")
    return resolve_device(name)


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
