"""Built-in bases that need no download, and sampling defaults. Light: importable without
torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dvkit.errors import DvkitError
from dvkit.ranges import OFFSET_NOISE

if TYPE_CHECKING:
    from dvkit.models.components import BaseComponents


@dataclass(frozen=True)
class BuiltinBase:
    """A base that ships with dvkit: built from code (and shipped weights), never downloaded."""

    description: str
    architecture: str
    """Its family."""
    builder: str
    """`module:function` that builds its components."""
    sampling: dict[str, float] = field(default_factory=dict)
    """Its own sampling defaults, over its family's."""
    image_encoder: str = "tiny"
    """The offline image encoder its motion adapters are trained with (see
    `dvkit.models.image_encoder`)."""


# Built-in bases were trained without offset noise, so they start from plain Gaussian noise;
# the tiny ones' VAE does not downsample, so they work at 16×16 (256 would mean attention over
# 65,536 tokens); tiny-wan's VAE is Wan's (8×, 4× in time), so it works at 32×32 and 9 frames
# (3 latent frames of 2×2 patches).
# On sprites a motion is laid out above timestep 400: motion adapters stop there, so that the
# last steps draw the object's own look (see `SamplerSettings.motion_until`); its other
# defaults are its family's.
BUILTINS: dict[str, BuiltinBase] = {
    "tiny": BuiltinBase(
        "tiny random components for tests and smoke runs (meaningless pictures)",
        "modelscope-t2v",
        "dvkit.models.tiny:build_tiny_base",
        {"offset_noise": 0.0, "size": 16},
    ),
    "tiny-animatediff": BuiltinBase(
        "tiny random AnimateDiff components for tests and smoke runs (meaningless pictures)",
        "animatediff",
        "dvkit.models.tiny_animatediff:build_tiny_animatediff_base",
        {"size": 16},
    ),
    "tiny-wan": BuiltinBase(
        "tiny random Wan 2.1-shaped components for tests and smoke runs (meaningless pictures)",
        "wan",
        "dvkit.models.tiny_wan:build_tiny_wan_base",
        {"size": 32, "frames": 9, "train_frames": 9},
    ),
    "tiny-wan22": BuiltinBase(
        "tiny-wan with Wan 2.2 A14B's two experts (high- and low-noise transformers)",
        "wan",
        "dvkit.models.tiny_wan:build_tiny_wan22_base",
        {"size": 32, "frames": 9, "train_frames": 9},
    ),
    "sprites": BuiltinBase(
        "16×16 pixel-space model of the sprites world (coloured shapes moving over black)",
        "sprites-pixel-t2v",
        "dvkit.sprites.base:build_sprites_base",
        image_encoder="sprites",
    ),
    "sprites-wan": BuiltinBase(
        "16×16 pixel-space Wan transformer of the sprites world (flow matching)",
        "sprites-pixel-wan",
        "dvkit.sprites.base:build_sprites_wan_base",
        image_encoder="sprites",
    ),
}
DEFAULT_IMAGE_STRENGTH = 1.0
"""Appearance-guidance λ of the conditional branch when none is given (the official inference's)."""
DEFAULT_IMAGE_STRENGTH_UNCOND = 1.0
"""Appearance-guidance λ of the unconditional branch for motion adapters that record none
(imported ones, and those trained before dvkit recorded it): the official inference's default."""


def sampling_default(base: str, key: str, architecture: str | None = None) -> float:
    """The default `frames`, `fps`, `size`, `train_frames`, `steps`, `guidance`, `motion_until`
    or `offset_noise` of `base`: a built-in base's own, else its family's
    (`architecture`, the built-in's, or `modelscope-t2v`; a family this dvkit does not know, as
    in a file from a newer dvkit, counts as not given)."""
    from dvkit.families import FAMILIES, family

    builtin = BUILTINS.get(base)
    if builtin is not None and key in builtin.sampling:
        return builtin.sampling[key]
    architecture = architecture if architecture in FAMILIES else None
    name = architecture or (builtin.architecture if builtin else "modelscope-t2v")
    return family(name).defaults.get(key)


def training_defaults(base: str, architecture: str | None = None) -> dict[str, float]:
    """What training takes from the base when neither the preset nor the user sets it: the
    image `resolution`, a motion's clip `frames` and `fps`, and the `offset_noise` strength
    (the same as sampling's: 0.1 on ModelScope as the official trainer, 0 on bases trained
    without it; see `sampling_default`)."""
    return {
        "resolution": sampling_default(base, "size", architecture),
        "frames": sampling_default(base, "train_frames", architecture),
        "fps": sampling_default(base, "fps", architecture),
        "offset_noise": sampling_default(base, "offset_noise", architecture),
    }


def build_builtin(name: str) -> BaseComponents:
    """The components of built-in base `name` (one of `BUILTINS`)."""
    module, function = BUILTINS[name].builder.split(":")
    return getattr(importlib.import_module(module), function)()


def motion_uncond_strength(training: dict) -> float:
    """The λ of the unconditional branch a motion adapter was trained for (its training
    settings' `image_strength_uncond`, set by its preset), else `DEFAULT_IMAGE_STRENGTH_UNCOND`."""
    value = training.get("image_strength_uncond")
    return DEFAULT_IMAGE_STRENGTH_UNCOND if value is None else float(value)


def check_motion_until(value: float) -> float:
    """`value` if it is a fraction of the noise schedule (0 to 1), else a `DvkitError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DvkitError(
            f"--motion-until must be a fraction of the noise schedule from 0 to 1, not {value!r}"
        )
    return float(value)


def check_offset_noise(value: float) -> float:
    """`value` if it is a valid offset-noise strength (`OFFSET_NOISE`), else a `DvkitError`."""
    return OFFSET_NOISE.check("--offset-noise", value)


def sampler_choices(
    base: str,
    steps: int | None,
    guidance: float | None,
    motion_until: float | None,
    offset_noise: float | None = None,
    architecture: str | None = None,
) -> tuple[int, float, float, float]:
    """The sampler's steps, guidance scale, `motion_until` and `offset_noise`: the given ones,
    else `base`'s defaults (see `sampling_default`)."""

    def choice(key: str, given: float | None) -> float:
        return sampling_default(base, key, architecture) if given is None else given

    return (
        int(choice("steps", steps)),
        choice("guidance", guidance),
        choice("motion_until", motion_until),
        choice("offset_noise", offset_noise),
    )
