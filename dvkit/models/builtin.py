"""Built-in bases that need no download. Light: importable without torch."""

from __future__ import annotations

BUILTIN_BASES: dict[str, str] = {
    "tiny": "tiny random components for tests and smoke runs (meaningless pictures)",
    "sprites": "16×16 pixel-space model of the sprites world (coloured shapes moving over black)",
}

# Sampling defaults of built-in bases where they differ from dvkit's (50 steps, guidance 9.0).
BUILTIN_SAMPLING: dict[str, dict[str, float]] = {
    "sprites": {"frames": 8, "steps": 25, "guidance": 2.0},
}


def sampling_default(base: str, key: str, fallback: float) -> float:
    """A built-in base's own default for `frames`, `steps` or `guidance`, else `fallback`."""
    return BUILTIN_SAMPLING.get(base, {}).get(key, fallback)
