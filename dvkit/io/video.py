"""Writing videos: MP4 (H.264 through PyAV) and GIF (Pillow), from uint8 frames (F, H, W, 3).

Both are written through `atomic_output` (a temporary name, then a rename). PyAV encodes in
this process, so a failing write (a full disk) raises where it happens; an ffmpeg subprocess
fed through a pipe (imageio-ffmpeg) exits with an error nobody reads and leaves a file without
its index. Each MP4 is also read back (its packets counted, nothing decoded) before it is
renamed into place.
"""

from __future__ import annotations

import errno
import secrets
from fractions import Fraction
from pathlib import Path

import numpy as np

from dvkit.errors import DvkitError
from dvkit.io.files import atomic_output
from dvkit.ranges import FRAME_RATE

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
    """Write uint8 frames (F, H, W, 3) as MP4 or GIF (by extension) at `fps` frames per second.

    Raises `DvkitError` for an unknown extension, a frame rate outside `FRAME_RATE`, or a write
    that fails (then no file is left at `path`, nor a partial one beside it).
    """
    kind = video_format(path)
    FRAME_RATE.check("frame rate", fps)
    with atomic_output(path) as partial:
        if kind == "gif":
            _write_gif(frames, partial, fps)
        else:
            _write_mp4(frames, partial, fps)
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import av

    height, width = frames.shape[1:3]
    even = frames[:, : height - height % 2, : width - width % 2]  # yuv420p needs even sizes
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = even.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in even:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    _check_mp4(path, len(frames))


def _check_mp4(path: Path, count: int) -> None:
    """Raise `OSError` unless the MP4 at `path` opens and holds `count` video packets."""
    import av

    try:
        with av.open(str(path)) as container:
            found = sum(1 for packet in container.demux(video=0) if packet.size)
    except av.FFmpegError as exc:
        raise OSError(errno.EIO, f"the written MP4 cannot be read back ({exc})") from None
    if found != count:
        raise OSError(errno.EIO, f"the written MP4 holds {found} of its {count} frames")


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration = max(int(round(1000 / fps)), 20)
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
