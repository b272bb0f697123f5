"""`dvkit base ...`: the base models known to the catalog."""

from __future__ import annotations

from typing import Annotated

import typer

from dvkit.cli import render
from dvkit.cli.catalog_commands import JsonOption
from dvkit.cli.context import open_catalog

app = typer.Typer(no_args_is_help=False)


@app.command("list")
def list_bases(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List base models."""
    with open_catalog(ctx) as catalog:
        rows = catalog.base_rows()
    if as_json:
        render.print_json(rows)
    elif not rows:
        print("no bases yet")
    else:
        for row in rows:
            fingerprint = row["fingerprint"][:12]
            print(f"{row['name']:<20} {row['architecture']:<20} {fingerprint}  {row['source']}")


@app.command("show")
def show_base(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Base name.")],
    as_json: JsonOption = False,
) -> None:
    """Show one base model."""
    with open_catalog(ctx) as catalog:
        row = catalog.base_row(name)
    if as_json:
        render.print_json(row)
    else:
        render.details(row["name"], list(row.items()))
