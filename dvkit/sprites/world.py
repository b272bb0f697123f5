"""The sprites world: short clips of one object (shape × colour × texture) moving over black.

Everything is deterministic from a seed. Some colours, shapes and motions are held out of base
training and kept for customization. Clips are float arrays (frames, H, W, 3) in [0, 1],
rendered with 4× supersampling so sub-pixel motion stays smooth. Stripes are one pixel tall, so
where an object's centre sits near a whole pixel they blur into an even 0.75 shade (a limit of
16×16 pixels that base training sees too). Light: numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIZE = 16
FRAMES = 8
OBJECT_RADIUS = 3.3
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.95, 0.1),
    "cyan": (0.1, 0.95, 0.95),
    "magenta": (1.0, 0.1, 1.0),
    "white": (1.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.55, 0.1, 1.0),
}
HELD_OUT_COLOURS = ("orange", "purple")

# Each shape is a test on offsets (dx, dy) in units of the object radius, y pointing down.
SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda x, y: x**2 + y**2 <= 1.0,
    "square": lambda x, y: np.maximum(abs(x), abs(y)) <= 0.82,
    "triangle": lambda x, y: (y <= 0.9) & (abs(x) <= (y + 1.1) * 0.6),
    "cross": lambda x, y: ((abs(x) <= 0.36) | (abs(y) <= 0.36)) & (np.maximum(abs(x), abs(y)) <= 1),
    "ring": lambda x, y: (x**2 + y**2 <= 1.0) & (x**2 + y**2 >= 0.3),
}
HELD_OUT_SHAPES = ("ring",)

TEXTURES = ("plain", "striped")

# Displacement from the start, in pixels, of each motion at frame t of FRAMES (y points down).
MOTIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "left": lambda t: (-0.8 * t, 0.0 * t),
    "right": lambda t: (0.8 * t, 0.0 * t),
    "up": lambda t: (0.0 * t, -0.8 * t),
    "down": lambda t: (0.0 * t, 0.8 * t),
    "zigzag": lambda t: (0.75 * t, 2.0 * np.abs(((t + 1) % 4) - 2) - 2.0),
    "orbit": lambda t: (
        3.0 * np.sin(2 * np.pi * t / FRAMES),
        -3.0 + 3.0 * np.cos(2 * np.pi * t / FRAMES),
    ),
    "bounce": lambda t: (0.5 * t, -4.5 * np.abs(np.sin(np.pi * t / 4))),
}
HELD_OUT_MOTIONS = ("zigzag", "orbit", "bounce")
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "zigzag": "zigzagging",
    "orbit": "orbiting",
    "bounce": "bouncing",
}
VOCABULARY = (
    "a", "an", "the", "moving", "object", *COLOURS, *SHAPES, *TEXTURES,
    *(word for phrase in MOTION_PHRASES.values() for word in phrase.split()),
)  # fmt: skip


@dataclass(frozen=True)
class Sprite:
    """One object: its colour, shape and texture."""

    colour: str
    shape: str
    texture: str = "plain"

    def __post_init__(self) -> None:
        for value, known, what in (
            (self.colour, COLOURS, "colour"),
            (self.shape, SHAPES, "shape"),
            (self.texture, TEXTURES, "texture"),
        ):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r} (known: {', '.join(known)})")

    @property
    def words(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.colour} {texture}{self.shape}"

    @property
    def held_out(self) -> bool:
        return self.colour in HELD_OUT_COLOURS or self.shape in HELD_OUT_SHAPES

    @classmethod
    def parse(cls, text: str) -> Sprite:
        """'orange triangle' or 'red striped circle'."""
        words = text.split()
        if len(words) == 2:
            return cls(words[0], words[1])
        if len(words) == 3:
            return cls(words[0], words[2], words[1])
        raise ValueError(f"describe an object as 'COLOUR [TEXTURE] SHAPE', not {text!r}")


def caption(sprite: Sprite, motion: str | None, colour: bool = True) -> str:
    """'a red circle moving left'; without a motion 'a red circle', without colour 'a circle'."""
    words = sprite.words if colour else sprite.words.split(" ", 1)[1]
    text = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
    return f"{text} {MOTION_PHRASES[motion]}" if motion else text


def motion_path(motion: str, frames: int = FRAMES) -> np.ndarray:
    """(frames, 2) displacement (x, y) in pixels from the first frame."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r} (known: {', '.join(MOTIONS)})")
    dx, dy = MOTIONS[motion](np.arange(frames, dtype=np.float64))
    return np.stack([np.broadcast_to(dx, (frames,)), np.broadcast_to(dy, (frames,))], axis=1)


def render_frame(
    sprite: Sprite, centre: tuple[float, float], size: int = SIZE, radius: float = OBJECT_RADIUS
) -> np.ndarray:
    """One frame (size, size, 3) in [0, 1] with the object centred at `centre` (x, y) pixels."""
    coverage, stripes = _coverage(sprite, centre, size, radius)
    colour = np.asarray(COLOURS[sprite.colour])
    shade = 1.0 - 0.5 * stripes if sprite.texture == "striped" else 1.0
    return (coverage * shade)[..., None] * colour


def render_clip(
    sprite: Sprite, motion: str, start: tuple[float, float], frames: int = FRAMES
) -> np.ndarray:
    """A clip (frames, SIZE, SIZE, 3) of `sprite` doing `motion` from `start` (x, y)."""
    path = motion_path(motion, frames) + np.asarray(start)
    return np.stack([render_frame(sprite, (x, y)) for x, y in path])


def start_range(motion: str, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest start (x, y) that keep the whole object in frame for the motion."""
    path = motion_path(motion, frames)
    margin = OBJECT_RADIUS + 0.2
    low = margin - path.min(axis=0)
    high = SIZE - 1 - margin - path.max(axis=0)
    return low, np.maximum(high, low)


def random_start(motion: str, rng: np.random.Generator) -> tuple[float, float]:
    low, high = start_range(motion)
    x, y = rng.uniform(low, high)
    return float(x), float(y)


def sprites(held_out: bool = False) -> list[Sprite]:
    """Every object of base training (`held_out=False`) or every held-out one."""
    return [
        Sprite(colour, shape, texture)
        for colour in COLOURS
        for shape in SHAPES
        for texture in TEXTURES
        if Sprite(colour, shape, texture).held_out == held_out
    ]


def motions(held_out: bool = False) -> list[str]:
    return [m for m in MOTIONS if (m in HELD_OUT_MOTIONS) == held_out]


@dataclass(frozen=True)
class Example:
    """One generated clip with what it shows."""

    sprite: Sprite
    motion: str
    start: tuple[float, float]
    clip: np.ndarray

    @property
    def caption(self) -> str:
        return caption(self.sprite, self.motion)


def training_batch(count: int, seed: int) -> list[Example]:
    """`count` clips of seen objects doing seen motions, the same for the same seed."""
    rng = np.random.default_rng([seed, 0x5B])
    objects, moves = sprites(), motions()
    examples = []
    for _ in range(count):
        sprite = objects[rng.integers(len(objects))]
        motion = moves[rng.integers(len(moves))]
        start = random_start(motion, rng)
        examples.append(Example(sprite, motion, start, render_clip(sprite, motion, start)))
    return examples


def examples_of(
    sprite: Sprite | None, motion: str, count: int, seed: int, objects: list[Sprite] | None = None
) -> list[Example]:
    """`count` clips of `sprite` (or of random seen objects) doing `motion` from random starts."""
    rng = np.random.default_rng([seed, 0x5C])
    pool = objects or sprites()
    examples = []
    for _ in range(count):
        chosen = sprite or pool[rng.integers(len(pool))]
        start = random_start(motion, rng)
        examples.append(Example(chosen, motion, start, render_clip(chosen, motion, start)))
    return examples


def still_images(sprite: Sprite, count: int, seed: int) -> list[np.ndarray]:
    """`count` single frames (SIZE, SIZE, 3) of `sprite` at random places."""
    rng = np.random.default_rng([seed, 0x5D])
    low, high = start_range("left", 1)
    return [render_frame(sprite, tuple(rng.uniform(low, high))) for _ in range(count)]


def _coverage(
    sprite: Sprite, centre: tuple[float, float], size: int, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each pixel covered by the shape, and each pixel's stripe weight."""
    step = 1.0 / SUPERSAMPLE
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) * step - 0.5
    ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    inside = SHAPES[sprite.shape](dx, dy).astype(np.float64)
    stripes = (np.floor((ys - centre[1]) / 1.0) % 2 == 0).astype(np.float64)
    pool = (size, SUPERSAMPLE, size, SUPERSAMPLE)
    coverage = inside.reshape(pool).mean(axis=(1, 3))
    striped = (inside * stripes).reshape(pool).mean(axis=(1, 3))
    return coverage, np.divide(striped, coverage, out=np.zeros_like(coverage), where=coverage > 0)
