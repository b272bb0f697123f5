"""Metric keys and their display names, in display order. Light: no imports."""

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


def present(scores: list[dict[str, float]]) -> dict[str, str]:
    """The metrics (key → label) that at least one of `scores` has, in display order."""
    keys = {key for score in scores for key in score}
    return {key: label for key, label in METRICS.items() if key in keys}
