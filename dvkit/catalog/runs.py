"""Training run folders (`<catalog>/runs/<kind>-<name>-<key>/`): which can be resumed, and
which are stale.

A run folder holds the checkpoints of a run that was interrupted (or is training now); it goes
when the run is registered. One whose run can be resumed (a stage's `state.pt` or `done.pt`)
and that changed within `STALE_AFTER` is kept by `gc`; the others (no checkpoint: killed before
the first; or untouched for a week) are stale: `verify` reports them and `gc` removes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.pt"
DONE_FILE = "done.pt"
STALE_AFTER = 7 * 24 * 3600
"""Seconds since a run folder last changed after which `gc` removes it."""


@dataclass
class RunFolder:
    path: Path
    resumable: bool
    idle_days: float

    @property
    def stale(self) -> bool:
        return not self.resumable or self.idle_days * 86400 > STALE_AFTER

    def describe(self) -> str:
        """`runs/NAME (why it is kept or stale)`."""
        where = f"runs/{self.path.name}"
        if not self.resumable:
            return f"{where} (no checkpoint to resume from)"
        idle = f"untouched for {self.idle_days:.0f} days" if self.idle_days >= 1 else "recent"
        return f"{where} ({idle}; run the same training command with --resume to continue it)"


def has_checkpoint(folder: Path) -> bool:
    """Whether a run folder holds a checkpoint to resume from (a stage's state or its end)."""
    return any(folder.glob(f"*/{STATE_FILE}")) or any(folder.glob(f"*/{DONE_FILE}"))


def run_folders(home: Path) -> list[RunFolder]:
    """The run folders of the catalog at `home`, by name."""
    runs = home / "runs"
    if not runs.is_dir():
        return []
    now = time.time()
    found = []
    for folder in sorted(path for path in runs.iterdir() if path.is_dir()):
        changed = max((p.stat().st_mtime for p in folder.rglob("*")), default=0.0)
        changed = max(changed, folder.stat().st_mtime)
        found.append(RunFolder(folder, has_checkpoint(folder), (now - changed) / 86400))
    return found
