"""The generic training loop: AdamW with warm-up, autocast, checkpoints, resume and interrupt.

A stage optimises named parameters with a step function that returns the loss. Every
`checkpoint_every` steps (and on Ctrl-C) the parameters, optimizer state, random generator
state and loss curve are written to `<folder>/<stage>/state.pt`, so `resume=True` continues
exactly where the run stopped: an interrupted and resumed run ends with the same weights as an
uninterrupted one with the same seed.

Ctrl-C is honoured inside a step too: the forward pass runs Python between the base's modules,
and the backward pass calls back into Python (`_unpacked`) each time it reads a tensor saved by
the forward pass, so a pending interrupt is raised there rather than after the whole backward
pass. An interrupted step is dropped: the checkpoint holds the last finished step and the
random state it ended with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from dvkit.catalog.runs import DONE_FILE, STATE_FILE
from dvkit.distributed import World, average_gradients, gather
from dvkit.errors import DvkitError


class TrainingInterrupted(DvkitError):
    """Training stopped by the user; a checkpoint to resume from was written."""

    exit_code = 130

    def __init__(
        self, stage: str, step: int, total: int, again: str = "the same command with --resume"
    ) -> None:
        self.stage, self.step, self.total = stage, step, total
        super().__init__(f"interrupted at {stage} step {step}/{total}; run {again} to continue")


class Reporter(Protocol):
    """Receives progress: the CLI draws a progress bar, the library stays silent by default."""

    def start(self, stage: str, total: int, completed: int) -> None: ...

    def step(self, loss: float | None) -> None: ...

    def end(self) -> None: ...


class SilentReporter:
    def start(self, stage: str, total: int, completed: int) -> None:
        pass

    def step(self, loss: float | None) -> None:
        pass

    def end(self) -> None:
        pass


def count_progress(reporter: Reporter, stage: str) -> Callable[[int, int], None]:
    """An `on_done(done, total)` callback that shows counted work (e.g. grid cells) on
    `reporter`: the first call starts the bar at `done` (work done before, such as cells
    stored by an earlier run, which the rate leaves out), each later one counts one more."""
    started: list[bool] = []

    def on_done(done: int, total: int) -> None:
        if started:
            reporter.step(None)
        else:
            reporter.start(stage, total, done)
            started.append(True)
        if done == total:
            reporter.end()

    return on_done


@dataclass
class Stage:
    """One optimisation stage (e.g. textual inversion, identity adapter, motion adapter)."""

    name: str
    steps: int
    lr: float
    parameters: dict[str, torch.nn.Parameter]
    loss: Callable[[torch.Generator], torch.Tensor]
    keep_steps: list[int] = field(default_factory=list)


@dataclass
class StageResult:
    loss_curve: list[tuple[int, float]]
    kept: dict[int, dict[str, torch.Tensor]]
    """Parameter snapshots at the kept steps (CPU copies)."""


@dataclass
class LoopSettings:
    warmup_steps: int = 10
    checkpoint_every: int = 100
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    world: World = field(default_factory=World)


def run_stage(
    stage: Stage,
    settings: LoopSettings,
    folder: Path,
    generator: torch.Generator,
    reporter: Reporter,
    resume: bool,
) -> StageResult:
    """Optimise `stage` to completion (or continue its checkpoint); see the module docstring."""
    stage_folder = folder / stage.name
    done = stage_folder / DONE_FILE
    world = settings.world
    if resume and done.is_file():
        return _restore_done(stage, done, generator, world)
    params = list(stage.parameters.values())
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    warmup = settings.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_factor(step, warmup)
    )
    scaler = torch.amp.GradScaler(enabled=settings.autocast_dtype == torch.float16)
    curve: list[tuple[int, float]] = []
    kept: dict[int, dict[str, torch.Tensor]] = {}
    step = 0
    if resume and (stage_folder / STATE_FILE).is_file():
        step = _load_state(
            stage_folder / STATE_FILE, stage, optimizer, schedule, generator, world, curve, kept
        )
    reporter.start(stage.name, stage.steps, step)
    device_type = settings.device.type
    step_start = generator.get_state()
    try:
        while step < stage.steps:
            with interruptible():
                with torch.autocast(
                    device_type,
                    dtype=settings.autocast_dtype or torch.float32,
                    enabled=settings.autocast_dtype is not None,
                ):
                    loss = stage.loss(generator)
                scaler.scale(loss).backward()
            average_gradients(params, world)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            step += 1
            step_start = generator.get_state()
            value = float(loss.detach())
            curve.append((step, value))
            if step in stage.keep_steps:
                kept[step] = _snapshot(stage)
            reporter.step(value)
            if step % settings.checkpoint_every == 0 and step < stage.steps:
                _save_state(
                    stage_folder, step, stage, optimizer, schedule, generator, world, curve, kept
                )
    except KeyboardInterrupt:
        generator.set_state(step_start)  # the unfinished step drew from it
        _save_state(stage_folder, step, stage, optimizer, schedule, generator, world, curve, kept)
        reporter.end()
        raise TrainingInterrupted(stage.name, step, stage.steps) from None
    reporter.end()
    _save_done(stage_folder, stage, generator, world, curve, kept)
    return StageResult(curve, kept)


def interruptible() -> torch.autograd.graph.saved_tensors_hooks:
    """Hooks that give the interpreter a chance to raise a pending Ctrl-C during backward."""
    return torch.autograd.graph.saved_tensors_hooks(_packed, _unpacked)


def _packed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _unpacked(tensor: torch.Tensor) -> torch.Tensor:
    """Called for every saved tensor the backward pass reads: Python runs here, so a Ctrl-C
    that arrived during the (C++) backward pass is raised now, not when it ends."""
    return tensor


def warmup_factor(step: int, warmup: int) -> float:
    """The learning rate of step `step` (0 for the first) as a fraction of the stage's: rising
    linearly from 0 over `warmup` steps, then constant, as the official trainer's AnnealingLR
    (lr · step / warmup_steps while step ≤ warmup_steps, decay 'none'): the first step's
    learning rate is 0, step `warmup`'s the full one."""
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def _snapshot(stage: Stage) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in stage.parameters.items()}


def _save_state(
    folder: Path,
    step: int,
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    world: World,
    curve: list[tuple[int, float]],
    kept: dict[int, dict[str, torch.Tensor]],
) -> None:
    generators = gather(generator.get_state(), world)
    if not world.main:
        return
    state = {
        "step": step,
        "parameters": _snapshot(stage),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generators": generators,
        "curve": torch.tensor(curve, dtype=torch.float64).reshape(-1, 2),
        "kept": kept,
    }
    _atomic_save(state, folder / STATE_FILE)


def _load_state(
    path: Path,
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    world: World,
    curve: list[tuple[int, float]],
    kept: dict[int, dict[str, torch.Tensor]],
) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    _copy_parameters(stage, state["parameters"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    _restore_generator(generator, state["generators"], world)
    curve.extend((int(s), float(v)) for s, v in state["curve"].tolist())
    kept.update(state["kept"])
    return int(state["step"])


def _save_done(
    folder: Path,
    stage: Stage,
    generator: torch.Generator,
    world: World,
    curve: list[tuple[int, float]],
    kept: dict[int, dict[str, torch.Tensor]],
) -> None:
    generators = gather(generator.get_state(), world)
    if not world.main:
        return
    done = {
        "parameters": _snapshot(stage),
        "generators": generators,
        "curve": torch.tensor(curve, dtype=torch.float64).reshape(-1, 2),
        "kept": kept,
    }
    _atomic_save(done, folder / DONE_FILE)
    (folder / STATE_FILE).unlink(missing_ok=True)


def _restore_done(
    stage: Stage, path: Path, generator: torch.Generator, world: World
) -> StageResult:
    done = torch.load(path, map_location="cpu", weights_only=True)
    _copy_parameters(stage, done["parameters"])
    _restore_generator(generator, done["generators"], world)
    curve = [(int(s), float(v)) for s, v in done["curve"].tolist()]
    return StageResult(curve, done["kept"])


def _restore_generator(generator: torch.Generator, states: list, world: World) -> None:
    if len(states) != world.size:
        raise DvkitError(
            f"the checkpoint was written by {len(states)} processes; resume with as many "
            f"(this run has {world.size})"
        )
    generator.set_state(states[world.rank])


def _copy_parameters(stage: Stage, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in stage.parameters.items():
            param.copy_(saved[name])


def _atomic_save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    torch.save(state, partial)
    os.replace(partial, path)
