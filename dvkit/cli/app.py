"""The Typer application and its global options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit.cli import (
    base_commands,
    catalog_commands,
    compose_commands,
    export_commands,
    train_commands,
)

app = typer.Typer(
    name="dvkit",
    help="Customized video generation: train subject and motion adapters, compose, evaluate.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Catalog folder (default: $DVKIT_HOME, else the nearest registry/ upwards).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """dvkit: DreamVideo-style customized video generation with a local catalog."""
    ctx.obj = {"home": home}
    if version:
        from dvkit import __version__

        print(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())


catalog_commands.register(app)
train_commands.register(app)
export_commands.register(app)
compose_commands.register(app)
app.add_typer(base_commands.app, name="base", help="Base models: list and inspect.")
