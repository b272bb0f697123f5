"""Built-in bases that need no download, and sampling defaults. Light: importable without
torch."""

from __future__ import annotations

from dvkit.errors import DvkitError

BUILTIN_BASES: dict[str, str] = {
    "tiny": "tiny random components for tests and smoke runs (meaningless pictures)",
    "sprites": "16×16 pixel-space model of the sprites world (coloured shapes moving over black)",
}

# dvkit's sampling defaults (the official DreamVideo inference), and built-in bases' own.
# On sprites a motion is laid out above timestep 400: motion adapters stop there, so that the
# last steps draw the object's own look (see `SamplerSettings.motion_until`).
DEFAULT_SAMPLING: dict[str, float] = {"frames": 16, "steps": 50, "guidance": 9.0, "motion_until": 0}
BUILTIN_SAMPLING: dict[str, dict[str, float]] = {
    "sprites": {"frames": 8, "steps": 25, "guidance": 2.0, "motion_until": 0.4},
}


def sampling_default(base: str, key: str) -> float:
    """The default `frames`, `steps`, `guidance` or `motion_until` for sampling from `base`."""
    return BUILTIN_SAMPLING.get(base, {}).get(key, DEFAULT_SAMPLING[key])


def check_motion_until(value: float) -> float:
    """`value` if it is a fraction of the noise schedule (0 to 1), else a `DvkitError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DvkitError(
            f"--motion-until must be a fraction of the noise schedule from 0 to 1, not {value!r}"
        )
    return float(value)


def sampler_choices(
    base: str, steps: int | None, guidance: float | None, motion_until: float | None
) -> tuple[int, float, float]:
    """The sampler's steps, guidance scale and `motion_until`: the given ones, else `base`'s
    defaults."""
    return (
        int(steps or sampling_default(base, "steps")),
        sampling_default(base, "guidance") if guidance is None else guidance,
        sampling_default(base, "motion_until") if motion_until is None else motion_until,
    )
