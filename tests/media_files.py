"""Writing the image and clip files that the input tests read: frame k of every clip carries k
in its red and blue channels, so a test can tell which frames were chosen."""

from __future__ import annotations

import struct
import subprocess
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

STEP = 12  # wide enough for lossy H.264
LITTER = {"._0.png": b"\x00\x05\x16\x07AppleDouble", ".DS_Store": b"\x00\x00\x00\x01Bud1",
          "Thumbs.db": b"\xd0\xcf\x11\xe0", "desktop.ini": b"[.ShellClassInfo]"}  # fmt: skip


def frame_pixels(index: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """Frame `index` (H, W, 3) of up to 400: red (index mod 20) × STEP, blue (index div 20) ×
    STEP, a green left half."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = index % 20 * STEP
    pixels[..., 2] = index // 20 * STEP
    pixels[:, : width // 2, 1] = 200
    return pixels


def frame_index(image: Image.Image | np.ndarray) -> int:
    """The index a frame of these clips carries, read back from its red and blue channels."""
    pixels = np.asarray(image).astype(float)
    return round(pixels[..., 0].mean() / STEP) + 20 * round(pixels[..., 2].mean() / STEP)


def write_clip(path: Path, times: Sequence[float], size: tuple[int, int] = (32, 32)) -> Path:
    """An H.264 MP4 whose frame k is shown from `times[k]` seconds (variable rates allowed)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index, start in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index, size), format="rgb24")
            frame.pts, frame.time_base = round(start * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: Path, delays_ms: Sequence[int], size: tuple[int, int] = (32, 32)) -> Path:
    frames = [Image.fromarray(frame_pixels(k, size)) for k in range(len(delays_ms))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=list(delays_ms),
                   loop=0)  # fmt: skip
    return path


def write_frames(folder: Path, count: int, size: tuple[int, int] = (32, 32)) -> Path:
    """A folder of PNG frames with the litter of other systems beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(frame_pixels(index, size)).save(folder / f"{index:03d}.png")
    write_litter(folder)
    return folder


def write_litter(folder: Path) -> list[str]:
    for name, payload in LITTER.items():
        (folder / name).write_bytes(payload)
    return sorted(LITTER)


def ffmpeg(*args: str | Path) -> None:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run([*command, *map(str, args)], check=True)


def exif_orientation(orientation: int) -> Image.Exif:
    """EXIF holding only an orientation (6: the camera was turned a quarter clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` × `height` RGB pixels and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
