"""`dvkit bench`: evaluate every subject × motion (with baselines) and show the scores."""

from __future__ import annotations

import os
import shutil
import textwrap
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
        str,
        typer.Option(
            "--shard",
            help="i/n: this process's part of the grid (processes of one host; across GPUs "
            "and hosts run under torchrun or accelerate launch instead).",
        ),
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
    rank_timeout: Annotated[
        int,
        typer.Option(
            "--rank-timeout",
            parser=whole(ranges.AT_LEAST_ONE),
            help="Under torchrun or accelerate launch: seconds without word from a rank "
            "before the grid stops.",
        ),
    ] = 60,
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
    --report, reports the stored cells; options not given match any. Under torchrun or
    accelerate launch the ranks share the grid; only rank 0 opens the catalog."""
    from dvkit.cli.progress import RichReporter, interrupt_on_terminate
    from dvkit.distributed import SINGLE_PROCESS, current_world, launched_size
    from dvkit.evaluate.grid import bench as run_bench
    from dvkit.evaluate.grid import serve
    from dvkit.evaluate.ranks import share
    from dvkit.train.loop import count_progress

    world = SINGLE_PROCESS
    if launched_size() > 1 and not report_only:
        try:
            if _shard(shard) != (0, 1):
                raise DvkitError(
                    "--shard splits a grid over processes of one host; under torchrun or "
                    "accelerate launch the ranks split it: give no --shard"
                )
        except DvkitError as exc:
            if os.environ.get("RANK", "0") != "0":  # rank 0 says it, once for all
                raise typer.Exit(exc.exit_code) from None
            raise
        world = current_world("gloo")  # messages are CPU objects: gloo, whatever the devices
        if not world.main:
            with interrupt_on_terminate():
                serve(world)
            return
    elif launched_size() > 1 and os.environ.get("RANK", "0") != "0":
        return  # a report is rank 0's alone
    writing = None  # --report --out FOLDER only reads the catalog
    if not report_only:
        writing = "store the grid's videos and scores"
    elif out is None:
        writing = "write the report into it (--out FOLDER writes it elsewhere)"
    try:
        templates = _templates(prompts) if prompts else None
        catalog = open_catalog(ctx, writing)
    except BaseException:
        if world.size > 1:
            share(world, None)  # the other ranks wait for a grid: there is none
        raise
    reporter = RichReporter(unit="cells", loss=False)
    with catalog, interrupt_on_terminate():
        try:
            result = run_bench(
                catalog, subject, motion, templates, seed, base=base, baselines=baselines,
                shard=_shard(shard), batch_size=batch_size, steps=steps, guidance=guidance,
                frames=frames, size=size, motion_until=motion_until, offset_noise=offset_noise,
                image_strength_uncond=image_strength_uncond, clip=clip, dino=dino,
                device=device, dtype=dtype, generate=not report_only,
                on_cell=count_progress(reporter, "cells"), world=world,
                rank_timeout=rank_timeout,
            )  # fmt: skip
        finally:
            reporter.end()  # an error or Ctrl-C ends the bar, so its line shows
        from dvkit.evaluate.report import write_report

        report = write_report(result.rows, out or catalog.home / "reports" / "grid")
    if as_json:
        render.print_json(result.rows)
        return
    from dvkit.evaluate.report import by_base, describe_settings

    width = shutil.get_terminal_size().columns
    for name, rows in by_base(result.rows).items():
        print("\n".join(textwrap.wrap(f"base {name}: {describe_settings(rows)}", width,
                                       subsequent_indent="  ")))  # fmt: skip
        for line in table_lines(rows, width):
            print(line)
        for line in extreme_lines(rows):
            print(line)
        print()
    print(f"{result.cells} cells: {result.generated} generated, {result.skipped} already scored")
    print(f"report: {report.html}")


KEY_COLUMNS = ("SUBJECT", "MOTION", "ROLE", "N")
GAP = 2
"""Spaces between columns."""


def table_lines(rows: list[dict[str, Any]], width: int) -> list[str]:
    """Mean scores per subject × motion pair and role, as text lines of at most `width`
    characters where the names allow: every value in full (n/a where a metric does not apply);
    metrics that do not fit beside the names go to a further block of the same rows."""
    from dvkit.evaluate.report import summarise

    columns = present([row["metrics"] for row in rows])
    pairs = summarise(rows)["pairs"]
    keys = [[p["subject"], p["motion"], p["role"], str(p["count"])] for p in pairs]
    key_widths = [max(len(h), *(len(k[i]) for k in keys)) for i, h in enumerate(KEY_COLUMNS)]
    values = {key: [shown(p[key]) for p in pairs] for key in columns}
    metric_widths = {key: max(len(label), *map(len, values[key])) for key, label in columns.items()}
    room = width - sum(key_widths) - GAP * (len(key_widths) - 1)
    lines: list[str] = []
    for block in _blocks(list(columns), metric_widths, room):
        if lines:
            lines.append("")
        header = [h.ljust(w) for h, w in zip(KEY_COLUMNS, key_widths, strict=True)]
        header += [columns[key].rjust(metric_widths[key]) for key in block]
        lines.append((" " * GAP).join(header).rstrip())
        for index, key_cells in enumerate(keys):
            cells = [c.ljust(w) for c, w in zip(key_cells, key_widths, strict=True)]
            cells += [values[key][index].rjust(metric_widths[key]) for key in block]
            lines.append((" " * GAP).join(cells).rstrip())
    return lines


def _blocks(keys: list[str], widths: dict[str, int], room: int) -> list[list[str]]:
    """`keys` in order, split into runs whose columns (each after a gap) fit in `room`; each
    run holds at least one."""
    blocks: list[list[str]] = [[]]
    used = 0
    for key in keys:
        needed = GAP + widths[key]
        if blocks[-1] and used + needed > room:
            blocks.append([])
            used = 0
        blocks[-1].append(key)
        used += needed
    return blocks


def extreme_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The best and worst cell for each metric over every role, each naming its role, pair,
    prompt template and seed."""
    lines = []
    for key, label in present([row["metrics"] for row in rows]).items():
        scored = [row for row in rows if row["metrics"].get(key) is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda row: row["metrics"][key])
        worst = min(scored, key=lambda row: row["metrics"][key])
        lines.append(f"{label:<11} best  {_cell(best, key)}")
        lines.append(f"{'':<11} worst {_cell(worst, key)}")
    return lines


def _cell(row: dict[str, Any], key: str) -> str:
    sampler = row["sampler"]
    subject, motion = sampler["pair"]
    return (
        f"{row['metrics'][key]:7.4f} {sampler['role']:<7} {subject} × {motion}, seed {row['seed']}"
    )


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
