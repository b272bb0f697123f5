"""Shared helpers of the commands: opening the catalog chosen by the global options, and the
sampler options that several commands take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit.catalog import Catalog


def home_option(ctx: typer.Context) -> Path | None:
    root = ctx.find_root()
    return (root.obj or {}).get("home")


def open_catalog(ctx: typer.Context) -> Catalog:
    return Catalog.open(home_option(ctx))


MotionUntilOption = Annotated[
    float | None,
    typer.Option(
        "--motion-until",
        help="Switch motion adapters off below this fraction of the noise schedule. "
        "Default 0: never (sprites: 0.4).",
    ),
]
OffsetNoiseOption = Annotated[
    float | None,
    typer.Option(
        "--offset-noise",
        help="Per-frame offset added to the starting noise, as the official inference. "
        "Default 0.1 (tiny, sprites: 0).",
    ),
]
