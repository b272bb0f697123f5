"""Shared fixtures: catalogs in temporary folders and small adapter files built on the fly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dvkit.catalog import Catalog
from dvkit.cli.main import run

# Every test (and every dvkit process a test starts) trains and composes on the built-in `tiny`
# base unless it names another, and runs torch on one thread: the models are tiny, and threads
# competing for two cores with other processes slow a run down many times over.
os.environ["DVKIT_BASE"] = "tiny"
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's catalog: DVKIT_HOME unset, cwd in a fresh folder."""
    monkeypatch.delenv("DVKIT_HOME", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    catalog, created = Catalog.init(tmp_path / "registry")
    catalog.close()
    assert created
    return tmp_path / "registry"


@pytest.fixture(scope="module")
def grid_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog with subjects cat and dog and motion surfing, quickly trained on tiny."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    from dvkit.train.api import add_motion, add_subject

    root = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    catalog, _ = Catalog.init(root / "registry")
    with catalog:
        for name in ("cat", "dog"):
            folder = root / name
            folder.mkdir()
            for index in range(2):
                pixels = (rng.random((16, 16, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{index}.png")
            add_subject(name, [folder], catalog=catalog, preset="quick", inversion_steps=1,
                        identity_steps=2)  # fmt: skip
        videos = root / "videos"
        videos.mkdir()
        clip = (rng.random((4, 16, 16, 3)) * 255).astype("uint8")
        iio.imwrite(videos / "0.mp4", clip, plugin="FFMPEG", fps=8)
        add_motion("surfing", [videos], catalog=catalog, preset="quick", steps=2, frames=3)
    return root / "registry"


@pytest.fixture
def catalog(home: Path):
    with Catalog.open(home) as opened:
        yield opened


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """Write a small dvkit adapter file and return its path."""
    counter = iter(range(10**6))

    def make(
        name: str = "cat",
        kind: str = "subject",
        base: str = "tiny",
        seed: int | None = None,
        channels: int = 8,
        description: str = "",
        folder: Path | None = None,
    ) -> Path:
        import torch

        from dvkit.io.adapter_file import TOKEN_EMBEDDING_KEY, AdapterFileInfo, write_adapter_file

        index = next(counter)
        generator = torch.Generator().manual_seed(index if seed is None else seed)
        block = "down_blocks.0.attentions.0.transformer_blocks.0"
        slots = ["attn2"] if kind == "subject" else ["attn1", "attn2", "ff"]
        tensors = {}
        for slot in slots:
            prefix = f"{block}.{slot}_adapter"
            tensors[f"{prefix}.down.weight"] = torch.randn(
                channels // 2, channels, generator=generator
            )
            tensors[f"{prefix}.down.bias"] = torch.randn(channels // 2, generator=generator)
            tensors[f"{prefix}.up.weight"] = torch.randn(
                channels, channels // 2, generator=generator
            )
            tensors[f"{prefix}.up.bias"] = torch.randn(channels, generator=generator)
            if kind == "motion":  # the appearance condition (image embeddings of width 12)
                tensors[f"{prefix}.cond.weight"] = torch.randn(channels, 12, generator=generator)
                tensors[f"{prefix}.cond.bias"] = torch.randn(channels, generator=generator)
        if kind == "subject":
            tensors[TOKEN_EMBEDDING_KEY] = torch.randn(1, 16, generator=generator)
        info = AdapterFileInfo(
            kind=kind,
            name=name,
            base=base,
            base_fingerprint=f"{base}-fingerprint",
            architecture="dvkit-tiny",
            token=f"<{name}>" if kind == "subject" else None,
            initializer="cat" if kind == "subject" else None,
            placement=slots,
            training={"steps": 10},
            description=description,
        )
        path = (folder or tmp_path) / f"{name}-{index}.safetensors"
        write_adapter_file(path, tensors, info)
        return path

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def invoke(*args: str | Path) -> tuple[int, str, str]:
        code = run([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def run_dvkit() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m dvkit` in a subprocess (for start-up, import and crash behaviour)."""

    def invoke(*args: str | Path, env: dict[str, str] | None = None, **kwargs):
        return subprocess.run(
            [sys.executable, "-m", "dvkit", *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            **kwargs,
        )

    return invoke


@pytest.fixture
def train_loras(catalog: Catalog, tmp_path: Path) -> Callable[..., tuple]:
    """A trainer of LoRAs, `train(base, size, frames, **subject)` → the records of subject `cat`
    (1 inversion + 2 LoRA steps, `subject` options) and motion `surf` (2 steps on `frames`
    frames), trained in `catalog` on 2 random `size`-pixel images and one video of 8 frames."""

    def train(base: str, size: int, frames: int, **subject: object) -> tuple:
        import numpy as np
        from PIL import Image

        from dvkit.train.api import add_motion, add_subject

        rng = np.random.default_rng(0)
        images, video = tmp_path / "images", tmp_path / "videos" / "0"
        images.mkdir()
        video.mkdir(parents=True)
        for folder, count in ((images, 2), (video, 8)):
            for index in range(count):
                pixels = (rng.random((size, size, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{index}.png")
        fast = {"preset": "quick", "resolution": size, "base": base, "adapter": "lora"}
        cat = add_subject("cat", [images], catalog=catalog, inversion_steps=1, identity_steps=2,
                          **fast, **subject)  # fmt: skip
        surf = add_motion("surf", [video], catalog=catalog, steps=2, frames=frames, **fast)
        return cat, surf

    return train


@pytest.fixture
def fused_pipeline(cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> Callable:
    """`fuse(home, pipeline_class, subject, motion, scales)` → `pipeline_class.from_pretrained`
    of the folder `dvkit export --merged --into-base` writes for LoRAs `subject` and `motion` at
    `scales` (subject's, motion's), progress bar off."""

    def fuse(home: Path, pipeline_class: type, subject: str, motion: str, scales: tuple) -> object:
        out = tmp_path / "fused"
        subject_scale, motion_scale = (str(scale) for scale in scales)
        code, _, err = cli("--home", home, "export", "--merged", "--into-base", out,
                           "--subject", subject, "--subject-scale", subject_scale,
                           "--motion", motion, "--motion-scale", motion_scale)  # fmt: skip
        assert code == 0, err
        pipe = pipeline_class.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return fuse
