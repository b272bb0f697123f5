"""Loading training data: subject images (and masks) and motion clips, resized and cropped.

Images are read by `dvkit.io.images` (upright, 8-bit RGB by value range, transparency on white;
masks on black), clips by `dvkit.io.clips` (frames chosen by timestamp, decoded lazily), folders
expanded by `dvkit.io.folders` (litter skipped). Each kept picture is resized on its shorter
side to the training size and centre-cropped. A line saying which files were used (and which
skipped) and a warning for each clip shorter than a training window go to `notify`. Every
problem is a `DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dvkit.io.clips import VIDEO_EXTENSIONS, VideoSource, open_video
from dvkit.io.folders import Collected, DataError, collect_files, frame_files, list_folder
from dvkit.io.images import BLACK, IMAGE_EXTENSIONS, fit_square, read_image
from dvkit.train.windows import plan_windows
from dvkit.wording import plural

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from dvkit.models.image_encoder import AppearanceEncoder

Notify = Callable[[str], None]
"""Receives one line about the data: the files used, or a warning (starting `warning:`)."""
CLIP_WINDOWS = 8
"""Windows kept per clip by default (`MotionSettings.clip_windows`; see `dvkit.train.windows`)."""
EMBED_BATCH = 16
"""Frames prepared for the appearance encoder before it embeds them together."""

_log = logging.getLogger("dvkit")


def log_note(line: str) -> None:
    """The default `Notify`: warnings to the `dvkit` logger's warning level, the rest to info."""
    (_log.warning if line.startswith("warning:") else _log.info)(line)


def fingerprint(paths: Sequence[Path]) -> list[str]:
    """sha256 of each input (of every frame file, in order, for a folder of frames)."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        for file in frame_files(path, IMAGE_EXTENSIONS) if path.is_dir() else [path]:
            digest.update(file.read_bytes())
        digests.append(digest.hexdigest())
    return digests


def load_images(
    inputs: Sequence[str | Path], size: int, notify: Notify = log_note
) -> tuple[torch.Tensor, list[Path]]:
    """Images as a float tensor [N, 3, size, size] in [-1, 1] and the files they came from."""
    import torch

    found = collect_files(inputs, IMAGE_EXTENSIONS, "images")
    notify(found.describe("image"))
    pixels = [to_pixels(fit_square(read_image(p, size), size)) for p in found.paths]
    return torch.stack(pixels).float() / 127.5 - 1.0, found.paths


def load_masks(
    folder: str | Path, images: Sequence[Path], size: int, notify: Notify = log_note
) -> torch.Tensor:
    """Subject masks [N, 1, size, size] in {0, 1}: for each image, the file of the same stem.
    A mask is white (the subject) on black, read like an image but composited on black (so
    transparent pixels are not the subject); the subject is where the resized mask is brighter
    than mid-grey."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: masks folder not found")
    files, skipped = list_folder(folder, IMAGE_EXTENSIONS)
    by_stem = {p.stem: p for p in files}
    found = Collected(sources=[folder])
    for image in images:
        if image.stem not in by_stem:
            raise DataError(f"no mask for {image.name} in {folder} (expected {image.stem}.png)")
        found.paths.append(by_stem[image.stem])
    found.skipped = sorted([*skipped, *(p.name for p in set(files) - set(found.paths))])
    notify(found.describe("mask"))
    masks = [
        to_pixels(fit_square(read_image(path, size, background=BLACK).convert("L"), size)) > 127
        for path in found.paths
    ]
    return torch.stack(masks).to(torch.float32)


@dataclass
class MotionClips:
    """Training clips as windows over their kept frames (see `dvkit.train.windows`).

    `frames` (M, 3, S, S): every kept frame of every clip, uint8 (or floats in [-1, 1]);
    `embeds` (M, D): each kept frame's appearance embedding; `windows` (W, F) long: indices in
    `frames`, −1 where a window is zero-padded; clip n owns windows `first[n]` to
    `first[n] + count[n] − 1`.
    """

    frames: torch.Tensor
    embeds: torch.Tensor
    windows: torch.Tensor
    first: torch.Tensor
    count: torch.Tensor

    @classmethod
    def whole(cls, clips: torch.Tensor, encoder: AppearanceEncoder) -> MotionClips:
        """Clips (N, F, 3, S, S) in [-1, 1], each one window of all its frames."""
        import torch

        count, length = clips.shape[:2]
        frames = clips.reshape(count * length, *clips.shape[2:])
        return cls(
            frames=frames,
            embeds=encoder.encode(frames).cpu(),
            windows=torch.arange(count * length).reshape(count, length),
            first=torch.arange(count),
            count=torch.ones(count, dtype=torch.long),
        )

    def pixels(self, start: int, stop: int) -> torch.Tensor:
        """Kept frames `start` to `stop` − 1 as floats in [-1, 1]."""
        import torch

        chunk = self.frames[start:stop]
        return chunk.float() / 127.5 - 1.0 if chunk.dtype == torch.uint8 else chunk.float()


def load_videos(
    inputs: Sequence[str | Path],
    frames: int,
    size: int,
    fps: float | None,
    encoder: AppearanceEncoder,
    clip_windows: int = CLIP_WINDOWS,
    notify: Notify = log_note,
    frames_at_most: Callable[[int], int] = int,
) -> tuple[MotionClips, list[Path]]:
    """Clips as `MotionClips`: up to `clip_windows` windows of `frames` frames each, sampled at
    `fps` (every frame when None or for folders of frames), and the files they came from. A
    clip shorter than a window gets a warning suggesting `frames_at_most(its frames)` (the
    base family's `Family.frames_at_most`).

    Frames are decoded one at a time; each kept one is resized to the training size and
    prepared for `encoder` as it comes (`prepare_frame`), and embedded with up to
    `EMBED_BATCH` others, so no raw frame outlives its turn.
    """
    import torch

    found = collect_files(inputs, VIDEO_EXTENSIONS, "videos", frame_extensions=IMAGE_EXTENSIONS)
    notify(found.describe("video"))
    sources = [open_video(path) for path in found.paths]
    for source in sources:
        if len(source.timeline) < 2:
            raise DataError(
                f"{source.path}: a single frame (a still), not a clip: motion training needs "
                "clips of at least 2 frames"
            )
    plans = [plan_windows(s.timeline, frames, fps, clip_windows) for s in sources]
    for source, plan in zip(sources, plans, strict=True):
        if plan.real_frames < frames:
            notify(_short_clip_warning(source, plan.real_frames, frames, fps, frames_at_most))
    kept = torch.empty(sum(len(p.frames) for p in plans), 3, size, size, dtype=torch.uint8)
    embeds: list[torch.Tensor] = []
    windows: list[torch.Tensor] = []
    prepared: list[torch.Tensor] = []  # of the frames not embedded yet
    done = 0
    for source, plan in zip(sources, plans, strict=True):
        offset = done
        for _, image in source.frames(plan.frames.tolist()):
            kept[done], ready = prepare_frame(encoder, image, size)
            prepared.append(ready)
            done += 1
            if len(prepared) == EMBED_BATCH or done == len(kept):
                embeds.append(encoder.encode_prepared(torch.stack(prepared)).cpu())
                prepared.clear()
        positions = torch.from_numpy(plan.windows)
        windows.append(torch.where(positions >= 0, positions + offset, -1))
    count = torch.tensor([len(w) for w in windows])
    clips = MotionClips(
        frames=kept,
        embeds=torch.cat(embeds),
        windows=torch.cat(windows),
        first=torch.cumsum(count, 0) - count,
        count=count,
    )
    return clips, found.paths


def prepare_frame(
    encoder: AppearanceEncoder, image: Image.Image, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw picture (8-bit RGB, upright, full size) as a training frame, uint8 (3, size, size),
    and as what `encoder` embeds of it (`AppearanceEncoder.prepare_frame`): the one path by
    which motion training, `compose` and `bench` turn a picture into appearance guidance."""
    kept = to_pixels(fit_square(image, size))
    return kept, encoder.prepare_frame(image, kept.float() / 127.5 - 1.0)


def appearance_embedding(encoder: AppearanceEncoder, image: Image.Image, size: int) -> torch.Tensor:
    """The appearance embedding (embed_dim,) of one raw picture, as motion training at `size`
    embeds a frame of its clips (`prepare_frame`)."""
    _, prepared = prepare_frame(encoder, image, size)
    return encoder.encode_prepared(prepared[None])[0].cpu()


def to_pixels(image: Image.Image) -> torch.Tensor:
    """A Pillow image (RGB or L) as uint8 (C, H, W)."""
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _short_clip_warning(
    source: VideoSource,
    real: int,
    frames: int,
    fps: float | None,
    frames_at_most: Callable[[int], int],
) -> str:
    at = f" at {fps:g} fps" if fps and source.timeline.timed else ""
    ask = f"--frames {frames_at_most(real)}" + (" or a higher --fps" if at else "")
    return (
        f"warning: {source.path} gives {plural(real, 'frame')}{at}, fewer than the {frames} of a "
        f"training window: zero-padded after them, as the official trainer does (ask for {ask})"
    )
