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
        str,
        typer.Argument(
            help="Hub id (e.g. ali-vilab/text-to-video-ms-1.7b), local diffusers folder, or a "
            "single .safetensors checkpoint (Stable Diffusion 1.5, with --motion-adapter)."
        ),
    ],
    motion_adapter: Annotated[
        str | None,
        typer.Option(
            "--motion-adapter",
            help="AnimateDiff motion adapter (Hub id, folder or file, e.g. "
            "guoyww/animatediff-motion-adapter-v1-5-3): makes SOURCE an animatediff base.",
        ),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(
            "--family", help="Base family (default: found from SOURCE; see dvkit base families)."
        ),
    ] = None,
) -> None:
    """Register a base by Hub id, folder or checkpoint: a ModelScope / ZeroScope text-to-video
    model, or Stable Diffusion 1.5 with an AnimateDiff motion adapter."""
    from dvkit.bases import add_base as add

    with open_catalog(ctx, writing="register bases") as catalog:
        record = add(catalog, name, source, family, motion_adapter)
    print(
        f"added base {record.name} ({record.architecture}, {record.fingerprint[:12]}) from {source}"
    )


@app.command("default")
def default_base(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Base to make the default (omit to print the default).")
    ] = None,
) -> None:
    """Print or set the base that training and compose use when no --base is given."""
    if name is None:
        with open_catalog(ctx) as catalog:
            current = catalog.default_base()
        print(current or "no default base (set one with: dvkit base default NAME)")
        return
    from dvkit.bases import set_default_base

    with open_catalog(ctx, writing="set the default base") as catalog:
        set_default_base(catalog, name)
    print(f"default base: {name}")


@app.command("families")
def list_families(as_json: JsonOption = False) -> None:
    """List the base families dvkit knows, with their defaults and reference pipeline."""
    from dataclasses import asdict

    from dvkit.families import FAMILIES, family

    rows = []
    for name in FAMILIES:
        known = family(name)
        rows.append(
            {"name": name, "description": known.description,
             "pipeline": known.reference_pipeline, "defaults": asdict(known.defaults)}
        )  # fmt: skip
    if as_json:
        render.print_json(rows)
        return
    for row in rows:
        defaults = ", ".join(f"{key} {value}" for key, value in row["defaults"].items())
        print(f"{row['name']:<20} {row['description']}")
        print(f"{'':<20} reproduces {row['pipeline']}; defaults: {defaults}")


@app.command("list")
def list_bases(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List base models (built-in ones are registered on first use)."""
    from dvkit.models.builtin import BUILTINS

    with open_catalog(ctx) as catalog:
        rows = catalog.base_rows()
        default = catalog.default_base()
    known = {row["name"] for row in rows}
    rows += [
        {"name": name, "source": f"builtin:{name}", "architecture": builtin.architecture,
         "fingerprint": "", "description": builtin.description}
        for name, builtin in BUILTINS.items() if name not in known
    ]  # fmt: skip
    for row in rows:
        row["default"] = row["name"] == default
    if as_json:
        render.print_json(rows)
    else:
        for row in rows:
            name = f"{row['name']} *" if row["default"] else row["name"]
            fingerprint = row["fingerprint"][:12]
            print(f"{name:<20} {row['architecture']:<20} {fingerprint:<12}  {row['source']}")
        print("* default base (dvkit base default NAME)" if default else "no default base")


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
