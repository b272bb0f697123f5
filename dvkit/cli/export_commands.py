"""The export command: one adapter version as a standalone file, or a subject + motion pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit import ranges
from dvkit.cli import render
from dvkit.cli.context import number, open_catalog, whole
from dvkit.cli.help import BASE_DEFAULT, MOTION_UNCOND_DEFAULT, described
from dvkit.errors import DvkitError
from dvkit.models.builtin import DEFAULT_IMAGE_STRENGTH


def export(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="File to write (must end in .safetensors)."),
    ] = None,
    ref: Annotated[
        str | None, typer.Argument(help="NAME or NAME@VERSION (not with --merged).")
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            parser=whole(ranges.AT_LEAST_ZERO),
            help="A kept checkpoint instead of the final weights.",
        ),
    ] = None,
    merged: Annotated[
        bool,
        typer.Option("--merged", help="One file holding --subject and --motion and a recipe."),
    ] = False,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject REF.")] = None,
    motion: Annotated[str | None, typer.Option("--motion", help="Motion REF.")] = None,
    subject_step: Annotated[
        int | None,
        typer.Option(
            "--subject-step",
            parser=whole(ranges.AT_LEAST_ZERO),
            help="Kept checkpoint of the subject.",
        ),
    ] = None,
    motion_step: Annotated[
        int | None,
        typer.Option(
            "--motion-step",
            parser=whole(ranges.AT_LEAST_ZERO),
            help="Kept checkpoint of the motion.",
        ),
    ] = None,
    subject_scale: Annotated[
        float | None,
        typer.Option(
            "--subject-scale",
            parser=number(ranges.ADAPTER_SCALE),
            help=described("Subject adapter scale.", "1.0"),
        ),
    ] = None,
    motion_scale: Annotated[
        float | None,
        typer.Option(
            "--motion-scale",
            parser=number(ranges.ADAPTER_SCALE),
            help=described("Motion adapter scale.", "1.0"),
        ),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance",
            parser=number(ranges.GUIDANCE_SCALE),
            help=described("Classifier-free guidance scale.", BASE_DEFAULT),
        ),
    ] = None,
    image_strength: Annotated[
        float | None,
        typer.Option(
            "--image-strength",
            parser=number(ranges.IMAGE_STRENGTH),
            help=described("Appearance-guidance strength λ.", f"{DEFAULT_IMAGE_STRENGTH}"),
        ),
    ] = None,
    image_strength_uncond: Annotated[
        float | None,
        typer.Option(
            "--image-strength-uncond",
            parser=number(ranges.IMAGE_STRENGTH),
            help=described(
                "λ of the unconditional branch (zero embedding).", MOTION_UNCOND_DEFAULT
            ),
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            parser=whole(ranges.SAMPLING_STEPS),
            help=described("Sampling steps.", BASE_DEFAULT),
        ),
    ] = None,
    motion_until: Annotated[
        float | None,
        typer.Option(
            "--motion-until",
            parser=number(ranges.FRACTION),
            help=described(
                "Switch the motion adapter off below this fraction of the noise schedule.",
                BASE_DEFAULT,
            ),
        ),
    ] = None,
    offset_noise: Annotated[
        float | None,
        typer.Option(
            "--offset-noise",
            parser=number(ranges.OFFSET_NOISE),
            help=described("Per-frame offset added to the starting noise.", BASE_DEFAULT),
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Layout of a single export: dvkit, or for LoRAs diffusers (peft names, "
            "pipe.load_lora_weights) or comfyui (kohya lora_unet_* names).",
        ),
    ] = "dvkit",
    into_base: Annotated[
        Path | None,
        typer.Option(
            "--into-base",
            help="With --merged: write a diffusers folder of the base with the LoRA --subject "
            "and --motion fused at their scales and the subject's token added.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write an adapter version as a standalone .safetensors file (a LoRA also in the diffusers
    or ComfyUI layout), or (--merged) a subject and a motion with their composition recipe in
    one file, or (--merged --into-base) LoRAs fused into a copy of their base."""
    pair_options = {
        "--subject": subject,
        "--motion": motion,
        "--subject-step": subject_step,
        "--motion-step": motion_step,
        "--subject-scale": subject_scale,
        "--motion-scale": motion_scale,
        "--guidance": guidance,
        "--image-strength": image_strength,
        "--image-strength-uncond": image_strength_uncond,
        "--steps": steps,
        "--motion-until": motion_until,
        "--offset-noise": offset_noise,
    }
    if into_base is not None:
        _export_into_base(ctx, merged, into_base, out, pair_options, force)
        return
    if merged and fmt != "dvkit":
        raise DvkitError(
            "--format applies to single exports: a merged export is a dvkit file (or, with "
            "--into-base, a diffusers folder)"
        )
    if out is None:
        raise DvkitError("give the file to write with --out FILE")
    if not merged:
        used = [option for option, value in pair_options.items() if value is not None]
        if used:
            raise DvkitError(f"{used[0]} applies to merged exports only (add --merged)")
        if ref is None:
            raise DvkitError("name the adapter to export (dvkit export REF --out FILE)")
        from dvkit.io.export import check_out_path, export_adapter

        check_out_path(out, force)
        with open_catalog(ctx) as catalog:
            if fmt == "dvkit":
                result = export_adapter(catalog, ref, out, step=step, overwrite=force)
            else:
                from dvkit.io.lora_export import export_lora

                result = export_lora(catalog, ref, out, fmt, step=step, overwrite=force)
    else:
        if ref is not None or step is not None:
            raise DvkitError(
                "a merged export takes --subject REF and --motion REF (and --subject-step, "
                "--motion-step), not REF or --step"
            )
        if subject is None or motion is None:
            raise DvkitError("a merged export needs both --subject REF and --motion REF")
        from dvkit.io.export import check_out_path, export_merged

        check_out_path(out, force)
        with open_catalog(ctx) as catalog:
            result = export_merged(
                catalog,
                subject,
                motion,
                out,
                subject_step=subject_step,
                motion_step=motion_step,
                subject_scale=1.0 if subject_scale is None else subject_scale,
                motion_scale=1.0 if motion_scale is None else motion_scale,
                guidance_scale=guidance,
                image_strength=DEFAULT_IMAGE_STRENGTH if image_strength is None else image_strength,
                image_strength_uncond=image_strength_uncond,
                steps=steps,
                motion_until=motion_until,
                offset_noise=offset_noise,
                overwrite=force,
            )
    print(
        f"exported {' + '.join(result.refs)} to {result.path} "
        f"({render.human_size(result.size)}, weights {result.weights_hash[:14]}…)"
    )
    if result.embedding is not None:
        print(f"its token's embedding to {result.embedding} (pipe.load_textual_inversion)")


def _export_into_base(
    ctx: typer.Context,
    merged: bool,
    folder: Path,
    out: Path | None,
    options: dict[str, object],
    force: bool,
) -> None:
    """`--merged --into-base FOLDER`: the LoRA subject and motion fused into their base."""
    if not merged:
        raise DvkitError("--into-base writes a merged base: add --merged")
    allowed = ("--subject", "--motion", "--subject-scale", "--motion-scale")
    used = [option for option, value in options.items() if value is not None]
    other = [option for option in used if option not in allowed]
    if out is not None or other:
        raise DvkitError(
            f"{'--out' if out is not None else other[0]} does not apply to --into-base "
            "(it takes --subject, --motion and their scales)"
        )
    parts = [
        (kind, str(options[f"--{kind}"]), _scale(options[f"--{kind}-scale"]))
        for kind in ("subject", "motion")
        if options[f"--{kind}"] is not None
    ]
    if not parts:
        raise DvkitError("--into-base needs --subject REF and/or --motion REF")
    from dvkit.io.lora_export import export_into_base

    with open_catalog(ctx) as catalog:
        fused = export_into_base(catalog, folder, parts, overwrite=force)
    print(f"fused {' + '.join(fused)} into a copy of their base at {folder}")


def _scale(given: object) -> float:
    return 1.0 if given is None else float(given)  # type: ignore[arg-type]


COMMANDS = {"export": export}
