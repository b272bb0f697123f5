"""Which frames of a clip motion training reads: a bounded pool of windows (DESIGN §1).

The official trainer takes a random window of `frames` frames from each clip at every step.
dvkit keeps up to `clip_windows` windows per clip, with start times spread evenly from the
clip's start to the last start at which a whole window still fits, and every training step
draws one of them (`dvkit.train.motion`). So at most `clip_windows × frames` frames of a clip
are kept, however long it is.

Windows are sampled in time: sample j of a window starting at s is the frame on screen at
s + j / fps, so a variable frame rate is followed and a source slower than `fps` repeats frames.
Without `fps`, or in a folder of frames (which has no clock), a window is `frames` consecutive
frames. A clip shorter than one window gives one window from its start, zero-padded after its
real frames, as the official trainer pads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dvkit.io.clips import Timeline


@dataclass(frozen=True)
class WindowPlan:
    """The windows kept of one clip.

    `frames` (U,): the clip's frame indices some window uses, ascending and distinct;
    `windows` (K, F): positions in `frames`, −1 where a window is padded.
    """

    frames: np.ndarray
    windows: np.ndarray

    @property
    def real_frames(self) -> int:
        """Real (not padded) frames of the shortest window."""
        return int((self.windows >= 0).sum(axis=1).min())


def plan_windows(timeline: Timeline, frames: int, fps: float | None, count: int) -> WindowPlan:
    """Up to `count` windows of `frames` frames (at `fps`, or consecutive without it), their
    starts spread evenly over the clip; identical windows are kept once."""
    if fps and timeline.timed:
        last_start = max(0.0, timeline.end - frames / fps)
        starts = np.linspace(0.0, last_start, count)
        at = starts[:, None] + np.arange(frames) / fps
        index = np.where(at < timeline.end, timeline.on_screen(at), -1)
    else:
        total = len(timeline)
        starts = np.rint(np.linspace(0, max(0, total - frames), count)).astype(np.int64)
        index = starts[:, None] + np.arange(frames)
        index = np.where(index < total, index, -1)
    index = np.unique(index, axis=0)
    used = np.unique(index[index >= 0])
    positions = np.where(index >= 0, np.searchsorted(used, index), -1)
    return WindowPlan(frames=used, windows=positions)
