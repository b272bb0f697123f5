"""Catalog commands: init, where, list, show, rm, tag, import, verify, gc, generations."""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dvkit import ranges
from dvkit.cli import render
from dvkit.cli.context import home_option, open_catalog, whole
from dvkit.cli.help import described
from dvkit.wording import plural

if TYPE_CHECKING:
    from dvkit.catalog import Catalog
    from dvkit.catalog.records import AdapterRecord

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Kind(str, Enum):
    subject = "subject"
    motion = "motion"


def init(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help=described("Folder to create.", "$DVKIT_HOME, else ./registry")),
    ] = None,
) -> None:
    """Create a catalog folder (or confirm an existing one)."""
    from dvkit.catalog import Catalog

    with Catalog.init(path if path is not None else home_option(ctx))[0] as catalog:
        note = f" (read-only here: {catalog.read_only_reason})" if catalog.read_only else ""
        print(f"catalog ready at {catalog.home}{note}")


def where(ctx: typer.Context) -> None:
    """Print the path of the catalog folder in use."""
    with open_catalog(ctx) as catalog:
        print(catalog.home)


def list_adapters(
    ctx: typer.Context,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only this kind.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Only adapters of this base.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only adapters with this tag (repeatable).")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="Text in name, description, token or tags.")
    ] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Every version, not only the newest per name.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            parser=whole(ranges.AT_LEAST_ZERO),
            help=described("At most this many.", "100 in a table, all with --json"),
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List adapters (newest version of each name)."""
    if limit is None and not as_json:
        limit = 100
    filters = (kind.value if kind else None, base, tag or (), search, all_versions)
    with open_catalog(ctx) as catalog:
        texts = catalog.adapter_json(*filters)
    if as_json:
        render.print_json_texts(texts[:limit] if limit else texts)
    elif texts:
        render.adapters_table([json.loads(text) for text in texts[: limit or None]], all_versions)
        if limit and len(texts) > limit:
            print(f"... and {len(texts) - limit} more (--limit 0 shows all)")
    else:
        print("no adapters match" if (kind or base or tag or search) else "no adapters yet")


def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    as_json: JsonOption = False,
) -> None:
    """Show one adapter version in full."""
    with open_catalog(ctx) as catalog:
        row = catalog.adapter_row(ref)
        row["checkpoints"] = sorted(catalog.checkpoint_steps(f"{row['name']}@{row['version']}"))
        run = catalog.run_row(row["run_id"]) if row.get("run_id") else None
        bases = {base["name"] for base in catalog.base_rows()}
        lora = row.get("method") == "lora"
        targets = _lora_layers(catalog.blobs.path(row["blob"])) if lora else _placement(row)
    if as_json:
        render.print_json(row)
        return
    base_note = "" if row["base"] in bases else " (not in this catalog)"
    fields: list[tuple[str, Any]] = [
        ("kind", row["kind"]),
        ("type", render.adapter_type(row)),
        ("alpha", row.get("alpha")),
        ("base", f"{row['base']} ({row['base_fingerprint'][:12]}){base_note}"),
        ("token", row.get("token")),
        ("initializer", row.get("initializer")),
        ("vectors", row.get("num_vectors")),
        ("parameters", f"{row['params']:,}"),
        ("size", render.human_size(row["size"])),
        ("hidden ratio", None if row.get("method") == "lora" else row.get("hidden_ratio")),
        ("targets" if lora else "placement", targets),
        ("tags", row["tags"]),
        ("description", row.get("description")),
        ("created", row["created"]),
        ("checkpoints", [f"step {step}" for step in row["checkpoints"]]),
        ("trained", _run_summary(run) if run else None),
        ("weights", row["weights_hash"]),
        ("blob", row["blob"]),
        ("training", row.get("training")),
    ]
    render.details(f"{row['name']}@{row['version']}", fields)


_LEVELS = re.compile(r"(down_blocks|up_blocks|mid_block|transformer_blocks)\.")
"""Path parts `show` leaves out of a LoRA's layers (where in the UNet, not what kind of layer)."""


def _lora_layers(path: Path) -> list[str]:
    """A LoRA's layers, read from its file's header (no torch): each layer's path without block
    indices and UNet levels (`unet.motion_modules.attn1.to_q`: which model, which container,
    which attention), with how many layers share it."""
    from collections import Counter

    from dvkit.io.safetensors_header import read_header

    suffix = ".lora_A.weight"
    layers = Counter(
        _LEVELS.sub("", re.sub(r"\.\d+(?=\.)", "", key.removesuffix(suffix)))
        for key in read_header(path).tensors
        if key.endswith(suffix)
    )
    return [f"{layer} ×{count}" if count > 1 else layer for layer, count in sorted(layers.items())]


def _placement(row: dict[str, Any]) -> Any:
    """The layers the adapters sit beside; a token-only subject has none."""
    if row["kind"] == "subject" and not row.get("placement"):
        return "none (token-only subject: its learned token and no identity adapter)"
    return row.get("placement")


def _run_summary(run: dict[str, Any]) -> str:
    finals = [
        f"{stage} {curve[-1][1]:.4f}"
        for stage, curve in run.get("loss_curves", {}).items()
        if curve
    ]
    loss = f"; final loss {', '.join(finals)}" if finals else ""
    return f"{run['wall_seconds']:.1f} s on {run['device']}{loss}"


def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@VERSION.")],
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Remove every version of NAME.")
    ] = False,
) -> None:
    """Remove an adapter version; its weights file goes when nothing else uses it."""
    with open_catalog(ctx, writing="remove adapters") as catalog:
        removed = catalog.rm(ref, all_versions=all_versions)
    print(f"removed {', '.join(removed)}")


def tag(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --remove).")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the tags instead.")] = False,
) -> None:
    """Add or remove tags of an adapter version."""
    with open_catalog(ctx, writing="change tags") as catalog:
        now = catalog.tag(ref, remove=tags) if remove else catalog.tag(ref, add=tags)
    print(f"{ref}: {', '.join(now) if now else 'no tags'}")


def import_files(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="dvkit adapter files (.safetensors), official DreamVideo checkpoints (.pth), "
            "textual-inversion embeddings (A1111 .pt/.safetensors, diffusers .bin/.safetensors) "
            "or LoRAs (diffusers/peft, kohya/ComfyUI .safetensors, AnimateDiff MotionLoRA .ckpt).",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help=described(
                "Register under this name (one file only).",
                "the file's own: its name, NAME in NAME_adapter_STEP.pth, an embedding's own",
            ),
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag to add (repeatable).")] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Replace the file's description.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base an official .pth adapter, an embedding or a LoRA was trained for "
            "(required).",
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="What an imported LoRA is: subject or motion (required)."),
    ] = None,
    embedding: Annotated[
        list[Path] | None,
        typer.Option(
            "--embedding",
            help="Official textual-inversion file (text_embedding_of_NAME_STEP.pth) of an "
            "identity adapter, or any textual-inversion file paired with a subject LoRA.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=described(
                "Token of an imported subject (one file only).",
                "dvkit files: their own (<NAME> when renamed); embeddings: <their own name>",
            ),
        ),
    ] = None,
    references: Annotated[
        list[Path] | None,
        typer.Option(
            "--references",
            help="Images (folder or files) of an imported subject: its guidance image when "
            "composed with a motion, and its references when scored.",
        ),
    ] = None,
) -> None:
    """Add adapter files to the catalog: dvkit files (name, kind and base from each header),
    official DreamVideo .pth checkpoints (mapped onto --base), textual-inversion embeddings
    (token-only subjects of --base) or LoRAs (a --kind of --base, a subject optionally with its
    --embedding). Formats are told apart by content."""
    from dvkit.errors import DvkitError
    from dvkit.io.embeddings import import_kind
    from dvkit.names import validate_name, validate_tag

    if name is not None and len(files) > 1:
        raise DvkitError("--name can only be used when importing one file")
    tags = [validate_tag(value) for value in tag or ()]
    if name is not None:
        validate_name(name)
    with open_catalog(ctx, writing="import adapters") as catalog:
        kinds = {file: import_kind(file) for file in files}
        loras = [file for file in files if kinds[file][0] == "lora"]
        official = [file for file in files if kinds[file][0] == "official"]
        learned = [found for _, found in kinds.values() if found is not None]
        own = [file for file in files if kinds[file][0] == "dvkit"]
        foreign = loras + official + [item.path for item in learned]
        if foreign and base is None:
            base = _import_base(catalog, foreign[0], loras, official)
        _check_import_options(official + loras, learned, own, base, embedding, token, references)
        others = [file for file in files if file not in loras]
        if kind is not None and others:
            raise DvkitError(
                f"{others[0]}: not a LoRA file; --kind applies to LoRA files only (other files "
                "say their kind)"
            )
        prepared = {}
        if loras:
            from dvkit.io.lora_import import prepare_lora_file

            if len(loras) > 1 and (name or embedding or token):
                raise DvkitError("--name, --embedding and --token apply to one LoRA at a time")
            (paired,) = embedding or [None]
            for file in loras:
                prepared[file] = prepare_lora_file(
                    catalog, file, kind=kind, base=base, name=name, embedding=paired,
                    token=token, description=description,
                )  # fmt: skip
        if official:
            from dvkit.io.vgen import prepare_vgen_files

            ready = prepare_vgen_files(
                catalog,
                official,
                base=base,
                embeddings=embedding or (),
                name=name,
                token=token,
                description=description,
                references=references or (),
            )
            prepared.update({item.source: item for item in ready})
        if learned:
            from dvkit.io.embeddings import prepare_embedding_files

            ready = prepare_embedding_files(
                catalog, learned, base=base, name=name, token=token, description=description,
                references=references or (),
            )  # fmt: skip
            prepared.update({item.source: item for item in ready})
        _check_own_files(catalog, own, name)
        done: list[str] = []
        for index, file in enumerate(files):
            try:
                result = _register_one(catalog, file, prepared, name, tags, description, token)
            except DvkitError as exc:
                raise _partly_imported(exc, done, files[index:]) from None
            ref = result.adapter.ref
            done.append(f"{file.name} as {ref}")
            if result.duplicate:
                print(f"{file}: already in the catalog as {ref} (same weights)")
            else:
                print(f"{file}: imported as {ref} ({_imported(result.adapter)})")


def _imported(adapter: AdapterRecord) -> str:
    """What an imported adapter is: kind, base and token (`token-only subject <t>, base b`)."""
    if adapter.kind == "subject" and not adapter.placement:
        return f"token-only subject {adapter.token}, base {adapter.base}"
    token = f", token {adapter.token}" if adapter.token else ""
    return f"{adapter.kind}, base {adapter.base}{token}"


def _register_one(
    catalog: Catalog,
    file: Path,
    prepared: dict[Path, Any],
    name: str | None,
    tags: list[str],
    description: str | None,
    token: str | None,
) -> Any:
    """Register one file of `dvkit import`: prepared (official, embedding) or a dvkit file."""
    if file in prepared:
        from dvkit.io.vgen import register_prepared

        return register_prepared(catalog, prepared[file], tags)
    return catalog.import_file(file, name=name, tags=tags, description=description, token=token)


def _partly_imported(exc: Exception, done: list[str], left: list[Path]) -> Exception:
    """Every file is checked before any is registered; a refusal while registering (e.g. a
    token that conflicts) names what was and was not imported."""
    if not done:
        return exc
    from dvkit.errors import DvkitError

    error = DvkitError(
        f"{exc}; imported before it: {', '.join(done)}; not imported: "
        f"{', '.join(path.name for path in left)}"
    )
    error.exit_code = getattr(exc, "exit_code", 1)
    return error


def _import_base(catalog: Any, file: Path, loras: list[Path], official: list[Path]) -> str:
    """The base foreign files (LoRAs, official checkpoints, embeddings) are imported onto when no
    --base is given: `$DVKIT_BASE` or the catalog's default base; otherwise a `DvkitError`
    saying the file needs --base."""
    from dvkit.bases import NoBaseError, choose_base
    from dvkit.errors import DvkitError

    if os.environ.get("DVKIT_BASE"):
        return choose_base(catalog, None)
    try:
        return choose_base(catalog, None)
    except NoBaseError:
        what = (
            "a LoRA file: importing it"
            if file in loras
            else "importing an official .pth checkpoint"
            if file in official
            else "a textual-inversion embedding, not a dvkit adapter file: importing it"
        )
        raise DvkitError(
            f"{file}: {what} needs --base NAME, the base it was trained for, or a default base "
            "(dvkit base default NAME; see: dvkit base list)"
        ) from None


def _check_import_options(
    official: list[Path],
    learned: list[Any],
    own: list[Path],
    base: str | None,
    embedding: list[Path] | None,
    token: str | None,
    references: list[Path] | None,
) -> None:
    """Refuse options that do not fit the kinds of files imported, before any work."""
    from dvkit.errors import DvkitError

    foreign = official or [item.path for item in learned]
    if token is not None and own and len(own) + len(official) + len(learned) > 1:
        raise DvkitError("--token can only be used when importing one dvkit file")
    if not foreign and (base or embedding or references):
        raise DvkitError(
            "--base, --embedding and --references apply to official .pth checkpoints and "
            "textual-inversion embeddings; dvkit files name their own base and carry their own "
            "images"
        )
    if embedding and not official:
        raise DvkitError(
            "--embedding pairs an official identity adapter .pth with its learned word; import "
            "an embedding on its own as a file (dvkit import FILE --base NAME)"
        )
    if learned and official and (token or references):
        raise DvkitError(
            "--token and --references apply to one imported subject: import embeddings and "
            "official checkpoints separately"
        )


def _check_own_files(catalog: Catalog, files: list[Path], name: str | None) -> None:
    """Check dvkit files before anything is registered (a merged export is named as such)."""
    if not files:
        return
    from dvkit.errors import AdapterFileError
    from dvkit.io.adapter_file import read_adapter_info
    from dvkit.io.export import is_merged_file

    for file in files:
        if is_merged_file(file):
            raise AdapterFileError(
                f"{file}: a merged subject + motion export; dvkit import takes single adapter "
                "files (export each with: dvkit export REF --out FILE)"
            )
        info = read_adapter_info(file)
        catalog.check_kind(name or info.name, info.kind)


def verify(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Re-hash every weights file; report missing, corrupt (naming their adapters) and orphan
    files, and training run folders left by interrupted runs."""
    from dataclasses import asdict

    with open_catalog(ctx) as catalog:
        report = catalog.verify()
    if as_json:
        render.print_json({"ok": report.ok, **asdict(report)})
    else:
        for label, items in (
            ("missing", report.missing),
            ("corrupt", report.corrupt),
            ("orphan", report.orphans),
            ("leftover temporary", report.temporaries),
            ("stale training run", report.stale_runs),
            ("interrupted training run", report.interrupted_runs),
        ):
            for item in items:
                print(f"{label}: {item}{_repair(report.owners.get(item))}")
        verdict = "ok" if report.ok else "problems found"
        hint = "" if report.ok or report.missing or report.corrupt else " (run: dvkit gc)"
        print(f"checked {plural(report.checked, 'weights file')}: {verdict}{hint}")
    if not report.ok:
        raise typer.Exit(1)


def generations(
    ctx: typer.Context,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            parser=whole(ranges.AT_LEAST_ZERO),
            help=described("At most this many, newest first (0: all).", "20 in the listing"),
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List past compositions (dvkit compose): adapters, prompt, seed, files and settings."""
    if limit is None:
        limit = 0 if as_json else 20
    with open_catalog(ctx) as catalog:
        rows = catalog.generations(limit or None)
    if as_json:
        render.print_json(rows)
    elif rows:
        render.generations(rows)
    else:
        print("no compositions yet (see: dvkit compose)")


def _repair(owners: list[str] | None) -> str:
    """How to repair a missing or corrupt weights file, naming the adapters it holds."""
    if owners is None:
        return ""
    if not owners:
        return " (no adapter uses it)"
    versions = sorted({owner.split(" ")[0] for owner in owners})
    return (
        f" (weights of {', '.join(owners)}: import the adapter's file again (dvkit import FILE), "
        f"or remove it: {'; '.join(f'dvkit rm {ref}' for ref in versions)})"
    )


def gc(ctx: typer.Context) -> None:
    """Delete orphan weights files, leftover temporary files and stale training run folders
    (no checkpoint, or untouched for a week)."""
    with open_catalog(ctx, writing="delete files") as catalog:
        report = catalog.gc()
    for item in report.removed:
        print(f"removed {item}")
    print(f"freed {render.human_size(report.freed_bytes)}")


COMMANDS = {
    "init": init,
    "where": where,
    "list": list_adapters,
    "show": show,
    "rm": rm,
    "tag": tag,
    "import": import_files,
    "verify": verify,
    "gc": gc,
    "generations": generations,
}
