"""Metric keys and their display names, in display order, and how a score is shown. Light: no
imports."""

from __future__ import annotations

METRICS = {
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "dino_i": "DINO-I",
    "t_cons": "T. Cons.",
    "gt_subject": "Subj. fid.",
    "gt_colour": "Colour",
    "gt_motion": "Motion fid.",
    "gt_t_cons": "GT T. Cons.",
}
NOT_APPLICABLE = "n/a"
"""How a metric that does not apply (None: T. Cons. of a 1-frame video) is shown."""


def present(scores: list[dict[str, float | None]]) -> dict[str, str]:
    """The metrics (key → label) that at least one of `scores` has, in display order (also
    when its value there is None: not applicable)."""
    keys = {key for score in scores for key in score}
    return {key: label for key, label in METRICS.items() if key in keys}


def shown(value: float | None, digits: int = 4) -> str:
    """A score as text: `digits` decimals, or "n/a" where the metric does not apply (None)."""
    return NOT_APPLICABLE if value is None else f"{value:.{digits}f}"
