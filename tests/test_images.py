"""Images reach the model as a viewer shows them: orientation, bit depth, transparency, size."""

import numpy as np
import pytest
from media_files import exif_orientation, png_header
from PIL import Image

from dvkit.io.folders import DataError
from dvkit.io.images import BLACK, fit_square, read_image, to_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _landscape() -> Image.Image:
    """40×20: the left half red, the right half blue."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    return image


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_exif_orientation_is_applied(tmp_path, suffix) -> None:
    """Orientation 6: the camera was turned a quarter clockwise; a viewer shows a portrait
    whose top is the stored image's left side."""
    path = tmp_path / f"photo{suffix}"
    _landscape().save(path, exif=exif_orientation(6), quality=95)
    upright = np.asarray(read_image(path)).astype(int)
    assert upright.shape == (40, 20, 3)
    assert np.abs(upright[5, 10] - RED).max() <= 8 and np.abs(upright[35, 10] - BLUE).max() <= 8


def test_sixteen_bit_grey_keeps_its_level(tmp_path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), round(0.3 * 65535), dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    value = np.asarray(read_image(path))
    assert np.all(np.abs(value.astype(float) - 0.3 * 255) <= 1)  # ~77, not 255


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # red (index 0) is transparent
    return image


def _keyed(mode: str, colour) -> Image.Image:
    """Two pixels, the first of the transparent colour (a PNG tRNS chunk)."""
    image = Image.new(mode, (2, 1), colour)
    image.putpixel((1, 0), 40 if mode == "L" else BLUE)
    image.info["transparency"] = colour
    return image


MODES = [
    ("1", lambda: Image.new("1", (2, 1), 1), [WHITE, WHITE]),
    ("L", lambda: Image.new("L", (2, 1), 77), [(77,) * 3] * 2),
    ("L+key", lambda: _keyed("L", 10), [WHITE, (40,) * 3]),
    ("LA", lambda: Image.fromarray(np.array([[[77, 0], [77, 255]]], np.uint8), "LA"),
     [WHITE, (77,) * 3]),
    ("P+transparency", _palette_with_transparency, [WHITE, BLUE]),
    ("RGB+key", lambda: _keyed("RGB", RED), [WHITE, BLUE]),
    ("RGBA", lambda: Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 255, 255]]], np.uint8)),
     [WHITE, BLUE]),
    ("RGBA half", lambda: Image.new("RGBA", (2, 1), (0, 0, 0, 128)), [(127,) * 3] * 2),
    ("I;16", lambda: Image.fromarray(np.array([[0, 65535]], np.uint16)), [(0,) * 3, WHITE]),
    ("I", lambda: Image.fromarray(np.array([[40000, 99999]], np.int32)), [(156,) * 3, WHITE]),
    ("I negative", lambda: Image.fromarray(np.array([[-5, 257]], np.int32)), [(0,) * 3, (1,) * 3]),
    ("F", lambda: Image.fromarray(np.array([[0.5, 2.0]], np.float32)), [(128,) * 3, WHITE]),
    ("F nan", lambda: Image.fromarray(np.array([[np.nan, -1.0]], np.float32)), [(0,) * 3] * 2),
    ("CMYK", lambda: Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [RED, RED]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "expected"), MODES, ids=[m[0] for m in MODES])
def test_every_mode_becomes_8_bit_rgb_by_value_range(name, make, expected) -> None:
    rgb = to_rgb(make())
    assert rgb.mode == "RGB"
    assert [tuple(map(int, pixel)) for pixel in np.asarray(rgb)[0]] == [tuple(e) for e in expected]


@pytest.mark.parametrize(("mode", "suffix"), [("I", ".tif"), ("F", ".tif"), ("LA", ".png"),
                                              ("RGBA", ".webp"), ("CMYK", ".jpg")])  # fmt: skip
def test_modes_survive_files(tmp_path, mode, suffix) -> None:
    image = {
        "I": Image.fromarray(np.full((4, 4), 40000, np.int32)),
        "F": Image.fromarray(np.full((4, 4), 0.5, np.float32)),
        "LA": Image.fromarray(np.full((4, 4, 2), [77, 0], np.uint8), "LA"),
        "RGBA": Image.new("RGBA", (4, 4), (0, 0, 255, 0)),
        "CMYK": Image.new("CMYK", (4, 4), (0, 255, 255, 0)),
    }[mode]
    path = tmp_path / f"image{suffix}"
    image.save(path, lossless=True) if suffix == ".webp" else image.save(path, quality=100)
    expected = {"I": 156, "F": 128, "LA": 255, "RGBA": 255}.get(mode)
    pixels = np.asarray(read_image(path)).astype(int)
    if expected is None:  # CMYK: red
        assert np.abs(pixels - RED).max() <= 4
    else:
        assert np.all(pixels == expected)


def test_transparency_on_black_for_masks(tmp_path) -> None:
    path = tmp_path / "mask.png"
    mask = Image.new("RGBA", (4, 2), (255, 255, 255, 0))  # white, but transparent
    mask.paste((255, 255, 255, 255), (0, 0, 2, 2))
    mask.save(path)
    pixels = np.asarray(read_image(path, background=BLACK))[..., 0]
    assert pixels.tolist() == [[255, 255, 0, 0]] * 2


@pytest.mark.parametrize("suffix", [".png", ".gif", ".webp"])
def test_animated_images_give_their_first_frame(tmp_path, suffix) -> None:
    path = tmp_path / f"animated{suffix}"
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert Image.open(path).n_frames == 3
    assert np.abs(np.asarray(read_image(path)).astype(int) - RED).max() <= 2


def test_a_200_megapixel_png_is_one_error_not_a_bomb(tmp_path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20000, 10000))
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=r"huge.png: 20000×10000 pixels \(200 megapixels\)"):
        read_image(path, min_side=256)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's own limit is left as it was


def test_a_jpeg_over_the_limit_is_decoded_at_reduced_size(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.jpg"
    big = Image.new("RGB", (1600, 800), BLUE)
    big.paste(RED, (0, 0, 800, 800))
    big.save(path, exif=exif_orientation(6))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # the file has 1.28 M pixels
    with pytest.raises(DataError, match="more than dvkit decodes"):
        read_image(path)  # at full size: refused
    small = read_image(path, min_side=16)  # decoded at 1/8 scale: 200×100, then turned
    assert small.size == (100, 200)
    square = np.asarray(fit_square(small, 16)).astype(int)
    assert square.shape == (16, 16, 3) and np.abs(square[0, 8] - RED).max() <= 8
    png = tmp_path / "big.png"
    big.save(png)
    with pytest.raises(DataError, match="more than dvkit decodes"):
        read_image(png, min_side=16)  # PNG cannot be decoded smaller


def test_large_jpegs_are_drafted_when_less_is_needed(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (2048, 1024), RED).save(path)
    assert read_image(path, min_side=64).size == (256, 128)  # 1/8: still twice the 64 needed
    assert read_image(path).size == (2048, 1024)


def test_broken_and_truncated_images_are_one_error(tmp_path) -> None:
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), RED).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="cut.png: not a readable image"):
        read_image(path)
