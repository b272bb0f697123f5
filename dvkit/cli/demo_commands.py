"""`dvkit demo` and the `dvkit sprites` group: the sprites world from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dvkit import ranges
from dvkit.cli.context import whole
from dvkit.cli.help import BASE_DEFAULT, described
from dvkit.errors import DvkitError

app = typer.Typer(no_args_is_help=True)


def demo(
    folder: Annotated[
        Path, typer.Argument(help="Folder for the demo's data, catalog, videos and report.")
    ] = Path("dvkit-demo"),
    subject: Annotated[
        str, typer.Option("--subject", help="Held-out object, 'COLOUR \\[TEXTURE] SHAPE'.")
    ] = "orange triangle",
    motion: Annotated[
        str, typer.Option("--motion", help="Held-out motion: zigzag, orbit or bounce.")
    ] = "zigzag",
    seeds: Annotated[
        int, typer.Option("--seeds", parser=whole(ranges.AT_LEAST_ONE), help="Seeds per grid cell.")
    ] = 4,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            parser=whole(ranges.SAMPLING_STEPS),
            help=described("Sampling steps.", BASE_DEFAULT),
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    base: Annotated[
        str,
        typer.Option(
            "--base", help="sprites (3D UNet) or sprites-wan (Wan transformer, flow matching)."
        ),
    ] = "sprites",
) -> None:
    """Train a held-out subject and motion on a built-in sprites base, compose them and
    score a grid with the baselines (about 10 minutes on a laptop CPU). Re-runs reuse what
    is done; an interrupted training resumes."""
    from dvkit.cli.progress import RichReporter, interrupt_on_terminate
    from dvkit.sprites.demo import run_demo

    with interrupt_on_terminate():
        result = run_demo(
            folder, subject=subject, motion=motion, seeds=seeds, steps=steps, device=device,
            base=base, reporter=RichReporter(), on_stage=lambda text: print(f"· {text}"),
            grid_reporter=RichReporter(unit="cells", loss=False),
        )  # fmt: skip
    _print_roles(result.roles)
    for video in result.videos:
        print(f"video:  {video}")
    print(f"report: {result.report}")


def _print_roles(roles: dict[str, dict[str, float | None]]) -> None:
    from dvkit.evaluate.labels import METRICS

    keys = ("gt_subject", "gt_colour", "gt_motion", "gt_t_cons")
    print(f"{'ROLE':<8}" + "".join(f"{METRICS[key]:>13}" for key in keys))
    for role in ("base", "subject", "motion", "joint"):
        if role in roles:
            values = (roles[role].get(key) for key in keys)
            print(f"{role:<8}" + "".join(f"{'-' if v is None else f'{v:.3f}':>13}" for v in values))


@app.command("list")
def list_world() -> None:
    """Colours, shapes, textures and motions of the sprites world; * marks held-out ones."""
    from dvkit.sprites import world

    for label, names, held_out in (
        ("colours", world.COLOURS, world.HELD_OUT_COLOURS),
        ("shapes", world.SHAPES, world.HELD_OUT_SHAPES),
        ("textures", world.TEXTURES, ()),
        ("motions", world.MOTIONS, world.HELD_OUT_MOTIONS),
    ):
        shown = ", ".join(f"{name}*" if name in held_out else name for name in names)
        print(f"{label:<9} {shown}")


@app.command("images")
def images(
    subject: Annotated[str, typer.Argument(help="Object, 'COLOUR \\[TEXTURE] SHAPE'.")],
    out: Annotated[Path, typer.Argument(help="Folder to write PNG stills into.")],
    count: Annotated[
        int, typer.Option("--count", parser=whole(ranges.AT_LEAST_ONE), help="Stills to write.")
    ] = 5,
    seed: Annotated[
        int, typer.Option("--seed", parser=whole(ranges.SEED), help="Seed of the random places.")
    ] = 0,
) -> None:
    """Write stills of one object at random places (training data for add-subject)."""
    from dvkit.sprites.files import write_images

    paths = write_images(_sprite(subject), out, count, seed)
    print(f"wrote {len(paths)} images to {out}")


@app.command("clips")
def clips(
    motion: Annotated[str, typer.Argument(help="Motion name (see: dvkit sprites list).")],
    out: Annotated[Path, typer.Argument(help="Folder to write GIF clips into.")],
    count: Annotated[
        int, typer.Option("--count", parser=whole(ranges.AT_LEAST_ONE), help="Clips to write.")
    ] = 6,
    seed: Annotated[
        int, typer.Option("--seed", parser=whole(ranges.SEED), help="Seed of the random places.")
    ] = 0,
    subject: Annotated[
        str | None,
        typer.Option(
            "--object", help=described("One object for every clip.", "varied seen objects")
        ),
    ] = None,
) -> None:
    """Write clips of one motion from random starts (training data for add-motion)."""
    from dvkit.sprites.files import write_clips
    from dvkit.sprites.world import MOTIONS

    if motion not in MOTIONS:
        raise DvkitError(f"unknown motion {motion!r} (known: {', '.join(MOTIONS)})")
    paths = write_clips(motion, out, count, seed, _sprite(subject) if subject else None)
    print(f"wrote {len(paths)} clips to {out}")


def _sprite(text: str):  # noqa: ANN202 - a Sprite; the import stays lazy
    from dvkit.sprites.world import Sprite

    try:
        return Sprite.parse(text)
    except ValueError as exc:
        raise DvkitError(str(exc)) from None


COMMANDS = {"demo": demo}
