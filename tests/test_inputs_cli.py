"""Inputs from the field through the CLI: they train, or fail with one `error:` line."""

import numpy as np
from media_files import (
    exif_orientation,
    ffmpeg,
    png_header,
    write_clip,
    write_frames,
    write_litter,
)
from PIL import Image

from dvkit.catalog import Catalog

QUICK_SUBJECT = ("--preset", "quick", "--inversion-steps", "1", "--identity-steps", "1")
QUICK_MOTION = ("--preset", "quick", "--steps", "1")


def _one_error_line(code, err, expected) -> None:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err


def test_field_images_train_and_the_use_is_told(cli, home, tmp_path) -> None:
    folder = tmp_path / "cat"
    folder.mkdir()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(folder / "phone.jpg", exif=exif_orientation(6))
    Image.fromarray(np.full((24, 24), 20000, np.uint16)).save(folder / "deep.png")
    Image.new("RGBA", (24, 24), (0, 0, 255, 0)).save(folder / "cutout.png")
    write_litter(folder)
    code, out, err = cli("--home", home, "add-subject", "cat", "--images", folder, *QUICK_SUBJECT)
    assert code == 0, err
    assert out.splitlines()[0] == (f"using 3 images from {folder} (4 skipped: .DS_Store, "
                                   "._0.png, Thumbs.db, desktop.ini)")  # fmt: skip
    assert "registered cat@1" in out


def test_a_huge_image_is_one_error_line_and_no_change(cli, home, tmp_path) -> None:
    folder = tmp_path / "huge"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "small.png")
    (folder / "panorama.png").write_bytes(png_header(20000, 10000))
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", folder, *QUICK_SUBJECT)
    _one_error_line(code, err, "panorama.png: 20000×10000 pixels (200 megapixels)")
    assert Catalog.open(home).adapter_rows() == []


def test_field_clips_train_with_a_warning_for_short_ones(cli, home, tmp_path) -> None:
    folder = tmp_path / "surf"
    folder.mkdir()
    plain = write_clip(tmp_path / "plain.mp4", [k / 8 for k in range(12)], size=(32, 16))
    ffmpeg("-display_rotation", "90", "-i", plain, "-c", "copy", folder / "phone.mp4")
    write_clip(folder / "short.mp4", [k / 8 for k in range(3)])
    write_litter(folder)
    write_frames(tmp_path / "frames", 6)
    code, out, err = cli("--home", home, "add-motion", "surf", "--videos", folder,
                         tmp_path / "frames", "--frames", "4", "--fps", "8",
                         *QUICK_MOTION)  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"using 3 videos from {folder}, {tmp_path / 'frames'} (8 skipped: "
                        ".DS_Store, ._0.png, Thumbs.db, desktop.ini, .DS_Store, …)")  # fmt: skip
    assert lines[1] == (f"warning: {folder / 'short.mp4'} gives 3 frames at 8 fps, fewer than "
                        "the 4 of a training window: zero-padded after them, as the official "
                        "trainer does (ask for --frames 3 or a higher --fps)")  # fmt: skip
    assert "registered surf@1" in out
    assert Catalog.open(home).show("surf").training["clip_windows"] == 8


def test_bad_clips_are_one_error_line_and_no_change(cli, home, tmp_path) -> None:
    litter = tmp_path / "litter"
    litter.mkdir()
    write_litter(litter)
    audio = tmp_path / "sound.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", audio)
    cases = [
        (litter, "no videos found in"),
        (audio, "sound.mp4: not a readable video (no video stream)"),
        (tmp_path / "gone.mp4", "gone.mp4: no such file or folder"),
    ]
    for videos, expected in cases:
        code, _, err = cli("--home", home, "add-motion", "surf", "--videos", videos, *QUICK_MOTION)
        _one_error_line(code, err, expected)
    assert Catalog.open(home).adapter_rows() == []


def test_score_reads_rotated_videos_and_littered_references(cli, tmp_path) -> None:
    plain = write_clip(tmp_path / "plain.mp4", [k / 8 for k in range(3)], size=(32, 16))
    turned = tmp_path / "turned.mp4"
    ffmpeg("-display_rotation", "90", "-i", plain, "-c", "copy", turned)
    references = tmp_path / "refs"
    references.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(references / "a.png")
    write_litter(references)
    code, out, err = cli("score", turned, "--prompt", "a cat", "--references", references,
                         "--clip", "tiny", "--dino", "tiny", "--json")  # fmt: skip
    assert code == 0, err
    assert "clip_i" in out and "Traceback" not in err
