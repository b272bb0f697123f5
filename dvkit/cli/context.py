"""Shared helpers of the commands: opening the catalog chosen by the global options, the
parser of every float option, and the sampler options that several commands take.

Every float option of every command is parsed by `number(RANGE)`, with a range from
`dvkit.ranges` (the library checks values against the same ranges):

    from dvkit.cli.context import number
    from dvkit.ranges import FRACTION

    text_dropout: Annotated[
        float | None, typer.Option("--text-dropout", parser=number(FRACTION))
    ] = None

A `tuple[float, float]` option parses each element with it. NaN, infinities (`inf`,
`1e999`) and numbers outside the range are refused while the command line is parsed, before
any catalog or model is opened, as one line naming the option (`error: Invalid value for
'--guidance': 'nan' is not a finite number from 0 to 100`); `--help` shows the range as the
option's metavar.
`tests/test_float_options.py` walks every command and fails for a float option declared any
other way.

Every int option is parsed by `whole(RANGE)` the same way, with a `Whole` range from
`dvkit.ranges` (`--frames 0`, `--seed -1` and `--size 1.5` are refused while parsing);
`tests/test_int_options.py` walks every command for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit.catalog import Catalog
from dvkit.cli.help import BASE_DEFAULT, MOTION_UNCOND_DEFAULT, described
from dvkit.ranges import (
    FRACTION,
    FRAMES,
    GUIDANCE_SCALE,
    IMAGE_STRENGTH,
    OFFSET_NOISE,
    SAMPLING_STEPS,
    SIZE,
    Range,
    Whole,
)


def home_option(ctx: typer.Context) -> Path | None:
    root = ctx.find_root()
    return (root.obj or {}).get("home")


def open_catalog(ctx: typer.Context, writing: str | None = None) -> Catalog:
    """The catalog chosen by `--home` / DVKIT_HOME / the nearest registry/.

    A command that writes to it names what it does in `writing` ("import adapters"): on a
    catalog this process cannot write, it is refused before any work starts. Reading commands
    pass nothing and work on read-only catalogs too.
    """
    catalog = Catalog.open(home_option(ctx))
    if writing is not None:
        try:
            catalog.require_writable(writing)
        except BaseException:
            catalog.close()
            raise
    return catalog


class FiniteFloat:
    """Parser of a float option: the number, or `typer.BadParameter` for text that is not a
    number in `bounds` (NaN and infinities never are)."""

    def __init__(self, bounds: Range) -> None:
        self.bounds = bounds
        self.__name__ = bounds.notation()  # the metavar shown by --help

    def __call__(self, text: str | float) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if value not in self.bounds:
            raise typer.BadParameter(f"{text!r} is not {self.bounds.describe()}")
        return value


def number(bounds: Range) -> FiniteFloat:
    """The parser of a float option whose values lie in `bounds`."""
    return FiniteFloat(bounds)


class WholeNumber:
    """Parser of an int option: the number, or `typer.BadParameter` for text that is not a
    whole number in `bounds`."""

    def __init__(self, bounds: Whole) -> None:
        self.bounds = bounds
        self.__name__ = bounds.notation()  # the metavar shown by --help

    def __call__(self, text: str | int) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not a whole number") from None
        if value not in self.bounds:
            raise typer.BadParameter(f"{text!r} is not {self.bounds.describe()}")
        return value


def whole(bounds: Whole) -> WholeNumber:
    """The parser of an int option whose values lie in `bounds`."""
    return WholeNumber(bounds)


MotionUntilOption = Annotated[
    float | None,
    typer.Option(
        "--motion-until",
        parser=number(FRACTION),
        help=described(
            "Switch motion adapters off below this fraction of the noise schedule (0: never).",
            BASE_DEFAULT,
        ),
    ),
]
OffsetNoiseOption = Annotated[
    float | None,
    typer.Option(
        "--offset-noise",
        parser=number(OFFSET_NOISE),
        help=described(
            "Per-frame offset added to the starting noise, as the official inference.",
            BASE_DEFAULT,
        ),
    ),
]
StepsOption = Annotated[
    int | None,
    typer.Option(
        "--steps",
        parser=whole(SAMPLING_STEPS),
        help=described("DDIM sampling steps.", BASE_DEFAULT),
    ),
]
GuidanceOption = Annotated[
    float | None,
    typer.Option(
        "--guidance",
        parser=number(GUIDANCE_SCALE),
        help=described("Classifier-free guidance scale.", BASE_DEFAULT),
    ),
]
FramesOption = Annotated[
    int | None,
    typer.Option(
        "--frames",
        parser=whole(FRAMES),
        help=described("Frames per video.", "the motion's training frames, else the base's"),
    ),
]
SizeOption = Annotated[
    int | None,
    typer.Option(
        "--size",
        parser=whole(SIZE),
        help=described(
            "Height and width in pixels.", "the adapters' training size, else the base's"
        ),
    ),
]
UncondStrengthOption = Annotated[
    float | None,
    typer.Option(
        "--image-strength-uncond",
        parser=number(IMAGE_STRENGTH),
        help=described(
            "Appearance-guidance λ of the unconditional branch (zero embedding).",
            MOTION_UNCOND_DEFAULT,
        ),
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="Base weights: auto, float32, float16 or bfloat16.")
]
