"""Training commands: add-subject and add-motion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dvkit import ranges
from dvkit.cli.context import number, open_catalog, whole
from dvkit.cli.help import CHOSEN_BASE_DEFAULT, PRESET_DEFAULT, described
from dvkit.errors import DvkitError

Base = Annotated[
    str | None,
    typer.Option(
        "--base",
        help=described("Base model (see: dvkit base list).", CHOSEN_BASE_DEFAULT),
    ),
]
Preset = Annotated[
    str,
    typer.Option(
        "--preset",
        help="official (the paper's settings; for motions the official playingGuitar config: "
        "image dropout 0, 1000 steps, batch 2, λ_uncond 0), official-carturn (motions only: the "
        "official carTurn config: image dropout 0.5, 3000 steps, batch 1, λ_uncond 1) or quick "
        "(smoke runs).",
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[
    str, typer.Option("--dtype", help="Frozen base weights: auto, float32, float16, bfloat16.")
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run with the same inputs.")
]
Restart = Annotated[
    bool,
    typer.Option(
        "--restart",
        help="Discard the checkpoint of an interrupted run with the same inputs and start over.",
    ),
]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="Tag to add (repeatable).")]
Description = Annotated[str, typer.Option("--description", help="Free text shown by dvkit show.")]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        parser=whole(ranges.AT_LEAST_ONE),
        help=described("Samples per step.", PRESET_DEFAULT),
    ),
]
Resolution = Annotated[
    int | None,
    typer.Option(
        "--resolution",
        parser=whole(ranges.SIZE),
        help=described("Square size in pixels.", "the preset's, else the base's"),
    ),
]
Seed = Annotated[
    int | None,
    typer.Option("--seed", parser=whole(ranges.SEED), help=described("Training seed.", "0")),
]
HiddenRatio = Annotated[
    float | None,
    typer.Option(
        "--hidden-ratio",
        parser=number(ranges.HIDDEN_RATIO),
        help=described("Adapter width / C.", PRESET_DEFAULT),
    ),
]
AdapterType = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help=described(
            "What to train: dreamvideo (adapters) or lora (MotionDirector-style: spatial "
            "attention for subjects, temporal for motions).",
            "dreamvideo",
        ),
    ),
]
LoraRank = Annotated[
    int | None,
    typer.Option("--lora-rank", parser=whole(ranges.LORA_RANK), help=described("LoRA rank.", "4")),
]
LoraAlpha = Annotated[
    float | None,
    typer.Option(
        "--lora-alpha",
        parser=number(ranges.LORA_ALPHA),
        help=described("LoRA alpha (updates scale by alpha / rank).", "the rank"),
    ),
]
CheckpointEvery = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        parser=whole(ranges.AT_LEAST_ONE),
        help="Write a resumable checkpoint every N steps (kills lose less).",
    ),
]
GradientCheckpointing = Annotated[
    bool,
    typer.Option(
        "--gradient-checkpointing", help="Trade compute for memory (--memory checkpoint)."
    ),
]
Memory = Annotated[
    str | None,
    typer.Option(
        "--memory",
        help=described(
            "Memory modes, comma-separated: checkpoint (recompute blocks in the backward "
            "pass), fp8 (frozen denoiser stored in float8, computed in --dtype), offload "
            "(idle denoiser blocks on the CPU; implies checkpoint), or none.",
            "none",
        ),
    ),
]
HighNoiseShare = Annotated[
    float | None,
    typer.Option(
        "--high-noise-share",
        parser=number(ranges.FRACTION),
        help=described("Share of steps drawn from the high-noise band.", "0"),
    ),
]
Experts = Annotated[
    str | None,
    typer.Option(
        "--experts",
        help=described(
            "On a base with two experts (Wan 2.2 A14B): high, low or both (the high- and/or "
            "low-noise transformer gets adapters).",
            "both for subjects, high for motions",
        ),
    ),
]
HighNoiseBand = Annotated[
    tuple[float, float] | None,
    typer.Option(
        "--high-noise-band",
        parser=number(ranges.FRACTION),
        help=described("LOW HIGH: that band, as fractions of the schedule.", "0.5 1"),
    ),
]
TrainingOffsetNoise = Annotated[
    float | None,
    typer.Option(
        "--offset-noise",
        parser=number(ranges.OFFSET_NOISE),
        help=described(
            "Per-frame offset added to the training noise, as the official trainer.",
            "the base's",
        ),
    ),
]
KeepSteps = Annotated[
    str | None,
    typer.Option(
        "--keep-steps", help="Adapter steps kept as selectable checkpoints, e.g. 500,1000."
    ),
]


def add_subject(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new subject (or its next version).")],
    images: Annotated[
        list[Path], typer.Option("--images", help="Folder or image files (jpg, png, webp, ...).")
    ],
    more_images: Annotated[list[Path] | None, typer.Argument(hidden=True)] = None,
    masks: Annotated[
        Path | None, typer.Option("--masks", help="Folder of subject masks named like the images.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help=described("Placeholder.", "<NAME>"))
    ] = None,
    initializer: Annotated[
        str | None,
        typer.Option(
            "--initializer",
            help=described(
                "One-token word to start from.", "NAME, else the mean of its sub-tokens"
            ),
        ),
    ] = None,
    vectors: Annotated[
        int | None,
        typer.Option("--vectors", parser=whole(ranges.VECTORS), help="Vectors per token."),
    ] = None,
    from_embedding: Annotated[
        str | None,
        typer.Option(
            "--from-embedding",
            help="SUBJECT or FILE: take the token's vectors from an (imported) subject or a "
            "textual-inversion file, fixed; skip textual inversion and train only the identity "
            "adapter.",
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help=described("Template.", "'a {token}'"))
    ] = None,
    inversion_steps: Annotated[
        int | None,
        typer.Option(
            "--inversion-steps",
            parser=whole(ranges.AT_LEAST_ZERO),
            help=described("Textual-inversion steps.", PRESET_DEFAULT),
        ),
    ] = None,
    inversion_lr: Annotated[
        float | None,
        typer.Option(
            "--inversion-lr",
            parser=number(ranges.POSITIVE),
            help=described("Textual-inversion learning rate.", PRESET_DEFAULT),
        ),
    ] = None,
    identity_steps: Annotated[
        int | None,
        typer.Option(
            "--identity-steps",
            parser=whole(ranges.AT_LEAST_ZERO),
            help=described("Identity-adapter steps.", PRESET_DEFAULT),
        ),
    ] = None,
    identity_lr: Annotated[
        float | None,
        typer.Option(
            "--identity-lr",
            parser=number(ranges.POSITIVE),
            help=described("Identity-adapter learning rate.", PRESET_DEFAULT),
        ),
    ] = None,
    batch_size: BatchSize = None,
    resolution: Resolution = None,
    seed: Seed = None,
    hidden_ratio: HiddenRatio = None,
    adapter: AdapterType = None,
    lora_rank: LoraRank = None,
    lora_alpha: LoraAlpha = None,
    high_noise_share: HighNoiseShare = None,
    high_noise_band: HighNoiseBand = None,
    experts: Experts = None,
    offset_noise: TrainingOffsetNoise = None,
    keep_steps: KeepSteps = None,
    checkpoint_every: CheckpointEvery = None,
    gradient_checkpointing: GradientCheckpointing = False,
    memory: Memory = None,
    base: Base = None,
    preset: Preset = "official",
    device: Device = "auto",
    dtype: Dtype = "auto",
    resume: Resume = False,
    restart: Restart = False,
    tag: Tags = None,
    description: Description = "",
) -> None:
    """Learn a subject from 3-5 images: textual inversion, then the identity adapter (or only
    the identity adapter, on the vectors of --from-embedding)."""
    settings = {
        "token": token,
        "initializer": initializer,
        "num_vectors": vectors,
        "prompt": prompt,
        "inversion_steps": inversion_steps,
        "inversion_lr": inversion_lr,
        "identity_steps": identity_steps,
        "identity_lr": identity_lr,
        "batch_size": batch_size,
        "resolution": resolution,
        "seed": seed,
        "hidden_ratio": hidden_ratio,
        "adapter": adapter,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "high_noise_share": high_noise_share,
        "high_noise_band": high_noise_band,
        "experts": experts,
        "offset_noise": offset_noise,
        "keep_steps": _steps(keep_steps),
        "checkpoint_every": checkpoint_every,
        "gradient_checkpointing": gradient_checkpointing or None,
        "memory": memory,
    }
    _train(ctx, "subject", name, [*images, *(more_images or [])], base, preset, device, dtype,
           resume, restart, tag, description, settings, masks=masks,
           from_embedding=from_embedding)  # fmt: skip


def add_motion(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new motion (or its next version).")],
    videos: Annotated[
        list[Path],
        typer.Option("--videos", help="Folder or videos (mp4, webm, mov, gif, folders of frames)."),
    ],
    more_videos: Annotated[list[Path] | None, typer.Argument(hidden=True)] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            parser=whole(ranges.TRAINING_FRAMES),
            help=described("Frames per clip.", "the preset's, else the base's"),
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            "--fps",
            parser=number(ranges.POSITIVE),
            help=described("Sampling rate of the frames.", "the preset's, else the base's"),
        ),
    ] = None,
    clip_windows: Annotated[
        int | None,
        typer.Option(
            "--clip-windows",
            parser=whole(ranges.CLIP_WINDOWS),
            help="Windows kept per clip, starts spread over it; each step draws one.",
        ),
    ] = None,
    caption: Annotated[
        str | None, typer.Option("--caption", help=described("Training caption.", "the name"))
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            parser=whole(ranges.AT_LEAST_ONE),
            help=described("Motion-adapter steps.", PRESET_DEFAULT),
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            parser=number(ranges.POSITIVE),
            help=described("Learning rate.", PRESET_DEFAULT),
        ),
    ] = None,
    batch_size: BatchSize = None,
    resolution: Resolution = None,
    seed: Seed = None,
    hidden_ratio: HiddenRatio = None,
    adapter: AdapterType = None,
    lora_rank: LoraRank = None,
    lora_alpha: LoraAlpha = None,
    text_dropout: Annotated[
        float | None,
        typer.Option(
            "--text-dropout",
            parser=number(ranges.FRACTION),
            help=described("Probability of training without the caption.", PRESET_DEFAULT),
        ),
    ] = None,
    image_dropout: Annotated[
        float | None,
        typer.Option(
            "--image-dropout",
            parser=number(ranges.FRACTION),
            help=described("Probability of a zero appearance embedding.", PRESET_DEFAULT),
        ),
    ] = None,
    image_strength_uncond: Annotated[
        float | None,
        typer.Option(
            "--image-strength-uncond",
            parser=number(ranges.IMAGE_STRENGTH),
            help=described(
                "Appearance-guidance λ of the unconditional branch that compose and bench use "
                "with this motion.",
                "the preset's: official 0, official-carturn 1",
            ),
        ),
    ] = None,
    high_noise_share: HighNoiseShare = None,
    high_noise_band: HighNoiseBand = None,
    experts: Experts = None,
    offset_noise: TrainingOffsetNoise = None,
    image_encoder: Annotated[
        str | None,
        typer.Option(
            "--image-encoder",
            help=described(
                "open_clip MODEL:PRETRAINED, or tiny / sprites (offline).",
                "the base's: ViT-H-14:laion2b_s32b_b79k, tiny and sprites their own",
            ),
        ),
    ] = None,
    keep_steps: KeepSteps = None,
    checkpoint_every: CheckpointEvery = None,
    gradient_checkpointing: GradientCheckpointing = False,
    memory: Memory = None,
    base: Base = None,
    preset: Preset = "official",
    device: Device = "auto",
    dtype: Dtype = "auto",
    resume: Resume = False,
    restart: Restart = False,
    tag: Tags = None,
    description: Description = "",
) -> None:
    """Learn a motion from a few videos: motion adapters with appearance guidance."""
    settings = {
        "frames": frames,
        "fps": fps,
        "clip_windows": clip_windows,
        "caption": caption,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "resolution": resolution,
        "seed": seed,
        "hidden_ratio": hidden_ratio,
        "adapter": adapter,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "text_dropout": text_dropout,
        "image_dropout": image_dropout,
        "image_strength_uncond": image_strength_uncond,
        "high_noise_share": high_noise_share,
        "high_noise_band": high_noise_band,
        "experts": experts,
        "offset_noise": offset_noise,
        "image_encoder": image_encoder,
        "keep_steps": _steps(keep_steps),
        "checkpoint_every": checkpoint_every,
        "gradient_checkpointing": gradient_checkpointing or None,
        "memory": memory,
    }
    _train(ctx, "motion", name, [*videos, *(more_videos or [])], base, preset, device, dtype,
           resume, restart, tag, description, settings)  # fmt: skip


def _train(
    ctx: typer.Context,
    kind: str,
    name: str,
    inputs: list[Path],
    base: str,
    preset: str,
    device: str,
    dtype: str,
    resume: bool,
    restart: bool,
    tags: list[str] | None,
    description: str,
    settings: dict[str, Any],
    **extra: Any,
) -> None:
    from dvkit.cli.progress import RichReporter, interrupt_on_terminate
    from dvkit.train import api

    train = api.add_subject if kind == "subject" else api.add_motion
    with open_catalog(ctx, writing="register adapters") as catalog, interrupt_on_terminate():
        known = set(catalog.versions(name))  # a version returned from these is a duplicate
        record = train(
            name, inputs, catalog=catalog, base=base, preset=preset, device=device, dtype=dtype,
            resume=resume, restart=restart, reporter=RichReporter(estimate=True), tags=tags or (),
            description=description, notify=print, **extra, **settings,
        )  # fmt: skip
        run = catalog.run_row(record.run_id) if record.run_id else {}
        steps = sorted(catalog.checkpoint_steps(record.ref))
    from dvkit.distributed import current_world

    if not current_world().main:
        return
    if record.version in known:
        print(f"already in the catalog as {record.ref} (same weights): nothing new registered")
        return
    token = f", token {record.token}" if record.token else ""
    kept = f"; checkpoints at steps {', '.join(map(str, steps))}" if steps else ""
    print(
        f"registered {record.ref} ({record.kind}, base {record.base}{token}, "
        f"{record.params:,} parameters) in {run.get('wall_seconds', 0):.1f} s on "
        f"{run.get('device', '?')}{kept}"
    )
    if extra.get("from_embedding") is not None:
        print(f"token vectors: from {extra['from_embedding']} (kept fixed)")
    elif record.initializer:
        fallback = not settings.get("initializer") and record.initializer != name
        why = f" ({name} is not one token; --initializer WORD sets one)" if fallback else ""
        print(f"initializer: {record.initializer}{why}")


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise DvkitError(
            f"--keep-steps takes step numbers separated by commas, not {text!r}"
        ) from None


COMMANDS = {"add-subject": add_subject, "add-motion": add_motion}
