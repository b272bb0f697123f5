"""`dvkit demo`: the whole method on a sprites base (`sprites`, the UNet, by default, or
`sprites-wan`, the Wan transformer), on a laptop CPU, in a fresh catalog.

It generates stills of a held-out object and clips of a held-out motion, trains a subject and
a motion adapter on them, composes the two, and runs a grid with the baselines (base alone,
subject only, motion only) scored with the ground-truth metrics. Every stage that finished is
reused when the demo runs again in the same folder, and an interrupted training resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dvkit.errors import DvkitError
from dvkit.sprites.world import HELD_OUT_MOTIONS, MOTION_PHRASES, Sprite, caption

if TYPE_CHECKING:
    from dvkit.catalog import Catalog
    from dvkit.train.loop import Reporter

SUBJECT_TRAINING = {
    "resolution": 16,
    "batch_size": 4,
    "inversion_steps": 150,
    "inversion_lr": 1e-2,
    "identity_steps": 400,
    "identity_lr": 2e-3,
    "offset_noise": 0.0,
    "high_noise_share": 1.0,
    "high_noise_band": (0.2, 0.6),
    "checkpoint_every": 50,
}
MOTION_TRAINING = {
    "resolution": 16,
    "batch_size": 2,
    "frames": 8,
    "steps": 300,
    "lr": 1e-2,
    "offset_noise": 0.0,
    "image_dropout": 0.5,
    "image_strength_uncond": 1.0,  # composed as trained: with image dropout, as carTurn
    "high_noise_share": 1.0,
    "high_noise_band": (0.65, 0.9),
    "checkpoint_every": 50,
}
IMAGES, CLIPS = 5, 6
SCORERS = {"clip": "tiny", "dino": "tiny"}


@dataclass
class DemoResult:
    """What the demo made: its catalog, adapters, composed videos and grid report."""

    folder: Path
    subject: str
    motion: str
    videos: list[Path]
    report: Path
    roles: dict[str, dict[str, float | None]] = field(default_factory=dict)
    training: dict[str, dict] = field(default_factory=dict)


def run_demo(
    folder: str | Path = "dvkit-demo",
    subject: str = "orange triangle",
    motion: str = "zigzag",
    seeds: int = 4,
    steps: int | None = None,
    device: str = "auto",
    base: str = "sprites",
    reporter: Reporter | None = None,
    on_stage: Callable[[str], None] | None = None,
    grid_reporter: Reporter | None = None,
) -> DemoResult:
    """Run the demo in `folder` (created if needed) and return what it made.

    `steps` sets the sampler's steps (default: the base's 25); `reporter` shows training steps,
    and grid cells too unless `grid_reporter` is given; `on_stage(text)` hears each stage
    start.
    """
    sprite, folder = _check(subject, motion, seeds, base), Path(folder)
    from dvkit.catalog import Catalog
    from dvkit.evaluate.grid import bench
    from dvkit.evaluate.report import summarise, write_report
    from dvkit.generate.compose import compose
    from dvkit.sprites.files import write_clips, write_images
    from dvkit.train.api import add_motion, add_subject
    from dvkit.train.loop import TrainingInterrupted, count_progress

    say = on_stage or (lambda text: None)
    phrase = MOTION_PHRASES[motion]
    say(f"generating {IMAGES} stills of {caption(sprite, None)} and {CLIPS} clips {phrase}")
    images = write_images(sprite, folder / "data" / "subject", IMAGES)
    clips = write_clips(motion, folder / "data" / "motion", CLIPS)
    catalog, _ = Catalog.init(folder / "registry")
    with catalog:
        subject_name, motion_name = sprite.words.replace(" ", "-"), motion
        for ref in (subject_name, motion_name):
            if catalog.versions(ref) and (other := catalog.show(ref).base) != base:
                raise DvkitError(
                    f"{folder} holds a demo on base {other}; run --base {base} in another folder"
                )
        try:
            if not catalog.versions(subject_name):
                say(f"training subject {subject_name} (initializer word: {sprite.shape})")
                add_subject(
                    subject_name, images, catalog=catalog, base=base, device=device,
                    initializer=sprite.shape,
                    resume=_interrupted(catalog, "subject", subject_name), reporter=reporter,
                    **SUBJECT_TRAINING,
                )  # fmt: skip
            if not catalog.versions(motion_name):
                say(f"training motion {motion_name} (caption: {MOTION_PHRASES[motion]})")
                add_motion(
                    motion_name, clips, catalog=catalog, base=base, device=device,
                    caption=MOTION_PHRASES[motion],
                    resume=_interrupted(catalog, "motion", motion_name), reporter=reporter,
                    **MOTION_TRAINING,
                )  # fmt: skip
        except TrainingInterrupted as exc:  # the demo resumes by itself when run again
            raise TrainingInterrupted(
                exc.stage, exc.step, exc.total, again="the same dvkit demo command again"
            ) from None
        say("composing the subject with the motion")
        (folder / "videos").mkdir(exist_ok=True)
        composed = compose(
            subject_name, motion_name, catalog=catalog, seeds=[0], out=folder / "videos",
            formats=("gif",), steps=steps, device=device, record=False,
        )  # fmt: skip
        say(f"evaluating the grid: 4 roles × {seeds} seeds")
        grid = bench(
            catalog, [subject_name], [motion_name], seeds=range(seeds), steps=steps, device=device,
            on_cell=count_progress(cells, "grid") if (cells := grid_reporter or reporter) else None,
            **SCORERS,
        )  # fmt: skip
        report = write_report(grid.rows, folder / "report")
        training = {
            ref: catalog.run_row(catalog.show(ref).run_id or 0)
            for ref in (subject_name, motion_name)
        }
    return DemoResult(
        folder=folder,
        subject=subject_name,
        motion=motion_name,
        videos=composed.files,
        report=report.html,
        roles=summarise(grid.rows)["roles"],
        training={ref: _training_summary(row) for ref, row in training.items()},
    )


def _check(subject: str, motion: str, seeds: int, base: str) -> Sprite:
    from dvkit.sprites.base import SPRITES_BASES

    if base not in SPRITES_BASES:
        raise DvkitError(
            f"the demo runs on a sprites base: {' or '.join(SPRITES_BASES)}, not {base!r}"
        )
    try:
        sprite = Sprite.parse(subject)
    except ValueError as exc:
        raise DvkitError(str(exc)) from None
    if not sprite.held_out:
        raise DvkitError(
            f"{subject!r} is seen in the base's training; the demo teaches a held-out object "
            "(colour orange or purple, or shape ring), e.g. 'orange triangle'"
        )
    if motion not in HELD_OUT_MOTIONS:
        raise DvkitError(f"the demo teaches a held-out motion: {', '.join(HELD_OUT_MOTIONS)}")
    if seeds < 1:
        raise DvkitError("--seeds must be at least 1")
    return sprite


def _interrupted(catalog: Catalog, kind: str, name: str) -> bool:
    """Whether an interrupted training run of this adapter waits to be resumed."""
    runs = catalog.home / "runs"
    return runs.is_dir() and any(runs.glob(f"{kind}-{name}-*"))


def _training_summary(run: dict) -> dict:
    return {key: run.get(key) for key in ("device", "wall_seconds", "settings") if key in run}
