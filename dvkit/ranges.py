"""The meaningful range of each number a user gives dvkit, and the one check of it.

NaN and infinities are never valid (DESIGN §8): `nan` or `inf` as a guidance scale or an
adapter scale samples NaN latents, which decode to a black video. A `Range` holds only finite
numbers between its bounds. The library checks values with `Range.check` (compose's options,
`SamplerSettings`, merged exports); the CLI declares every float option with
`dvkit.cli.context.number(RANGE)`, which refuses the same values while parsing, naming
the option. Training settings are pydantic models with `allow_inf_nan=False` and their own field
bounds (`dvkit/train/settings.py`); their CLI options use the ranges below that equal them.

Whole-number options (steps, seeds, frames, sizes, counts) have a `Whole` range the same way:
the CLI parses them with `dvkit.cli.context.whole(RANGE)`, the library checks them with
`Whole.check` (`tests/test_int_options.py` walks every command for them).

Light: standard library only (the CLI builds its option types from these before any command
runs).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from dvkit.errors import DvkitError


@dataclass(frozen=True)
class Range:
    """Finite numbers from `low` to `high` (either may be None: unbounded on that side);
    `low_open` leaves `low` itself out."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """'a finite number from 0 to 1', 'a finite number above 0', ..."""
        if self.low is not None and self.high is not None:
            above = f"above {self.low:g} and up to" if self.low_open else f"from {self.low:g} to"
            return f"a finite number {above} {self.high:g}"
        if self.low is not None:
            return f"a finite number {'above' if self.low_open else 'of at least'} {self.low:g}"
        if self.high is not None:
            return f"a finite number of at most {self.high:g}"
        return "a finite number"

    def notation(self) -> str:
        """'0<=x<=1', '0<x', 'x' (as --help shows it)."""
        low = "" if self.low is None else f"{self.low:g}{'<' if self.low_open else '<='}"
        high = "" if self.high is None else f"<={self.high:g}"
        return f"{low}x{high}"

    def check(self, what: str, value: object) -> float:
        """`value` as a float if it is a real number in this range, else a `DvkitError` naming
        `what` (e.g. "guidance scale" or "--guidance")."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value not in self:
            raise DvkitError(f"{what} must be {self.describe()}, not {value!r}")
        return float(value)


FRACTION = Range(0, 1)
"""Probabilities, shares of steps and fractions of the noise schedule."""
POSITIVE = Range(0, low_open=True)
"""Learning rates, and the rate at which training clips are sampled (frames per second)."""
HIDDEN_RATIO = Range(0, 4, low_open=True)
"""Adapter hidden width / channels (DreamVideo: 0.5)."""
LORA_ALPHA = Range(0, 1024, low_open=True)
"""A trained LoRA's alpha (its update is scaled by alpha / rank; peft's default alpha: 8)."""
ADAPTER_SCALE = Range(-10, 10)
"""Weight of an adapter's output at sampling: 1 as trained, 0 off, negative subtracts it;
beyond ±10 it swamps the base's own features."""
GUIDANCE_SCALE = Range(0, 100)
"""Classifier-free guidance (DreamVideo: 9; at most 1 samples the conditional branch alone)."""
IMAGE_STRENGTH = Range(0, 10)
"""Appearance-guidance λ of either branch (DreamVideo: 1 and 1, or 1 and 0)."""
OFFSET_NOISE = Range(0, 1)
"""Strength of the per-frame constant added to noise, in training and at sampling (DreamVideo:
0.1); beyond 1 it outweighs the noise itself."""
FRAME_RATE = Range(0.1, 240)
"""Frames per second of a written video (a GIF frame lasts at most 655 s)."""


@dataclass(frozen=True)
class Whole:
    """Whole numbers from `low` to `high` (None: unbounded above)."""

    low: int
    high: int | None = None

    def __contains__(self, value: int) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)

    def describe(self) -> str:
        """'a whole number from 1 to 256', 'a whole number of at least 0'."""
        if self.high is None:
            return f"a whole number of at least {self.low}"
        return f"a whole number from {self.low} to {self.high}"

    def notation(self) -> str:
        """'1<=n<=256', '0<=n' (as --help shows it)."""
        return f"{self.low}<=n" + ("" if self.high is None else f"<={self.high}")

    def check(self, what: str, value: object) -> int:
        """`value` if it is an int in this range, else a `DvkitError` naming `what`."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in self:
            raise DvkitError(f"{what} must be {self.describe()}, not {value!r}")
        return int(value)


MAX_FRAMES = 256
"""Longest video dvkit samples or trains on (the official bases make 16 or 32 frames; longer
videos exhaust memory long before they mean anything to a model trained on short clips)."""
SEED = Whole(0, 2**32 - 1)
"""Random seeds (numpy's and most tools' range)."""
SAMPLING_STEPS = Whole(1, 1000)
"""DDIM steps (at most the 1000 training timesteps of the schedules dvkit's bases use)."""
FRAMES = Whole(1, MAX_FRAMES)
"""Frames of a sampled video."""
TRAINING_FRAMES = Whole(2, MAX_FRAMES)
"""Frames per training clip (motion learning needs at least two)."""
SIZE = Whole(8, 2048)
"""Height and width in pixels, of sampling and training; the base's own multiple is checked
once it is open (`dvkit.generate.sampler.check_size`)."""
AT_LEAST_ONE = Whole(1)
"""Batch sizes, counts, steps between checkpoints, training steps of a motion."""
AT_LEAST_ZERO = Whole(0)
"""Training steps of a stage that may be skipped, checkpoint steps, `--limit` (0: all)."""
LORA_RANK = Whole(1, 256)
"""Rank of a trained LoRA."""
VECTORS = Whole(1, 16)
"""Vectors per learned token."""
CLIP_WINDOWS = Whole(1, 256)
"""Windows kept per training clip."""
