import numpy as np
import pytest
from PIL import Image

from dvkit.train.data import (
    IMAGE_EXTENSIONS,
    DataError,
    collect_files,
    fingerprint,
    load_images,
    load_masks,
    load_videos,
)


def _image(path, color, size=(40, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def _video(path, frames=12, fps=8, size=(48, 32)):
    import imageio.v3 as iio

    data = np.zeros((frames, size[1], size[0], 3), dtype=np.uint8)
    for index in range(frames):
        data[index, :, :, 0] = index * 20  # frame number encoded in the red channel
    if path.suffix == ".gif":
        iio.imwrite(path, data, plugin="pillow", duration=int(1000 / fps), loop=0)
    else:
        iio.imwrite(path, data, plugin="FFMPEG", fps=fps)
    return path


def test_images_resized_cropped_and_scaled(tmp_path) -> None:
    _image(tmp_path / "a.png", (255, 0, 0))
    _image(tmp_path / "b.jpg", (0, 0, 255), size=(30, 60))
    _image(tmp_path / "c.webp", (0, 255, 0))
    (tmp_path / "notes.txt").write_text("ignored")
    pixels, paths = load_images([tmp_path], 16)
    assert pixels.shape == (3, 3, 16, 16)
    assert [p.name for p in paths] == ["a.png", "b.jpg", "c.webp"]
    assert pixels[0, 0].mean().item() == pytest.approx(1.0) and pixels[
        0, 2
    ].mean().item() == pytest.approx(-1.0)
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_image_errors(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_images([empty], 16)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_images([broken], 16)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type .txt"):
        collect_files([tmp_path / "x.txt"], IMAGE_EXTENSIONS, "images")
    with pytest.raises(DataError, match="no such file"):
        load_images([tmp_path / "missing.png"], 16)


def test_masks_match_images_by_stem(tmp_path) -> None:
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    paths = [_image(images / "a.png", (9, 9, 9)), _image(images / "b.png", (9, 9, 9))]
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (0, 0, 20, 30))
    mask.save(masks / "a.png")
    with pytest.raises(DataError, match="no mask for b.png"):
        load_masks(masks, paths, 16)
    Image.new("L", (40, 30), 255).save(masks / "b.png")
    loaded = load_masks(masks, paths, 16)
    assert loaded.shape == (2, 1, 16, 16)
    assert set(loaded.unique().tolist()) <= {0.0, 1.0}
    assert loaded[1].mean().item() == 1.0 and 0.2 < loaded[0].mean().item() < 0.8


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_videos_sampled_at_fps(tmp_path, suffix) -> None:
    path = _video(tmp_path / f"clip{suffix}", frames=12, fps=8)
    clips, _ = load_videos([path], frames=4, size=16, fps=4)  # every second frame
    assert clips.shape == (1, 4, 3, 16, 16)
    red = ((clips[0, :, 0].mean(dim=(1, 2)) + 1) * 127.5).tolist()
    assert red == pytest.approx([0, 40, 80, 120], abs=6)


def test_folder_of_frames_and_short_video(tmp_path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(5):
        _image(frames / f"{index:03d}.png", (index * 50, 0, 0))
    clips, paths = load_videos([frames], frames=5, size=8, fps=8)
    assert clips.shape == (1, 5, 3, 8, 8) and paths == [frames]
    with pytest.raises(DataError, match="has 5 frames, fewer than the 6 asked for"):
        load_videos([frames], frames=6, size=8, fps=None)
    short = _video(tmp_path / "short.mp4", frames=3)
    with pytest.raises(DataError, match="short.mp4: has 3 frames"):
        load_videos([short], frames=8, size=8, fps=8)


def test_corrupt_video(tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(DataError, match="bad.mp4: not a readable video"):
        load_videos([bad], frames=2, size=8, fps=None)


def test_fingerprints_follow_content(tmp_path) -> None:
    a = _image(tmp_path / "a.png", (1, 2, 3))
    b = _image(tmp_path / "b.png", (1, 2, 3))
    c = _image(tmp_path / "c.png", (3, 2, 1))
    first, second, third = fingerprint([a, b, c])
    assert first == second != third
