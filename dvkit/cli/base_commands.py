"""`dvkit base ...`: the base models known to the catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from dvkit.cli import render
from dvkit.cli.catalog_commands import JsonOption
from dvkit.cli.context import open_catalog
from dvkit.cli.help import described
from dvkit.errors import NotFoundError

if TYPE_CHECKING:
    from dvkit.catalog import Catalog

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
            "--family",
            help=described("Base family (see dvkit base families).", "found from SOURCE"),
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
        import os

        with open_catalog(ctx) as catalog:
            current = catalog.default_base()
        print(current or "no default base (set one with: dvkit base default NAME)")
        if os.environ.get("DVKIT_BASE"):
            print(f"($DVKIT_BASE={os.environ['DVKIT_BASE']} is used instead while it is set)")
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
    """List base models: registered ones and the built-in ones (registered on first use)."""
    with open_catalog(ctx) as catalog:
        rows = _base_rows(catalog)
        default = catalog.default_base()
    if as_json:
        render.print_json(rows)
        return
    render.bases_table(rows)
    print("* default base (dvkit base default NAME)" if default else "no default base")


@app.command("show")
def show_base(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Base name.")],
    as_json: JsonOption = False,
) -> None:
    """Show one base model (a built-in one also before its first use)."""
    from dvkit.names import validate_name

    validate_name(name, "base name")
    with open_catalog(ctx) as catalog:
        rows = {row["name"]: row for row in _base_rows(catalog)}
    if name not in rows:
        raise NotFoundError(f"no base named {name!r} (see: dvkit base list)")
    row = rows[name]
    if as_json:
        render.print_json(row)
    else:
        render.details(row["name"], list(row.items()))


def _base_rows(catalog: Catalog) -> list[dict[str, Any]]:
    """The catalog's bases, then the built-in ones not used yet (no fingerprint), each with
    `default` telling whether it is the default base."""
    from dvkit.models.builtin import BUILTINS

    rows = catalog.base_rows()
    known = {row["name"] for row in rows}
    rows += [
        {"name": name, "source": f"builtin:{name}", "architecture": builtin.architecture,
         "fingerprint": "", "builtin": True, "description": builtin.description}
        for name, builtin in BUILTINS.items() if name not in known
    ]  # fmt: skip
    default = catalog.default_base()
    return [{**row, "default": row["name"] == default} for row in rows]
