"""Built-in bases that need no download, and sampling defaults. Light: importable without
torch."""

from __future__ import annotations

from dvkit.errors import DvkitError
from dvkit.ranges import OFFSET_NOISE

BUILTIN_BASES: dict[str, str] = {
    "tiny": "tiny random components for tests and smoke runs (meaningless pictures)",
    "sprites": "16×16 pixel-space model of the sprites world (coloured shapes moving over black)",
}

# dvkit's sampling defaults (the official DreamVideo inference, VGen
# tools/inferences/inference_dreamvideo_entrance.py: offset noise 0.1 on the starting latents),
# and built-in bases' own. Built-in bases were trained without offset noise, so they start from
# plain Gaussian noise. On sprites a motion is laid out above timestep 400: motion adapters stop
# there, so that the last steps draw the object's own look (see `SamplerSettings.motion_until`).
DEFAULT_SAMPLING: dict[str, float] = {
    "frames": 16, "steps": 50, "guidance": 9.0, "motion_until": 0, "offset_noise": 0.1,
}  # fmt: skip
BUILTIN_SAMPLING: dict[str, dict[str, float]] = {
    "tiny": {"offset_noise": 0.0},
    "sprites": {
        "frames": 8,
        "steps": 25,
        "guidance": 2.0,
        "motion_until": 0.4,
        "offset_noise": 0.0,
    },
}
DEFAULT_IMAGE_STRENGTH_UNCOND = 1.0
"""Appearance-guidance λ of the unconditional branch for motion adapters that record none
(imported ones, and those trained before dvkit recorded it): the official inference's default."""


def sampling_default(base: str, key: str) -> float:
    """The default `frames`, `steps`, `guidance`, `motion_until` or `offset_noise` for sampling
    from `base`."""
    return BUILTIN_SAMPLING.get(base, {}).get(key, DEFAULT_SAMPLING[key])


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
) -> tuple[int, float, float, float]:
    """The sampler's steps, guidance scale, `motion_until` and `offset_noise`: the given ones,
    else `base`'s defaults."""
    return (
        int(sampling_default(base, "steps") if steps is None else steps),
        sampling_default(base, "guidance") if guidance is None else guidance,
        sampling_default(base, "motion_until") if motion_until is None else motion_until,
        sampling_default(base, "offset_noise") if offset_noise is None else offset_noise,
    )
