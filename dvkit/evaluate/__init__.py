"""Scoring videos (CLIP-T, CLIP-I, DINO-I, temporal consistency) and evaluation grids."""

from typing import Any

__all__ = ["score"]


def __getattr__(name: str) -> Any:
    if name == "score":
        from dvkit.evaluate.score import score

        return score
    raise AttributeError(f"module 'dvkit.evaluate' has no attribute {name!r}")
