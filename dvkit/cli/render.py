"""Rendering for the terminal (rich, imported lazily) and for `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dvkit.wording import plural


def print_json(value: Any) -> None:
    """Objects indented; lists one compact element per line (C encoder: fast for big lists)."""
    if isinstance(value, list):
        print_json_texts([json.dumps(item, default=str) for item in value])
    else:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def print_json_texts(texts: list[str]) -> None:
    """A JSON array of already-encoded elements, one per line."""
    sys.stdout.write("[\n" + ",\n".join(texts) + "\n]\n" if texts else "[]\n")


def human_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def human_count(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:.2f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}K"
    return str(count)


def console():  # noqa: ANN201 - rich is imported lazily
    from rich.console import Console

    return Console(highlight=False)


def adapters_table(rows: list[dict[str, Any]], all_versions: bool) -> None:
    """Adapters, one line each. Names, numbers and dates are never cut; a description takes the
    width that is left and ends in "…" when it does not fit (`dvkit show` has it whole); in a
    terminal with no room for it, the column is left out and a last line says so. A TYPE
    column (DV or LoRA) appears when any of them is a LoRA, in the room of the TAGS column
    when none has tags."""
    from rich.table import Table
    from rich.text import Text

    out = console()
    typed = any(row.get("method") == "lora" for row in rows)
    fields = _adapter_fields(all_versions, typed, any(row["tags"] for row in rows) or not typed)
    columns = [column for column, _ in fields]
    cells = [[get(row) for _, get in fields] for row in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    room = out.width - sum(width + 2 for width in widths) - 1
    described = any(row.get("description") for row in rows)
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    inline = described and room >= len("DESCRIPTION")
    if inline:
        table.add_column("DESCRIPTION", no_wrap=True, overflow="ellipsis", max_width=room)
    for row, values in zip(rows, cells, strict=True):
        description = row.get("description", "")
        table.add_row(*(Text(cell) for cell in values), *([Text(description)] if inline else []))
    out.print(table)
    if described and not inline:
        out.print("(descriptions: a wider terminal, or dvkit show NAME)")


def _adapter_fields(
    all_versions: bool, typed: bool, tagged: bool
) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The list's columns: header and the cell of a row."""

    def name(row: dict[str, Any]) -> str:
        text = f"{row['name']}@{row['version']}"
        if not all_versions and row.get("versions", 1) > 1:
            text += f" ({row['versions']} versions)"
        return text

    fields: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("NAME", name),
        ("KIND", lambda row: row["kind"]),
        ("TYPE", lambda row: "LoRA" if row.get("method") == "lora" else "DV"),
        ("BASE", lambda row: row["base"]),
        ("PARAMS", lambda row: human_count(row["params"])),
        ("SIZE", lambda row: human_size(row["size"])),
        ("TAGS", lambda row: ", ".join(row["tags"])),
        ("CREATED", lambda row: str(row["created"])[:10]),
    ]
    left_out = {"TYPE"} if not typed else set()
    left_out |= {"TAGS"} if not tagged else set()
    return [field for field in fields if field[0] not in left_out]


def adapter_type(row: dict[str, Any]) -> str:
    """`dreamvideo`, or `lora, rank R` (a LoRA and its largest rank)."""
    if row.get("method") == "lora":
        return f"lora, rank {row.get('rank')}"
    return "dreamvideo"


def bases_table(rows: list[dict[str, Any]]) -> None:
    """Bases with their family, fingerprint and source, each with its description on the next
    line (so that narrow terminals do not squeeze it); the default one marked `*`."""
    print(f"{'NAME':<20} {'FAMILY':<18} {'FINGERPRINT':<12}  SOURCE")
    for row in rows:
        name = f"{row['name']} *" if row.get("default") else row["name"]
        fingerprint = row["fingerprint"][:12] or "(first use)"
        print(f"{name:<20} {row['architecture']:<18} {fingerprint:<12}  {row['source']}")
        if row.get("description"):
            print(f"    {row['description']}")


def details(title: str, fields: list[tuple[str, Any]]) -> None:
    """A two-column key/value view; empty values are left out."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False, title=title, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in fields:
        if value not in (None, "", [], {}):
            table.add_row(key, Text(_plain(value)))
    console().print(table)


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def sampler_settings(settings: dict[str, Any], seeds: Sequence[int]) -> str:
    """One line of the sampler settings a video was made with (`compose`, `generations`)."""
    parts = [
        f"base {settings.get('base', '?')}",
        plural(settings.get("steps", 0), "step"),
        f"guidance {settings.get('guidance_scale')}",
        plural(settings.get("frames", 0), "frame"),
        f"{settings.get('width')}×{settings.get('height')}",
        f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}",
        f"offset noise {settings.get('offset_noise')}",
        f"motion until {settings.get('motion_until')}",
    ]
    return ", ".join(parts)


def generations(rows: list[dict[str, Any]]) -> None:
    """Each generation on its own lines: id, time, adapters, seed and prompt; its files; its
    settings (readable in a narrow terminal)."""
    for row in rows:
        made = " + ".join(ref for ref in (row.get("subject"), row.get("motion")) if ref)
        when = str(row["created"])[:16].replace("T", " ")
        print(f"#{row['id']}  {when}  {made or 'base only'}  seed {row['seed']}  {row['prompt']!r}")
        for path in row.get("files", []):
            print(f"    {path}")
        print(f"    {sampler_settings(row.get('sampler', {}), [row['seed']])}")
