"""`dvkit base ...`: the base models known to the catalog."""

from __future__ import annotations

from typing import Annotated

import typer

from dvkit.cli import render
from dvkit.cli.catalog_commands import JsonOption
from dvkit.cli.context import open_catalog

app = typer.Typer(no_args_is_help=False)


@app.command("add")
def add_base(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name to register the base under.")],
    source: Annotated[
        str, typer.Argument(help="Hub id (e.g. ali-vilab/text-to-video-ms-1.7b) or local folder.")
    ],
) -> None:
    """Register a diffusers text-to-video base (UNet3DConditionModel) by Hub id or folder."""
    from dvkit.bases import add_base as add

    with open_catalog(ctx, writing="register bases") as catalog:
        record = add(catalog, name, source)
    print(
        f"added base {record.name} ({record.architecture}, {record.fingerprint[:12]}) from {source}"
    )


@app.command("list")
def list_bases(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List base models (built-in ones are registered on first use)."""
    from dvkit.models.builtin import BUILTIN_BASES

    with open_catalog(ctx) as catalog:
        rows = catalog.base_rows()
    known = {row["name"] for row in rows}
    rows += [
        {"name": name, "source": f"builtin:{name}", "architecture": "built-in", "fingerprint": "",
         "description": text}
        for name, text in BUILTIN_BASES.items() if name not in known
    ]  # fmt: skip
    if as_json:
        render.print_json(rows)
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
