"""`dvkit sprites list|images|clips` and the argument checks of `dvkit demo`."""

import numpy as np
import pytest
from PIL import Image

from dvkit.io.clips import open_video, read_video
from dvkit.sprites.files import write_clips
from dvkit.sprites.world import Sprite, examples_of, sprites, still_images
from dvkit.train.data import load_images


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def test_list_marks_held_out_items(cli) -> None:
    code, out, err = cli("sprites", "list")
    assert code == 0 and err == ""
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert set(lines) == {"colours", "shapes", "textures", "motions"}
    assert lines["colours"].split(", ")[0] == "red"
    assert "orange*" in lines["colours"] and "purple*" in lines["colours"]
    assert "red," in lines["colours"] and "red*" not in lines["colours"]
    assert "ring*" in lines["shapes"] and "circle," in lines["shapes"]
    assert "*" not in lines["textures"] and "striped" in lines["textures"]
    starred = [name[:-1] for name in lines["motions"].split(", ") if name.endswith("*")]
    assert starred == ["zigzag", "orbit", "bounce"]


def test_images_writes_pngs_that_training_reads(cli, tmp_path) -> None:
    out = tmp_path / "stills"
    code, stdout, err = cli("sprites", "images", "orange triangle", out, "--count", "3")
    assert code == 0, err
    assert stdout.strip() == f"wrote 3 images to {out}"
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"orange-triangle-{i:02d}.png" for i in range(3)]
    assert all(Image.open(f).size == (16, 16) for f in files)
    pixels, paths = load_images([out], 16)
    assert pixels.shape == (3, 3, 16, 16) and paths == files
    expected = np.stack(still_images(Sprite("orange", "triangle"), 3, 0))
    assert np.abs((pixels.permute(0, 2, 3, 1).numpy() + 1) / 2 - expected).max() <= 1 / 255
    # the seed picks other places
    cli("sprites", "images", "orange triangle", tmp_path / "other", "--count", "1", "--seed", "1")
    other = np.asarray(Image.open(tmp_path / "other" / "orange-triangle-00.png"))
    assert not np.array_equal(other, np.asarray(Image.open(files[0])))


def test_clips_writes_gifs_read_back_losslessly(cli, tmp_path) -> None:
    out = tmp_path / "clips"
    code, stdout, err = cli("sprites", "clips", "zigzag", out, "--count", "2")
    assert code == 0, err
    assert stdout.strip() == f"wrote 2 clips to {out}"
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["zigzag-00.gif", "zigzag-01.gif"]
    expected = examples_of(None, "zigzag", 2, 0, sprites())
    for path, example in zip(files, expected, strict=True):
        frames = read_video(path)
        assert frames.dtype == np.uint8 and frames.shape == (8, 16, 16, 3)
        assert np.array_equal(frames, _uint8(example.clip))
        assert np.diff(open_video(path).timeline.times) == pytest.approx(1 / 8, rel=0.1)


def test_clips_of_one_object(cli, tmp_path) -> None:
    code, _, err = cli(
        "sprites", "clips", "orbit", tmp_path, "--count", "1", "--object", "purple striped ring"
    )
    assert code == 0, err
    frames = read_video(tmp_path / "orbit-00.gif")
    ring = Sprite("purple", "ring", "striped")
    assert np.array_equal(frames, _uint8(examples_of(ring, "orbit", 1, 0)[0].clip))


def test_write_clips_vary_the_objects(tmp_path) -> None:
    paths = write_clips("left", tmp_path, count=6, seed=3)
    assert len(paths) == 6 and all(p.suffix == ".gif" for p in paths)
    colours = {tuple(read_video(p).reshape(-1, 3).max(axis=0)) for p in paths}
    assert len(colours) > 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("images", "pink circle"), "unknown colour 'pink'"),
        (("images", "red blob"), "unknown shape 'blob'"),
        (("images", "a big red circle"), "COLOUR [TEXTURE] SHAPE"),
        (("clips", "wobble"), "unknown motion 'wobble'"),
        (("clips", "left", "--object", "pink circle"), "unknown colour 'pink'"),
    ],
)
def test_bad_arguments_fail_with_one_error_line(run_dvkit, tmp_path, args, message) -> None:
    command, value, *options = args
    out = tmp_path / "out"
    result = run_dvkit("sprites", command, value, out, *options, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--subject", "red circle", "is seen in the base's training"),
        ("--motion", "left", "the demo teaches a held-out motion"),
        ("--subject", "orange blob", "unknown shape 'blob'"),
    ],
)
def test_demo_refuses_seen_subject_or_motion(cli, tmp_path, option, value, message) -> None:
    folder = tmp_path / "demo"
    code, out, err = cli("demo", "--device", "cpu", option, value, folder)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in err and out == ""
    assert not folder.exists()  # refused before writing data, let alone training
