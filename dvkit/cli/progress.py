"""A rich progress bar: stage, units of work done (steps, cells), their rate, the loss where the
work has one, time remaining, and for training an early estimate of a stage's time."""

from __future__ import annotations

import signal
import time
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

from dvkit.errors import Terminated
from dvkit.wording import duration, plural

ESTIMATE_AFTER = 3
"""Steps timed before a stage's time estimate (the first one only starts the clock)."""


class RichReporter:
    """Draws one bar per stage on stderr, counting `unit`s of work ("steps", "cells"); with
    `loss` False (sampling, grids) it has no loss column, else the loss shows once there is one.

    With `estimate`, a line after the first `ESTIMATE_AFTER` steps of a stage says how long the
    rest of it will take (timed from the end of its first step, which also warms up)."""

    def __init__(self, unit: str = "steps", loss: bool = True, estimate: bool = False) -> None:
        self.unit = unit
        columns = [
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[rate]}"),
        ]
        if loss:
            columns.append(TextColumn("{task.fields[loss]}"))
        columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=Console(stderr=True))
        self._task: TaskID | None = None
        self._estimate = estimate
        self._stage = ""
        self._times: list[float] = []
        self._stepped = False

    def start(self, stage: str, total: int, completed: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            stage, total=total, completed=completed, loss="", rate=""
        )
        self._progress.advance(self._task, 0)  # the rate counts from now: work done before is not
        self._stage = stage
        self._times = []
        self._stepped = False

    def step(self, loss: float | None = None) -> None:
        assert self._task is not None
        self._stepped = True
        self._progress.advance(self._task)
        speed = self._progress.tasks[self._task].speed
        rate = f"{speed:.2f} {self.unit}/s" if speed else ""
        shown = "" if loss is None else f"loss {loss:.4f}"
        self._progress.update(self._task, loss=shown, rate=rate)
        if self._estimate:
            self._time_steps()

    def _time_steps(self) -> None:
        """Print the stage's estimate once its first `ESTIMATE_AFTER` steps are timed."""
        self._times.append(time.monotonic())
        if len(self._times) != ESTIMATE_AFTER:
            return
        assert self._task is not None
        task = self._progress.tasks[self._task]
        left = int(task.total or 0) - int(task.completed)
        if left <= 0:
            return
        each = (self._times[-1] - self._times[0]) / (ESTIMATE_AFTER - 1)
        self._progress.console.print(
            f"{self._stage}: about {duration(each * left)} for the other {plural(left, 'step')} "
            f"(timed over {ESTIMATE_AFTER - 1} steps)"
        )

    def end(self) -> None:
        """Stop drawing the stage's bar (nothing when none is drawn); a bar that never moved (an
        error before the first step) is removed rather than left on the screen."""
        if self._task is None:
            return
        if not self._stepped:
            self._progress.remove_task(self._task)
        self._progress.stop()
        self._task = None


@contextmanager
def interrupt_on_terminate() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C (as `Terminated`), so a killed training run still writes its
    checkpoint and a grid stores the cells it has."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
