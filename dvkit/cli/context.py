"""Shared helpers of the commands: opening the catalog chosen by the global options."""

from __future__ import annotations

from pathlib import Path

import typer

from dvkit.catalog import Catalog


def home_option(ctx: typer.Context) -> Path | None:
    root = ctx.find_root()
    return (root.obj or {}).get("home")


def open_catalog(ctx: typer.Context) -> Catalog:
    return Catalog.open(home_option(ctx))
