"""Writing generated sprites data as files dvkit trains from: PNG stills and GIF clips, each
written whole or not at all (`dvkit.io.files.atomic_output`)."""

from __future__ import annotations

from pathlib import Path

from dvkit.io.files import atomic_output, make_folder
from dvkit.io.video import to_uint8, write_video
from dvkit.sprites.world import FRAMES, Sprite, examples_of, sprites, still_images


def write_images(sprite: Sprite, folder: Path, count: int = 5, seed: int = 0) -> list[Path]:
    """`count` PNG stills of `sprite` at random places, the same for the same seed."""
    from PIL import Image

    make_folder(folder)
    paths = []
    for index, image in enumerate(still_images(sprite, count, seed)):
        path = folder / f"{sprite.words.replace(' ', '-')}-{index:02d}.png"
        with atomic_output(path) as partial:
            Image.fromarray(to_uint8(image)).save(partial, format="PNG")
        paths.append(path)
    return paths


def write_clips(
    motion: str, folder: Path, count: int = 6, seed: int = 0, sprite: Sprite | None = None
) -> list[Path]:
    """`count` GIF clips of `motion`, by `sprite` or by varied seen objects (a motion's clips
    should vary in looks so that the motion, not an appearance, is what they share)."""
    make_folder(folder)
    paths = []
    for index, example in enumerate(examples_of(sprite, motion, count, seed, sprites())):
        path = folder / f"{motion}-{index:02d}.gif"
        paths.append(write_video(to_uint8(example.clip), path, fps=FRAMES))
    return paths
