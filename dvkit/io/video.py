"""Writing videos: MP4 (imageio-ffmpeg) and GIF (Pillow), from uint8 frames (F, H, W, 3)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from dvkit.errors import DvkitError

VIDEO_FORMATS = ("mp4", "gif")


def check_writable_folder(folder: Path) -> None:
    """Fail early, with one line, if videos cannot be written into `folder`."""
    if not folder.is_dir():
        raise DvkitError(f"output folder {folder} does not exist")
    probe = folder / f".dvkit-write-test-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DvkitError(f"cannot write to {folder} ({exc.strerror or exc})") from None


def video_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise DvkitError(
            f"unsupported video extension {path.suffix or '(none)'} for {path} "
            f"(use {', '.join('.' + f for f in VIDEO_FORMATS)})"
        )
    return suffix


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] → uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: Path, fps: float) -> Path:
    """Write uint8 frames (F, H, W, 3) as MP4 or GIF (by extension), atomically."""
    kind = video_format(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")
    try:
        if kind == "gif":
            _write_gif(frames, partial, fps)
        else:
            _write_mp4(frames, partial, fps)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio.v3 as iio

    height, width = frames.shape[1:3]
    even = frames[:, : height - height % 2, : width - width % 2]  # yuv420p needs even sizes
    iio.imwrite(path, even, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration = max(int(round(1000 / fps)), 20)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
