"""Reading images as a viewer shows them: 8-bit RGB, upright, transparency composited.

Every image Pillow opens goes through the same steps (DESIGN §8):
- huge files are opened at reduced size before decoding: JPEG decodes at 1/2, 1/4 or 1/8 scale
  (`Image.draft`) when the caller needs only a smaller image. What still has more pixels than
  Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 megapixels by default)
  is refused with one line, never decoded: a PNG of 200 megapixels is an error, a JPEG of 200
  megapixels loads at 1/8 scale;
- EXIF orientation is applied (`ImageOps.exif_transpose`, JPEG, PNG, WebP, TIFF alike);
- pixel values are scaled by their mode's range: 16-bit modes (`I;16*`) 0–65535 → 0–255 (a 30 %
  grey stays 30 % grey); `I` (32-bit integers) is read as 16-bit data, 0–65535, clipped (what
  16-bit PNG and TIFF files hold in it); `F` (32-bit floats) as 0.0–1.0, clipped; `1`, `L`,
  `P`, `CMYK`, `YCbCr` and the 8-bit modes convert as Pillow converts them;
- transparency (`RGBA`, `LA`, `PA`, `P` or `L`/`RGB` with a transparent colour) is composited on
  a background: white for images (`WHITE`, what a page behind a picture shows), black for
  masks (`BLACK`: transparent means "not the subject");
- animated files (GIF, APNG, WebP) give their first frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dvkit.io.folders import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp")
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
DRAFT_MARGIN = 2
"""JPEG drafts keep at least this many times the size asked for, so the final resize still
averages several source pixels into each one (as `Image.thumbnail`'s `reducing_gap`)."""
REDUCING_GAP = 3.0
"""`Image.resize`'s `reducing_gap`: downscales first by an integer factor (`Image.reduce`),
then resamples; 3 or more is indistinguishable from a full resample (Pillow's documentation)."""
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
               Image.DecompressionBombError)  # fmt: skip


def read_image(
    path: Path, min_side: int | None = None, background: tuple[int, int, int] = WHITE
) -> Image.Image:
    """An image file as an upright 8-bit RGB picture (see the module docstring).

    `min_side`: the caller needs the shorter side no larger than this, so formats that can
    decode at reduced size (JPEG) do, keeping at least `DRAFT_MARGIN` times it. None: full size.

    Raises:
        DataError: not an image Pillow can read, or more pixels than it may decode.
    """
    try:
        with open_image(path) as image:
            if min_side:
                image.draft(None, (min_side * DRAFT_MARGIN, min_side * DRAFT_MARGIN))
            check_pixels(path, image)
            return to_rgb(ImageOps.exif_transpose(image), background)
    except READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """`Image.open` without its decompression-bomb check, which looks at the stored size before
    a JPEG can be drafted smaller; callers check the size they decode with `check_pixels`."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with image:
        yield image


def check_pixels(path: Path, image: Image.Image) -> None:
    """Refuse to decode more pixels than Pillow's decompression-bomb limit.

    Raises:
        DataError: naming the size and the limit.
    """
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise DataError(
            f"{path}: {width}×{height} pixels ({width * height / 1e6:.0f} megapixels) is more "
            f"than dvkit decodes ({limit / 1e6:.0f} megapixels, Pillow's limit against "
            "decompression bombs); save a smaller copy (JPEG files are read at reduced size)"
        )


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow mode as 8-bit RGB, scaled by the mode's value range, transparency
    composited on `background` (see the module docstring)."""
    if image.mode in SIXTEEN_BIT or image.mode in ("I", "F"):
        image = Image.fromarray(_eight_bit(np.asarray(image), image.mode), "L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic), then crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))),
        Image.Resampling.BICUBIC,
        reducing_gap=REDUCING_GAP,
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def _eight_bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit integer values as 0–65535, floats as 0–1, to uint8."""
    if mode == "F":
        scaled = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0, 1) * 255.0
    else:
        scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return np.rint(scaled).astype(np.uint8)
