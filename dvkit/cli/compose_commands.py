"""`dvkit compose`: a subject doing a motion, written as MP4/GIF and recorded in the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    number,
    open_catalog,
    whole,
)
from dvkit.cli.help import CHOSEN_BASE_DEFAULT, described


def compose(
    ctx: typer.Context,
    subject: Annotated[
        str | None, typer.Option("--subject", help="Subject NAME or NAME@VERSION.")
    ] = None,
    motion: Annotated[
        str | None, typer.Option("--motion", help="Motion NAME or NAME@VERSION.")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help=described("Prompt.", "'a <token> <motion caption>'")),
    ] = None,
    negative_prompt: Annotated[
        str, typer.Option("--negative-prompt", help="Prompt of the unconditional branch.")
    ] = "",
    merged: Annotated[
        Path | None, typer.Option("--merged", help="A pair from dvkit export --merged.")
    ] = None,
    subject_scale: Annotated[
        float | None,
        typer.Option(
            "--subject-scale",
            parser=number(ranges.ADAPTER_SCALE),
            help=described("Subject adapter scale.", "the merged recipe's, else 1.0"),
        ),
    ] = None,
    motion_scale: Annotated[
        float | None,
        typer.Option(
            "--motion-scale",
            parser=number(ranges.ADAPTER_SCALE),
            help=described("Motion adapter scale.", "the merged recipe's, else 1.0"),
        ),
    ] = None,
    subject_step: Annotated[
        int | None,
        typer.Option(
            "--subject-step",
            parser=whole(ranges.AT_LEAST_ZERO),
            help="Use a kept training checkpoint.",
        ),
    ] = None,
    motion_step: Annotated[
        int | None,
        typer.Option(
            "--motion-step",
            parser=whole(ranges.AT_LEAST_ZERO),
            help="Use a kept training checkpoint.",
        ),
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            "--seed", parser=whole(ranges.SEED), help=described("Repeat for more videos.", "0")
        ),
    ] = None,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    frames: FramesOption = None,
    size: SizeOption = None,
    fps: Annotated[
        float,
        typer.Option("--fps", parser=number(ranges.FRAME_RATE), help="Frame rate of the files."),
    ] = 8.0,
    image_strength: Annotated[
        float | None,
        typer.Option(
            "--image-strength",
            parser=number(ranges.IMAGE_STRENGTH),
            help=described("Appearance-guidance λ.", "the merged recipe's, else 1.0"),
        ),
    ] = None,
    image_strength_uncond: UncondStrengthOption = None,
    guidance_image: Annotated[
        Path | None,
        typer.Option(
            "--guidance-image",
            help=described("Appearance-guidance image.", "the subject's first reference image"),
        ),
    ] = None,
    motion_until: MotionUntilOption = None,
    offset_noise: OffsetNoiseOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help=described("A .mp4/.gif file or a folder.", "the catalog's videos/")
        ),
    ] = None,
    video_format: Annotated[
        str, typer.Option("--format", help="mp4, gif or mp4,gif (for folder outputs).")
    ] = "mp4",
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help=described("Base when no adapter is given.", CHOSEN_BASE_DEFAULT)
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Generate videos of a subject doing a motion (either alone, or the bare base)."""
    from dvkit.cli.progress import RichReporter
    from dvkit.generate.compose import compose as run_compose
    from dvkit.train.loop import count_progress

    on_step = count_progress(RichReporter(unit="steps", loss=False), "sampling")

    with open_catalog(ctx, writing="record generated videos") as catalog:
        result = run_compose(
            subject, motion, prompt, catalog=catalog, base=base, merged=merged,
            subject_scale=subject_scale,
            motion_scale=motion_scale, subject_step=subject_step, motion_step=motion_step,
            seeds=seed or [0], negative_prompt=negative_prompt, steps=steps, guidance=guidance,
            frames=frames, size=size, fps=fps, image_strength=image_strength,
            image_strength_uncond=image_strength_uncond, guidance_image=guidance_image,
            motion_until=motion_until, offset_noise=offset_noise, out=out,
            formats=[f.strip() for f in video_format.split(",") if f.strip()], device=device,
            dtype=dtype, on_step=on_step,
        )  # fmt: skip
    print(f"prompt: {result.prompt}")
    print(f"settings: {render.sampler_settings(result.settings, result.seeds)}")
    for path in result.files:
        print(path)


COMMANDS = {"compose": compose}
