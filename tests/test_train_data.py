import numpy as np
import pytest
import torch
from media_files import frame_index, write_clip, write_frames, write_gif, write_litter
from PIL import Image

from dvkit.families import family
from dvkit.io.clips import read_video
from dvkit.io.folders import collect_files
from dvkit.models.image_encoder import load_image_encoder
from dvkit.models.random_base import build_vit_h_shaped_encoder
from dvkit.train.data import (
    IMAGE_EXTENSIONS,
    DataError,
    fingerprint,
    load_images,
    load_masks,
    load_videos,
)

TINY = load_image_encoder("tiny")


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


def _window_reds(clips, window: int) -> list[float]:
    """Mean red (0-255) of each frame of a window; padding shows as None."""
    reds = clips.frames[:, 0].float().mean(dim=(1, 2)).tolist()
    return [None if i < 0 else reds[i] for i in clips.windows[window].tolist()]


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


def test_images_beside_litter_are_used_and_counted(tmp_path) -> None:
    folder = tmp_path / "cat"
    folder.mkdir()
    for index in range(3):
        _image(folder / f"{index}.png", (index * 100, 0, 0))
    write_litter(folder)
    notes = []
    pixels, paths = load_images([folder], 8, notes.append)
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"] and len(pixels) == 3
    assert notes == [f"using 3 images from {folder} (4 skipped: .DS_Store, ._0.png, Thumbs.db, "
                     "desktop.ini)"]  # fmt: skip


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


def test_masks_with_alpha_or_16_bits_and_litter(tmp_path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    paths = [_image(images / f"{stem}.png", (9, 9, 9), size=(16, 16)) for stem in "ab"]
    alpha = Image.new("RGBA", (16, 16), (255, 255, 255, 0))  # white everywhere, left half opaque
    alpha.paste((255, 255, 255, 255), (0, 0, 8, 16))
    alpha.save(masks / "a.png")
    deep = np.zeros((16, 16), dtype=np.uint16)
    deep[:, 8:] = 65535  # right half
    Image.fromarray(deep).save(masks / "b.png")
    write_litter(masks)
    notes = []
    loaded = load_masks(masks, paths, 16, notes.append)
    assert loaded[0, 0, :, :8].mean() == 1 and loaded[0, 0, :, 8:].mean() == 0
    assert loaded[1, 0, :, :8].mean() == 0 and loaded[1, 0, :, 8:].mean() == 1
    assert notes == [f"using 2 masks from {masks} (4 skipped: .DS_Store, ._0.png, Thumbs.db, "
                     "desktop.ini)"]  # fmt: skip


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_videos_sampled_at_fps(tmp_path, suffix) -> None:
    path = _video(tmp_path / f"clip{suffix}", frames=12, fps=8)
    clips, _ = load_videos([path], frames=4, size=16, fps=4, encoder=TINY, clip_windows=1)
    assert clips.frames.shape == (4, 3, 16, 16) and clips.windows.shape == (1, 4)
    assert _window_reds(clips, 0) == pytest.approx([0, 40, 80, 120], abs=6)


def test_each_clip_keeps_a_bounded_pool_of_windows(tmp_path) -> None:
    paths = [write_clip(tmp_path / f"{n}.mp4", [k / 30 for k in range(90 * (n + 1))])
             for n in range(2)]  # 3 s and 6 s  # fmt: skip
    notes = []
    clips, found = load_videos(paths, frames=4, size=8, fps=8.0, encoder=TINY, clip_windows=3,
                               notify=notes.append)  # fmt: skip
    assert found == paths and notes == [f"using 2 videos from {paths[0]}, {paths[1]}"]
    assert clips.first.tolist() == [0, 3] and clips.count.tolist() == [3, 3]
    assert len(clips.frames) == len(clips.embeds) <= 2 * 3 * 4  # not every frame of 9 s
    starts = [frame_index(clips.frames[clips.windows[w, 0]].permute(1, 2, 0).numpy())
              for w in range(6)]  # fmt: skip
    assert starts == [0, 37, 75, 0, 82, 165]  # times spread from 0 to the clip's end − 4 / 8 s


def test_short_clips_are_padded_with_a_warning(tmp_path) -> None:
    frames = write_frames(tmp_path / "frames", 5)
    notes = []
    clips, paths = load_videos([frames], frames=8, size=8, fps=8, encoder=TINY,
                               notify=notes.append)  # fmt: skip
    assert paths == [frames] and clips.windows.tolist() == [[0, 1, 2, 3, 4, -1, -1, -1]]
    assert notes[1] == (f"warning: {frames} gives 5 frames, fewer than the 8 of a training "
                        "window: zero-padded after them, as the official trainer does "
                        "(ask for --frames 5)")  # fmt: skip
    gif = write_gif(tmp_path / "short.gif", [125] * 3)
    notes.clear()
    clips, _ = load_videos([gif], frames=4, size=8, fps=8, encoder=TINY, notify=notes.append)
    assert clips.windows.tolist() == [[0, 1, 2, -1]]
    assert "gives 3 frames at 8 fps" in notes[1] and "--frames 3 or a higher --fps" in notes[1]
    wan = family("wan")  # 4k + 1 frames: a 6-frame clip suggests 5, not 6
    notes.clear()
    load_videos([write_frames(tmp_path / "six", 6)], frames=9, size=8, fps=None, encoder=TINY,
                notify=notes.append, frames_at_most=wan.frames_at_most)  # fmt: skip
    assert notes[1].endswith("(ask for --frames 5)")
    assert [wan.frames_at_most(n) for n in (1, 4, 5, 12, 13)] == [1, 1, 5, 9, 13]
    assert [wan.frames_at_least(n) for n in (1, 2, 4, 5, 12)] == [1, 5, 5, 5, 13]


def test_corrupt_video(tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(DataError, match="bad.mp4: not a readable video"):
        load_videos([bad], frames=2, size=8, fps=None, encoder=TINY)


def test_builtin_encoders_embed_the_training_frames(tmp_path) -> None:
    path = write_clip(tmp_path / "clip.mp4", [k / 8 for k in range(6)], size=(48, 32))
    clips, _ = load_videos([path], frames=6, size=16, fps=None, encoder=TINY)
    expected = TINY.encode(clips.pixels(0, len(clips.frames)))
    assert torch.allclose(clips.embeds, expected, atol=1e-5)


def test_openclip_encoders_embed_the_raw_frame_as_the_official_trainer(tmp_path) -> None:
    """PIL centre crop of the decoded frame, then open_clip's own transform (DESIGN §1)."""
    from open_clip import image_transform

    encoder = build_vit_h_shaped_encoder(width_scale=0.05, layers=1)
    path = write_clip(tmp_path / "clip.mp4", [k / 8 for k in range(3)], size=(96, 64))
    seen = []
    prepare_frame = encoder.prepare_frame

    def recording(image, pixels):
        seen.append(image.size)
        return prepare_frame(image, pixels)

    encoder.prepare_frame = recording
    clips, _ = load_videos([path], frames=3, size=16, fps=None, encoder=encoder)
    assert seen == [(96, 64)] * 3  # the raw frames, not the 16-pixel training frames
    raw = Image.fromarray(read_video(path)[0])
    official = image_transform(224, is_train=False)(raw.crop((16, 0, 80, 64)))  # centre square
    with torch.no_grad():
        expected = encoder.model.encode_image(official[None]).float()[0]
    assert torch.allclose(clips.embeds[0], expected, atol=1e-4)
    old = encoder.encode(clips.pixels(0, 1))[0]  # the 16-pixel training frame
    assert not torch.allclose(old, expected, atol=1e-3)


def test_load_image_encoder_keeps_open_clips_preprocess(monkeypatch) -> None:
    import open_clip

    model = build_vit_h_shaped_encoder(width_scale=0.05, layers=1).model

    def create(name, pretrained=None, device=None):
        return model, "train transform", "eval transform"

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    encoder = load_image_encoder("ViT-B-32:somewhere")
    assert encoder.preprocess == "eval transform" and encoder.spec == "ViT-B-32:somewhere"


def test_fingerprints_follow_content(tmp_path) -> None:
    a = _image(tmp_path / "a.png", (1, 2, 3))
    b = _image(tmp_path / "b.png", (1, 2, 3))
    c = _image(tmp_path / "c.png", (3, 2, 1))
    first, second, third = fingerprint([a, b, c])
    assert first == second != third
    frames = write_frames(tmp_path / "frames", 2)
    before = fingerprint([frames])
    (frames / "._000.png").write_bytes(b"other litter")
    assert fingerprint([frames]) == before  # litter is not data
