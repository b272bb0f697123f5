"""`dvkit bench`: evaluate every subject × motion (with baselines) and show the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dvkit import ranges
from dvkit.cli import render
from dvkit.cli.context import (
    DeviceOption,
    DtypeOption,
    FramesOption,
    GuidanceOption,
    MotionUntilOption,
    OffsetNoiseOption,
    SizeOption,
    StepsOption,
    UncondStrengthOption,
    open_catalog,
    whole,
)
from dvkit.cli.help import described
from dvkit.errors import DvkitError
from dvkit.evaluate.labels import present, shown


def bench(
    ctx: typer.Context,
    subject: Annotated[
        list[str] | None,
        typer.Option("--subject", help=described("Subject REF (repeatable).", "every subject")),
    ] = None,
    motion: Annotated[
        list[str] | None,
        typer.Option("--motion", help=described("Motion REF (repeatable).", "every motion")),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help=described("Only the adapters of this base.", "every base, grouped")
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help=described(
                "File of templates with {subject} and {motion}, one a line.",
                "'a {subject} {motion}'",
            ),
        ),
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            "--seed", parser=whole(ranges.SEED), help=described("Repeat for more seeds.", "0")
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines/--no-baselines", help="Also subject only, motion only and the bare base."
        ),
    ] = True,
    shard: Annotated[
        str, typer.Option("--shard", help="i/n: this process's part of the grid.")
    ] = "0/1",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", parser=whole(ranges.AT_LEAST_ONE), help="Videos per UNet batch."
        ),
    ] = 4,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    frames: FramesOption = None,
    size: SizeOption = None,
    motion_until: MotionUntilOption = None,
    offset_noise: OffsetNoiseOption = None,
    image_strength_uncond: UncondStrengthOption = None,
    clip: Annotated[
        str | None,
        typer.Option(
            "--clip",
            help=described("open_clip MODEL:PRETRAINED, or tiny (offline).", "ViT-B-32:openai"),
        ),
    ] = None,
    dino: Annotated[
        str | None,
        typer.Option(
            "--dino",
            help=described("timm model, or tiny (offline).", "vit_small_patch16_224.dino"),
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    report_only: Annotated[
        bool, typer.Option("--report", help="Only rebuild the report from stored results.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help=described("Report folder.", "the catalog's reports/grid")),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every cell as JSON.")] = False,
) -> None:
    """Generate, score and store the subject × motion grid; re-runs skip scored cells.
    Writes a report: CSV, JSON, heatmap PNGs and an HTML page with every cell's GIF. With
    --report, reports the stored cells; options not given match any."""
    from dvkit.cli.progress import RichReporter
    from dvkit.evaluate.grid import bench as run_bench
    from dvkit.train.loop import count_progress

    templates = _templates(prompts) if prompts else None
    on_cell = count_progress(RichReporter(), "cells")

    writing = None  # --report --out FOLDER only reads the catalog
    if not report_only:
        writing = "store the grid's videos and scores"
    elif out is None:
        writing = "write the report into it (--out FOLDER writes it elsewhere)"
    with open_catalog(ctx, writing) as catalog:
        result = run_bench(
            catalog, subject, motion, templates, seed, baselines=baselines,
            shard=_shard(shard), batch_size=batch_size, steps=steps, guidance=guidance,
            frames=frames, size=size, motion_until=motion_until, offset_noise=offset_noise,
            image_strength_uncond=image_strength_uncond, clip=clip, dino=dino,
            device=device, dtype=dtype, generate=not report_only, on_cell=on_cell,
        )  # fmt: skip
        from dvkit.evaluate.report import encoders, write_report

        report = write_report(result.rows, out or catalog.home / "reports" / "grid")
    if as_json:
        render.print_json(result.rows)
        return
    _table(result.rows)
    _extremes(result.rows)
    print(f"{result.cells} cells: {result.generated} generated, {result.skipped} already scored")
    if result.rows:
        print(f"scored with {', '.join(encoders(result.rows))}")
    print(f"report: {report.html}")


def _table(rows: list[dict[str, Any]]) -> None:
    """Mean scores per subject × motion pair and role; n/a where a metric does not apply."""
    from rich.table import Table

    from dvkit.evaluate.report import summarise

    columns = present([row["metrics"] for row in rows])
    table = Table(box=None, header_style="bold")
    for column in ("SUBJECT", "MOTION", "ROLE", "N", *columns.values()):
        table.add_column(column)
    for pair in summarise(rows)["pairs"]:
        cells = [shown(pair[key]) for key in columns]
        table.add_row(pair["subject"], pair["motion"], pair["role"], str(pair["count"]), *cells)
    render.console().print(table)


def _extremes(rows: list[dict[str, Any]]) -> None:
    """The best and worst joint cell for each metric."""
    joint = [row for row in rows if row["sampler"]["role"] == "joint"]
    for key, label in present([row["metrics"] for row in joint]).items():
        scored = [row for row in joint if row["metrics"].get(key) is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda row: row["metrics"][key])
        worst = min(scored, key=lambda row: row["metrics"][key])
        print(f"{label:<9} best {_cell(best, key)}   worst {_cell(worst, key)}")


def _cell(row: dict[str, Any], key: str) -> str:
    subject, motion = row["sampler"]["pair"]
    return f"{row['metrics'][key]:.4f} {subject} × {motion} seed {row['seed']}"


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or int(count) < 1:
        raise DvkitError(f"--shard takes i/n, e.g. 0/4, not {text!r}")
    return int(index), int(count)


def _templates(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise DvkitError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise DvkitError(f"prompts file {path} has no templates")
    return templates


COMMANDS = {"bench": bench}
