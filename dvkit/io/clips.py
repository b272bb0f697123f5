"""Reading clips frame by frame: video files (PyAV), GIFs (Pillow) and folders of frames.

A clip is opened in two steps. Opening reads its *timeline*, when each frame is shown: for
video files the presentation timestamps of the packets (demuxed, not decoded), for GIFs the
frames' durations, for a folder of frames just their order. Callers choose frames from the
timeline (by time, so variable frame rates are sampled right), then `frames(indices)` decodes
in order, converts only the chosen frames and stops after the last one: memory does not grow
with the clip's length. Frames come upright (a video's display rotation applied, as players
do) as 8-bit RGB Pillow images (`dvkit.io.images.to_rgb` for GIF and folder frames).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from dvkit.io.folders import DataError, frame_files
from dvkit.io.images import (
    IMAGE_EXTENSIONS,
    READ_ERRORS,
    check_pixels,
    open_image,
    read_image,
    to_rgb,
)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif")
TIME_TOLERANCE = 1e-3
"""Seconds by which timestamps may disagree and still mean the same instant (GIFs store
centiseconds, containers round to their time base)."""
GIF_DEFAULT_DELAY = 0.1
"""Seconds a GIF frame with no or zero delay is shown, as browsers show it."""
ROTATIONS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
"""Counter-clockwise display rotations (degrees) and the transposition that applies each."""


@dataclass(frozen=True)
class Timeline:
    """When each frame of a clip is shown.

    `times` (T,): the start of each frame in seconds from the first, ascending; `end`: when the
    last one stops showing. A folder of frames has no clock (`timed` False): frame k starts at
    k and the clip ends at T.
    """

    times: np.ndarray
    end: float
    timed: bool = True

    def __len__(self) -> int:
        return len(self.times)

    def on_screen(self, at: np.ndarray) -> np.ndarray:
        """Index of the frame showing at each time in `at` (seconds; the first frame before 0)."""
        shown = np.searchsorted(self.times, np.asarray(at) + TIME_TOLERANCE, side="right") - 1
        return np.clip(shown, 0, None)


class VideoSource(Protocol):
    """An opened clip: its timeline and its frames."""

    path: Path
    timeline: Timeline

    def frames(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        """Each frame of the ascending, distinct `indices` once, as upright 8-bit RGB, decoding
        no further than the last.

        Raises:
            DataError: a frame that cannot be decoded.
        """
        ...


def open_video(path: Path) -> VideoSource:
    """A video file, a GIF or a folder of frames, with its timeline read.

    Raises:
        DataError: not a readable clip, or one with no frames.
    """
    if path.is_dir():
        return FrameFolder(path)
    if path.suffix.lower() == ".gif":
        return GifFile(path)
    return VideoFile(path)


def read_video(path: Path) -> np.ndarray:
    """Every frame of a clip at its own size, (T, H, W, 3) uint8.

    Raises:
        DataError: an unreadable clip, or frames of different sizes.
    """
    source = open_video(path)
    frames = [np.asarray(image) for _, image in source.frames(range(len(source.timeline)))]
    if len({frame.shape for frame in frames}) > 1:
        raise DataError(f"{path}: frames differ in size")
    return np.stack(frames)


class VideoFile:
    """A video file decoded by PyAV (FFmpeg): mp4, webm, mov, ..."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pts, self.timeline, self._tagged_rotation = self._probe()

    def _probe(self) -> tuple[np.ndarray, Timeline, float]:
        """Presentation timestamps of every frame, from the packets (nothing decoded), and the
        legacy `rotate` tag (clockwise degrees) for files with no display matrix."""
        import av

        stamps: list[int] = []
        durations: list[int] = []
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise DataError(f"{self.path}: not a readable video (no video stream)")
                stream = container.streams.video[0]
                time_base = float(stream.time_base)
                tags = {key.lower(): value for key, value in stream.metadata.items()}
                tagged_rotation = -_number(tags.get("rotate", "0"))
                for packet in container.demux(stream):
                    if packet.pts is not None and not packet.is_discard:
                        stamps.append(packet.pts)
                        durations.append(packet.duration or 0)
        except (av.FFmpegError, OSError) as exc:
            raise unreadable(self.path, exc) from None
        if not stamps:
            raise DataError(f"{self.path}: not a readable video (no frames)")
        pts = np.unique(np.asarray(stamps, dtype=np.int64))  # presentation order, each once
        times = (pts - pts[0]) * time_base
        last = durations[int(np.argmax(stamps))] * time_base
        if last <= 0:
            last = float(np.median(np.diff(times))) if len(times) > 1 else TIME_TOLERANCE
        return pts, Timeline(times, float(times[-1] + last)), tagged_rotation

    def frames(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        """See `VideoSource.frames`. Decoded frames are matched to the timeline by their
        presentation timestamp."""
        import av

        wanted = set(indices)
        if not wanted:
            return
        last = max(wanted)
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    index = int(np.searchsorted(self._pts, frame.pts))
                    if index in wanted and self._pts[index] == frame.pts:
                        wanted.discard(index)
                        rotation = frame.rotation or self._tagged_rotation
                        yield index, upright(frame.to_image(), rotation)
                    if index >= last:
                        break
        except (av.FFmpegError, OSError) as exc:
            raise unreadable(self.path, exc) from None
        if wanted:
            missing = ", ".join(f"{self.timeline.times[i]:.3f}" for i in sorted(wanted)[:3])
            raise DataError(f"{self.path}: the frames at {missing} s could not be decoded")


class GifFile:
    """An animated GIF read by Pillow; each frame's delay gives its duration."""

    def __init__(self, path: Path) -> None:
        self.path = path
        delays = []
        try:
            with open_image(path) as image:
                check_pixels(path, image)
                for index in range(getattr(image, "n_frames", 1)):
                    image.seek(index)
                    delay = image.info.get("duration") or 0
                    delays.append(delay / 1000 if delay > 0 else GIF_DEFAULT_DELAY)
        except READ_ERRORS as exc:
            raise unreadable(path, exc) from None
        ends = np.cumsum(delays)
        self.timeline = Timeline(ends - np.asarray(delays), float(ends[-1]))

    def frames(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        """See `VideoSource.frames`."""
        try:
            with open_image(self.path) as image:
                for index in indices:
                    image.seek(index)
                    yield index, to_rgb(image)
        except READ_ERRORS as exc:
            raise unreadable(self.path, exc) from None


class FrameFolder:
    """A folder of frame images in name order (litter skipped); it has no clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = frame_files(path, IMAGE_EXTENSIONS)
        if not self.files:
            raise DataError(f"{path}: no frame images in the folder")
        count = len(self.files)
        self.timeline = Timeline(np.arange(count, dtype=np.float64), float(count), timed=False)

    def frames(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        """See `VideoSource.frames`; every frame must have the size of the first one read."""
        size = None
        for index in indices:
            image = read_image(self.files[index])
            if size is not None and image.size != size:
                raise DataError(
                    f"{self.path}: frames differ in size (a folder is read as one clip, its "
                    "images the frames in name order; stills are not a clip)"
                )
            size = image.size
            yield index, image


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def unreadable(path: Path, exc: Exception) -> DataError:
    """The one-line error for a clip its decoder refuses, naming the decoder's error type."""
    return DataError(f"{path}: not a readable video ({exc.__class__.__name__})")


def upright(image: Image.Image, rotation: float) -> Image.Image:
    """`image` turned by a display rotation in degrees counter-clockwise, as FFmpeg reads it
    from the display matrix (`ffmpeg -display_rotation 90` gives 90; the legacy clockwise
    `rotate` tag of 90 means -90), to the nearest quarter turn."""
    quarter = round(rotation / 90) % 4 * 90
    return image.transpose(ROTATIONS[quarter]) if quarter else image
