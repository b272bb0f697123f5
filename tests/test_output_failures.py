"""Outputs on a full or failing disk: every file dvkit writes for the user is whole or absent,
and a failure is one `error:` line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dvkit.errors import DvkitError
from dvkit.evaluate.report import write_report
from dvkit.io.files import atomic_output, write_atomically
from dvkit.io.video import write_video
from dvkit.sprites.files import write_clips, write_images
from dvkit.sprites.world import Sprite

FRAMES = (np.random.default_rng(0).random((8, 16, 16, 3)) * 255).astype(np.uint8)
ROWS = [
    {
        "sampler": {"pair": ["cat", "surfing"], "role": role},
        "metrics": {"clip_t": 0.25, "t_cons": 0.9},
        "prompt": "a cat surfing",
        "seed": 0,
        "files": [],
    }
    for role in ("joint", "base")
]
WRITERS = {
    "mp4": lambda folder: write_video(FRAMES, folder / "clip.mp4", 8.0),
    "gif": lambda folder: write_video(FRAMES, folder / "clip.gif", 8.0),
    "report": lambda folder: write_report(ROWS, folder),
    "sprites images": lambda folder: write_images(Sprite.parse("red circle"), folder, 2),
    "sprites clips": lambda folder: write_clips("zigzag", folder, 1),
    "export": lambda folder: write_atomically(folder / "x.safetensors", b"\0" * 4096),
}


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Container:
    """A PyAV output container whose muxer fails once packets reach the file (`fail`), or
    silently drops every packet after the first (`drop`)."""

    def __init__(self, container, mode: str) -> None:
        self.container, self.mode, self.muxed = container, mode, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def add_stream(self, *args, **kwargs):
        return self.container.add_stream(*args, **kwargs)

    def mux(self, packets) -> None:
        if self.mode == "drop":
            packets = packets[: max(0, 1 - self.muxed)]
        self.container.mux(packets)
        self.muxed += len(packets)
        if self.muxed and self.mode == "fail":
            raise _enospc()


def _failing_av(monkeypatch, mode: str) -> None:
    import av

    real_open = av.open

    def open_(path, mode_="r", **kwargs):
        container = real_open(path, mode_, **kwargs)
        return _Container(container, mode) if mode_ == "w" else container

    monkeypatch.setattr(av, "open", open_)


@pytest.fixture
def full_disk(monkeypatch) -> None:
    """Every writer dvkit uses runs out of space half-way through a file: `Path.write_bytes`,
    Pillow's `save` and PyAV's muxer each write part of it, then raise ENOSPC (empty files can
    still be created, as on a real full disk)."""
    from PIL import Image

    def write_bytes(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        if data:
            raise _enospc()
        return 0

    real_save = Image.Image.save

    def save(self, fp, format=None, **params) -> None:  # noqa: A002 - Pillow's name
        import io

        buffer = io.BytesIO()
        real_save(self, buffer, format=format, **params)
        with open(fp, "wb") as handle:
            handle.write(buffer.getvalue()[: buffer.tell() // 2])
        raise _enospc()

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Image.Image, "save", save)
    _failing_av(monkeypatch, "fail")


@pytest.fixture
def failing_fsync(monkeypatch) -> None:
    """The data reaches the page cache but the device fails: fsync raises EIO."""

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize(
    ("failure", "reason"),
    [("full_disk", "No space left on device"), ("failing_fsync", "Input/output error")],
)
def test_a_failing_write_leaves_no_file(request, tmp_path, writer, failure, reason) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    request.getfixturevalue(failure)
    with pytest.raises(DvkitError, match=rf"^cannot write {folder}/\S+: {reason}$"):
        WRITERS[writer](folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_write_whole_files_under_their_names(tmp_path, writer) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    WRITERS[writer](folder)
    names = sorted(path.name for path in folder.iterdir())
    assert names and not [name for name in names if name.startswith(".")], names


def test_an_existing_file_stays_as_it_was_when_its_rewrite_fails(tmp_path, full_disk) -> None:
    path = tmp_path / "clip.gif"
    path.write_text("the old video")  # write_text is not patched
    with pytest.raises(DvkitError, match="No space left on device"):
        write_video(FRAMES, path, 8.0)
    assert path.read_text() == "the old video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "cwd"]


def test_atomic_output_keeps_other_errors_and_cleans_up(tmp_path) -> None:
    path = tmp_path / "x.bin"
    with pytest.raises(KeyError), atomic_output(path) as partial:
        partial.write_bytes(b"half")
        raise KeyError("writer bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]


def test_an_mp4_missing_frames_is_detected(tmp_path, monkeypatch) -> None:
    """The case of a writer that fails without saying so (as imageio-ffmpeg's ffmpeg
    subprocess does): the MP4 is read back and its frames counted."""
    _failing_av(monkeypatch, "drop")
    with pytest.raises(DvkitError, match=r"clip.mp4: the written MP4 holds 1 of its 8 frames"):
        write_video(FRAMES, tmp_path / "clip.mp4", 8.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]


def test_an_unreadable_mp4_is_detected(tmp_path, monkeypatch) -> None:
    import dvkit.io.video as video

    real_check = video._check_mp4

    def truncated(path: Path, count: int) -> None:
        os.truncate(path, path.stat().st_size // 2)
        real_check(path, count)

    monkeypatch.setattr(video, "_check_mp4", truncated)
    with pytest.raises(DvkitError, match="clip.mp4: the written MP4 (cannot be read|holds)"):
        write_video(FRAMES, tmp_path / "clip.mp4", 8.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]


def test_written_mp4_and_gif_read_back_with_every_frame(tmp_path) -> None:
    import imageio.v3 as iio

    for name in ("clip.mp4", "clip.gif"):
        write_video(FRAMES, tmp_path / name, 8.0)
        back = iio.imread(tmp_path / name, index=None)
        assert back.shape[:3] == (8, 16, 16), name
    assert np.abs(back[..., :3].astype(int) - FRAMES).mean() < 40  # GIF palette


def test_cli_outputs_on_a_full_disk(request, cli, home, tmp_path, make_adapter) -> None:
    assert cli("--home", home, "import", make_adapter("cat"))[0] == 0
    request.getfixturevalue("full_disk")
    out = tmp_path / "out"
    out.mkdir()
    for args in (
        ("export", "cat", "--out", out / "cat.safetensors"),
        ("sprites", "images", "red circle", out, "--count", "1"),
        ("sprites", "clips", "zigzag", out, "--count", "1"),
    ):
        code, _, err = cli("--home", home, *args)
        assert code == 1 and err.startswith("error: cannot write ") and err.count("\n") == 1, err
        assert err.rstrip().endswith("No space left on device"), err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("suffix", ["mp4", "gif"])
def test_cli_compose_on_a_full_disk(cli, home, tmp_path, full_disk, suffix) -> None:
    """The reported example: `compose --out x.mp4` on a full disk exited 0 with a broken file,
    `--out x.gif` ended in a traceback."""
    out = tmp_path / f"x.{suffix}"
    code, _, err = cli("--home", home, "compose", "--out", out, "--steps", "1", "--frames", "2",
                       "--size", "16", "--device", "cpu")  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err, err  # stderr also shows the sampling progress
    assert errors == [f"error: cannot write {out}: No space left on device"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "registry"]
    from dvkit.catalog import Catalog

    with Catalog.open(home) as catalog:
        assert catalog.evaluation_rows() == []


_FULL_DISK_SCRIPT = """
import json, os, sys
from pathlib import Path
import imageio.v3 as iio
import numpy as np
from dvkit.cli.main import run
from dvkit.errors import DvkitError
from dvkit.evaluate.report import write_report
from dvkit.io.video import write_video

folder, home, commands = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
frames = (np.random.default_rng(0).random((16, 64, 64, 3)) * 255).astype(np.uint8)
rows = [{"sampler": {"pair": ["cat", "surf"], "role": "joint"}, "metrics": {"clip_t": 0.3},
         "prompt": "a cat", "seed": seed, "files": []} for seed in range(50)]
jobs = {
    "mp4": lambda: write_video(frames, folder / "x.mp4", 8.0),
    "gif": lambda: write_video(frames, folder / "x.gif", 8.0),
    "report": lambda: write_report(rows, folder),
}
codes = []
for command in commands:
    if command[0] in jobs:
        try:
            jobs[command[0]]()
            codes.append(0)
        except DvkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(1)
    else:
        codes.append(run(["--home", home, *command]))
left = sorted(os.listdir(folder))
unreadable = []
for name in left:
    path = folder / name
    try:
        if name.endswith((".mp4", ".gif", ".png")):
            iio.imread(path, index=None)
        elif name.endswith(".json"):
            json.loads(path.read_text())
    except Exception:
        unreadable.append(name)
print(json.dumps({"codes": codes, "left": left, "unreadable": unreadable}))
"""


def _on_a_full_filesystem(tmp_path: Path, home: Path, commands: list[list[str]]) -> list[str]:
    """Run `commands` (dvkit command lines, or the jobs "mp4", "gif", "report" of the script)
    with their outputs in a 64 KB tmpfs that has 4 KB free, mounted in a private mount
    namespace (needs root with CAP_SYS_ADMIN: skipped elsewhere); check that each failed with
    one `error:` line and that the tmpfs holds no partial or unreadable file; return the
    error lines."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    folder = tmp_path / "full"
    folder.mkdir()
    shell = (
        f"mount -t tmpfs -o size=64k tmpfs {folder} || exit 77; "
        f"head -c 61440 /dev/zero > {folder}/filler; "
        f'exec "$0" -c "$1" {folder} {home} "$2"'
    )
    commands = [[arg.replace("FULL", str(folder)) for arg in command] for command in commands]
    script = textwrap.dedent(_FULL_DISK_SCRIPT)
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell, sys.executable, script, json.dumps(commands)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if result.returncode == 77 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert outcome["codes"] == [1] * len(commands) and len(errors) == len(commands), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert outcome["unreadable"] == [] and "filler" in outcome["left"], outcome
    assert not [name for name in outcome["left"] if name.startswith(".")], outcome  # no .part
    for line in errors:
        assert line.startswith(f"error: cannot write {folder}/"), line
        assert line.endswith(": No space left on device"), line
    return errors


def test_outputs_on_a_real_full_filesystem(home, tmp_path) -> None:
    errors = _on_a_full_filesystem(
        tmp_path,
        home,
        [["mp4"], ["gif"], ["report"], ["sprites", "images", "red circle", "FULL", "--count", "3"],
         ["sprites", "clips", "zigzag", "FULL", "--count", "2"]],
    )  # fmt: skip
    assert [line.split("/")[-1].split(":")[0] for line in errors[:2]] == ["x.mp4", "x.gif"]


@pytest.mark.slow
def test_compose_on_a_real_full_filesystem(home, tmp_path) -> None:
    """The reported example, as reported (a separate process: torch and a sampling run)."""
    settings = ["--steps", "1", "--frames", "8", "--size", "64", "--device", "cpu"]
    errors = _on_a_full_filesystem(
        tmp_path,
        home,
        [["compose", "--out", "FULL/x.mp4", *settings],
         ["compose", "--out", "FULL/x.gif", *settings]],
    )  # fmt: skip
    assert [line.split("/")[-1] for line in errors] == [
        "x.mp4: No space left on device",
        "x.gif: No space left on device",
    ]
