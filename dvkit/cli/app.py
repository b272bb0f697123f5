"""The Typer application and its global options.

Building every command's parameters costs Typer about 10 ms per command, so `build_app(name)`
builds only the command being run (and imports only its module); help and unknown commands
get the whole application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

COMMAND_MODULES = {
    "init": "catalog_commands",
    "where": "catalog_commands",
    "list": "catalog_commands",
    "show": "catalog_commands",
    "rm": "catalog_commands",
    "tag": "catalog_commands",
    "import": "catalog_commands",
    "export": "export_commands",
    "verify": "catalog_commands",
    "gc": "catalog_commands",
    "generations": "catalog_commands",
    "add-subject": "train_commands",
    "add-motion": "train_commands",
    "compose": "compose_commands",
    "score": "score_commands",
    "bench": "bench_commands",
    "demo": "demo_commands",
}
GROUPS = {
    "base": ("base_commands", "Base models: add, list and inspect."),
    "sprites": ("demo_commands", "The sprites world: list it, write stills and clips."),
}


def build_app(command: str | None = None) -> typer.Typer:
    """The CLI with only `command` (when known), else with every command."""
    import importlib

    app = typer.Typer(
        name="dvkit",
        help="Customized video generation: train subject and motion adapters, compose, evaluate.",
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback(invoke_without_command=True)(root)
    known = command in COMMAND_MODULES or command in GROUPS
    for name, module in COMMAND_MODULES.items():
        if not known or name == command:
            commands = importlib.import_module(f"dvkit.cli.{module}").COMMANDS
            app.command(name)(commands[name])
    for name, (module, text) in GROUPS.items():
        if not known or name == command:
            group = importlib.import_module(f"dvkit.cli.{module}").app
            app.add_typer(group, name=name, help=text)
    return app


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
        if home is not None:  # `dvkit --home bench`: the command was taken for the folder
            ctx.fail("Missing command.")
        print(ctx.get_help())
