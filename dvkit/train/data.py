"""Loading training data: subject images (and masks) and motion clips, resized and cropped.

Images: jpg, png, webp. Videos: mp4, webm, mov, gif, or a folder of frame images. Every
problem is raised as a `DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dvkit.errors import DvkitError

if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif")


class DataError(DvkitError):
    """Training data that is missing, unreadable or too short."""


def collect_files(inputs: Sequence[str | Path], extensions: Sequence[str], what: str) -> list[Path]:
    """Expand folders (sorted, not recursive) and check files; folders of frames count as files
    when `extensions` are video extensions."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = sorted(p for p in item.iterdir() if p.suffix.lower() in extensions)
            if not entries and extensions == VIDEO_EXTENSIONS and _frame_files(item):
                entries = [item]
            if not entries:
                raise DataError(f"no {what} found in {item} (expected {', '.join(extensions)})")
            found += entries
        elif item.is_file():
            if item.suffix.lower() not in extensions:
                raise DataError(
                    f"{item}: unsupported file type {item.suffix or '(none)'} "
                    f"(expected {', '.join(extensions)})"
                )
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found:
        raise DataError(f"no {what} given")
    return found


def fingerprint(paths: Sequence[Path]) -> list[str]:
    """sha256 of each input (of every frame file, in order, for a folder of frames)."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        for file in _frame_files(path) if path.is_dir() else [path]:
            digest.update(file.read_bytes())
        digests.append(digest.hexdigest())
    return digests


def load_images(inputs: Sequence[str | Path], size: int) -> tuple[torch.Tensor, list[Path]]:
    """Images as a float tensor [N, 3, size, size] in [-1, 1] and the files they came from."""
    import torch

    paths = collect_files(inputs, IMAGE_EXTENSIONS, "images")
    pixels = torch.stack([_to_tensor(read_image(p, "RGB"), size) for p in paths])
    return pixels, paths


def load_masks(folder: str | Path, images: Sequence[Path], size: int) -> torch.Tensor:
    """Subject masks [N, 1, size, size] in {0, 1}: for each image, the file of the same stem."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: masks folder not found")
    by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    masks = []
    for image in images:
        if image.stem not in by_stem:
            raise DataError(f"no mask for {image.name} in {folder} (expected {image.stem}.png)")
        gray = _to_tensor(read_image(by_stem[image.stem], "L"), size)
        masks.append((gray > 0).to(torch.float32))
    return torch.stack(masks)


def load_videos(
    inputs: Sequence[str | Path], frames: int, size: int, fps: float | None
) -> tuple[torch.Tensor, list[Path]]:
    """Clips as [N, frames, 3, size, size] in [-1, 1], sampled at `fps` when the source says
    its frame rate (every frame otherwise), starting at the first frame."""
    import torch

    paths = collect_files(inputs, VIDEO_EXTENSIONS, "videos")
    clips = []
    for path in paths:
        video, source_fps = read_video(path)
        indices = sample_indices(path, len(video), frames, source_fps, fps)
        clips.append(torch.stack([_array_to_tensor(video[i], size) for i in indices]))
    return torch.stack(clips), paths


def sample_indices(
    path: Path, total: int, frames: int, source_fps: float | None, fps: float | None
) -> list[int]:
    stride = 1
    if fps and source_fps:
        stride = max(1, round(source_fps / fps))
    needed = (frames - 1) * stride + 1
    if total < needed and stride == 1:
        raise DataError(f"{path}: has {total} frames, fewer than the {frames} asked for")
    if total < needed:
        raise DataError(
            f"{path}: has {total} frames, but {frames} frames at {fps:g} fps need {needed} "
            "(ask for fewer frames or a higher fps)"
        )
    return list(range(0, needed, stride))


def read_image(path: Path, mode: str):  # noqa: ANN202 - PIL image
    """An image file as a PIL image in `mode`, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def read_video(path: Path) -> tuple[np.ndarray, float | None]:
    """All frames of a video file or frame folder (T, H, W, 3) uint8, and its fps if known."""
    import numpy as np

    if path.is_dir():
        frames = [np.asarray(read_image(p, "RGB")) for p in _frame_files(path)]
        if len({f.shape for f in frames}) > 1:
            raise DataError(f"{path}: frames differ in size")
        return np.stack(frames), None
    import imageio.v3 as iio

    plugin = "pillow" if path.suffix.lower() == ".gif" else "FFMPEG"
    try:
        extra = {"mode": "RGB"} if plugin == "pillow" else {}
        video = iio.imread(path, plugin=plugin, **extra)
        meta = iio.immeta(path, plugin=plugin)
    except Exception as exc:  # decoders raise many types for broken files
        raise DataError(f"{path}: not a readable video ({exc.__class__.__name__})") from None
    if video.ndim != 4 or video.shape[0] == 0:
        raise DataError(f"{path}: not a readable video (no frames)")
    source_fps = meta.get("fps")
    if source_fps is None and meta.get("duration"):
        source_fps = 1000.0 / float(meta["duration"])
    return video[..., :3], source_fps


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_tensor(image, size: int) -> torch.Tensor:  # noqa: ANN001 - PIL image
    """Resize the shorter side to `size`, centre-crop to a square, scale to [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)
    tensor = torch.from_numpy(cropped.copy())
    tensor = tensor.unsqueeze(-1) if tensor.ndim == 2 else tensor
    return tensor.permute(2, 0, 1) / 127.5 - 1.0


def _array_to_tensor(frame: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    return _to_tensor(Image.fromarray(frame), size)
