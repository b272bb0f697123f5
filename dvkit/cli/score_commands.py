"""`dvkit score`: CLIP-T, CLIP-I, DINO-I and temporal consistency of any video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit.cli import render
from dvkit.evaluate.labels import METRICS, shown


def score(
    video: Annotated[Path, typer.Argument(help="mp4, webm, mov or gif file, or a frame folder.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="For CLIP-T.")] = None,
    references: Annotated[
        list[Path] | None,
        typer.Option("--references", help="Folder or images of the subject (CLIP-I, DINO-I)."),
    ] = None,
    clip: Annotated[
        str, typer.Option("--clip", help="open_clip MODEL:PRETRAINED, or tiny.")
    ] = "ViT-B-32:openai",
    dino: Annotated[
        str, typer.Option("--dino", help="timm model name, or tiny.")
    ] = "vit_small_patch16_224.dino",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score a video (made by dvkit or not) against a prompt and reference images. T. Cons. of
    a 1-frame video is n/a (null in --json)."""
    from dvkit.evaluate.score import score as run_score

    result = run_score(video, prompt, references, clip=clip, dino=dino, device=device)
    if as_json:
        render.print_json(result)
        return
    for key, label in METRICS.items():
        if key in result:
            print(f"{label:<11} {shown(result[key])}")


COMMANDS = {"score": score}
