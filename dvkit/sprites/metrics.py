"""Ground-truth metrics of sprites clips, computed from pixels with no learned model.

A frame's object is the set of pixels brighter than `OBJECT_LEVEL` (the background is black).
Its colour is the nearest palette colour to the median hue of those pixels; its shape is the
shape whose template, drawn at the object's centroid, overlaps it best (IoU). From these:

- subject fidelity: fraction of frames whose object has the target colour *and* shape;
- motion fidelity: 1 − (mean distance between the object's path and the target path, after
  the best shift) / (mean distance of the target path from its own centre), clipped to [0, 1]:
  1 for the exact path, 0 for an object that stands still;
- temporal consistency: mean soft IoU of consecutive frames after moving their objects onto
  a common centroid (near 1 when the object keeps its look while it moves).

Clips are arrays (frames, H, W, 3) of floats in [0, 1]. Light: numpy only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dvkit.sprites.world import COLOURS, MOTION_PHRASES, MOTIONS, SHAPES, Sprite, motion_path
from dvkit.sprites.world import render_frame as _render

OBJECT_LEVEL = 0.3
MIN_PIXELS = 3


@dataclass(frozen=True)
class FrameObject:
    """What one frame shows: the object's colour, shape and centroid (x, y), if any."""

    colour: str | None
    shape: str | None
    centre: tuple[float, float] | None


def read_frame(frame: np.ndarray) -> FrameObject:
    """The object of a frame (H, W, 3) in [0, 1]."""
    brightness = frame.max(axis=-1)
    mask = brightness > OBJECT_LEVEL
    if mask.sum() < MIN_PIXELS:
        return FrameObject(None, None, None)
    ys, xs = np.nonzero(mask)
    weights = brightness[mask]
    centre = (
        float((xs * weights).sum() / weights.sum()),
        float((ys * weights).sum() / weights.sum()),
    )
    hues = frame[mask] / brightness[mask][:, None]
    hue = np.median(hues, axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - hue) ** 2)))
    level = np.clip(brightness / np.percentile(weights, 90), 0.0, 1.0)
    return FrameObject(colour, _best_shape(level, centre, frame.shape[0]), centre)


def read_clip(clip: np.ndarray) -> list[FrameObject]:
    return [read_frame(frame) for frame in np.asarray(clip, dtype=np.float64)]


def describe(images: np.ndarray) -> tuple[str, str]:
    """The most common colour and shape over images (N, H, W, 3): a subject's target."""
    found = [o for o in read_clip(images) if o.colour is not None]
    if not found:
        raise ValueError("no object found in the images")
    colour = Counter(o.colour for o in found).most_common(1)[0][0]
    shape = Counter(o.shape for o in found).most_common(1)[0][0]
    return colour, shape


Objects = list[FrameObject] | None
"""A clip's `read_clip` result, to pass to several metrics of one clip instead of re-reading."""


def colour_right(clip: np.ndarray, colour: str, objects: Objects = None) -> float:
    return float(np.mean([o.colour == colour for o in objects or read_clip(clip)]))


def shape_right(clip: np.ndarray, shape: str, objects: Objects = None) -> float:
    return float(np.mean([o.shape == shape for o in objects or read_clip(clip)]))


def subject_fidelity(clip: np.ndarray, colour: str, shape: str, objects: Objects = None) -> float:
    """Fraction of frames whose object has the given colour and shape."""
    objects = objects or read_clip(clip)
    return float(np.mean([o.colour == colour and o.shape == shape for o in objects]))


def motion_fidelity(clip: np.ndarray, motion: str, objects: Objects = None) -> float:
    """How closely the object's path follows `motion`'s path (1 exact, 0 standing still)."""
    objects = objects or read_clip(clip)
    target = motion_path(motion, len(objects))
    found = [index for index, o in enumerate(objects) if o.centre is not None]
    if len(found) < 2:
        return 0.0
    path = np.asarray([objects[index].centre for index in found])
    goal = target[found]
    offset = (path - goal).mean(axis=0)
    error = np.linalg.norm(path - offset - goal, axis=1).mean()
    spread = np.linalg.norm(goal - goal.mean(axis=0), axis=1).mean()
    if spread == 0:
        return 0.0
    return float(np.clip(1.0 - error / spread, 0.0, 1.0))


def temporal_consistency(clip: np.ndarray, objects: Objects = None) -> float:
    """Mean soft IoU of consecutive frames, each moved half-way so their objects' centroids
    meet (both are resampled alike, so an object that keeps its look scores near 1)."""
    frames = np.asarray(clip, dtype=np.float64)
    objects = objects or read_clip(frames)
    scores = []
    for index in range(len(frames) - 1):
        first, second = objects[index].centre, objects[index + 1].centre
        if first is None or second is None:
            scores.append(0.0)
            continue
        dx, dy = (first[0] - second[0]) / 2, (first[1] - second[1]) / 2
        a, b = _shift(frames[index], -dx, -dy), _shift(frames[index + 1], dx, dy)
        union = np.maximum(a, b).sum()
        scores.append(float(np.minimum(a, b).sum() / union) if union > 0 else 0.0)
    return float(np.mean(scores)) if scores else 1.0


def motion_named(*texts: str) -> str | None:
    """The sprites motion a name or caption speaks of ('zigzag', 'a x zigzagging'), if any."""
    for text in texts:
        words = text.lower().replace("-", " ").replace("_", " ")
        for motion, phrase in MOTION_PHRASES.items():
            if phrase in words or motion in words.split():
                return motion
    return None


def ground_truth(
    clip: np.ndarray, subject: tuple[str, str] | None, motion: str | None
) -> dict[str, float]:
    """The ground-truth metrics that apply: `gt_subject` and `gt_colour` (with a target colour
    and shape), `gt_motion` (with a target motion) and `gt_t_cons`."""
    objects = read_clip(clip)
    result = {"gt_t_cons": temporal_consistency(clip, objects)}
    if subject is not None:
        result["gt_subject"] = subject_fidelity(clip, *subject, objects=objects)
        result["gt_colour"] = colour_right(clip, subject[0], objects)
    if motion is not None and motion in MOTIONS:
        result["gt_motion"] = motion_fidelity(clip, motion, objects)
    return result


def _best_shape(level: np.ndarray, centre: tuple[float, float], size: int) -> str:
    """The shape whose template, with its centroid on `centre` (± half a pixel), overlaps the
    frame's relative brightness `level` best (soft IoU)."""

    def overlap(shape: str) -> float:
        best = 0.0
        for nudge_x in (-0.5, 0.0, 0.5):
            for nudge_y in (-0.5, 0.0, 0.5):
                at = (
                    centre[0] + nudge_x - _OFFSETS[shape][0],
                    centre[1] + nudge_y - _OFFSETS[shape][1],
                )
                template = _render(Sprite("white", shape), at, size)[..., 0]
                union = np.maximum(level, template).sum()
                best = max(best, np.minimum(level, template).sum() / max(union, 1e-9))
        return best

    return max(SHAPES, key=overlap)


def _centroid_offsets() -> dict[str, tuple[float, float]]:
    """How far each shape's centroid lies from the point it is drawn around."""
    offsets = {}
    for shape in SHAPES:
        coverage = _render(Sprite("white", shape), (8.0, 8.0), 16)[..., 0]
        ys, xs = np.indices(coverage.shape)
        total = coverage.sum()
        offsets[shape] = ((xs * coverage).sum() / total - 8.0, (ys * coverage).sum() / total - 8.0)
    return offsets


_OFFSETS = _centroid_offsets()


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """`image` (H, W, C) moved by (dx, dy) pixels, bilinearly, with black coming in."""
    out = np.zeros_like(image)
    x0, y0 = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - x0, dy - y0
    for ox, oy, weight in (
        (x0, y0, (1 - fx) * (1 - fy)),
        (x0 + 1, y0, fx * (1 - fy)),
        (x0, y0 + 1, (1 - fx) * fy),
        (x0 + 1, y0 + 1, fx * fy),
    ):
        if weight:
            out += weight * _shift_whole(image, ox, oy)
    return out


def _shift_whole(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    if abs(dx) >= width or abs(dy) >= height:
        return out
    source = image[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + source.shape[0], max(0, dx) : max(0, dx) + source.shape[1]] = (
        source
    )
    return out
