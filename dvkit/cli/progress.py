"""A rich progress bar: stage, units of work done (steps, cells), their rate, the loss where the
work has one, and time remaining."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichReporter:
    """Draws one bar per stage on stderr, counting `unit`s of work ("steps", "cells"); with
    `loss` False (sampling, grids) it has no loss column."""

    def __init__(self, unit: str = "steps", loss: bool = True) -> None:
        self.unit = unit
        columns = [
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[rate]}"),
        ]
        if loss:
            columns.append(TextColumn("loss {task.fields[loss]}"))
        columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=Console(stderr=True))
        self._task: TaskID | None = None

    def start(self, stage: str, total: int, completed: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            stage, total=total, completed=completed, loss="-", rate=""
        )

    def step(self, loss: float | None = None) -> None:
        assert self._task is not None
        self._progress.advance(self._task)
        speed = self._progress.tasks[self._task].speed
        rate = f"{speed:.2f} {self.unit}/s" if speed else ""
        shown = "-" if loss is None else f"{loss:.4f}"
        self._progress.update(self._task, loss=shown, rate=rate)

    def end(self) -> None:
        self._progress.stop()


@contextmanager
def interrupt_on_terminate() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a killed training run still writes its checkpoint."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
