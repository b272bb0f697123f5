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


MotionUntilOption = Annotated[
    float | None,
    typer.Option(
        "--motion-until",
        help="Switch motion adapters off below this fraction of the noise schedule. "
        "Default 0: never (sprites: 0.4).",
    ),
]
