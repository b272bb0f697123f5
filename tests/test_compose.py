"""The sampler against diffusers' pipeline, per-row adapter batches, and `compose`."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.generate.compose import compose
from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.models.builtin import build_builtin
from dvkit.models.injection import AdapterInjector, create_adapter_state
from dvkit.models.tiny import build_tiny_base
from dvkit.train.api import add_motion, add_subject

SMALL = SamplerSettings(steps=4, frames=3, height=16, width=16)


def _random_adapters(unet, kind, seed):
    generator = torch.Generator().manual_seed(seed)
    state = create_adapter_state(unet, kind, cond_dim=32 if kind == "motion" else None)
    return {k: torch.randn(v.shape, generator=generator) * 0.2 for k, v in state.items()}


def _loaded(base):
    injector = AdapterInjector(base.unet)
    injector.load("s", "subject", _random_adapters(base.unet, "subject", 1))
    injector.load("m", "motion", _random_adapters(base.unet, "motion", 2))
    return base, injector


@pytest.fixture(scope="module")
def loaded():
    return _loaded(build_tiny_base())


@pytest.fixture(scope="module", params=["tiny", "tiny-animatediff"])
def each_family(request):
    """Random adapters loaded on a built-in base of each UNet family."""
    return _loaded(build_builtin(request.param))


def test_sampler_matches_text_to_video_pipeline() -> None:
    from diffusers import TextToVideoSDPipeline

    base = build_tiny_base()
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    pipe = TextToVideoSDPipeline(**{part: getattr(base, part) for part in parts})
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(5)
    expected = pipe(
        "a cat surfing", num_inference_steps=6, height=16, width=16, num_frames=3,
        guidance_scale=7.5, negative_prompt="a dog", generator=generator, output_type="np",
    ).frames  # fmt: skip
    settings = SamplerSettings(steps=6, guidance_scale=7.5, frames=3, height=16, width=16)
    ours = sample(base, [Row("a cat surfing", seed=5, negative_prompt="a dog")], settings)
    assert ours.shape == expected.shape == (1, 3, 16, 16, 3)
    assert (torch.as_tensor(expected) - ours).abs().max().item() <= 1e-5


def test_scale_zero_equals_no_adapters(each_family) -> None:
    base, injector = each_family
    bare = sample(base, [Row("a cat", seed=1)], SMALL)
    zero = sample(base, [Row("a cat", seed=1, adapters={"s": 0.0, "m": 0.0})], SMALL, injector)
    full = sample(base, [Row("a cat", seed=1, adapters={"s": 1.0, "m": 1.0})], SMALL, injector)
    assert (zero - bare).abs().max().item() <= 1e-6
    assert (full - bare).abs().max().item() > 1e-3  # the adapters do act


def test_batch_of_combinations_equals_each_alone(each_family) -> None:
    base, injector = each_family
    embed = torch.randn(32, generator=torch.Generator().manual_seed(3))
    rows = [
        Row("a cat", seed=0, adapters={"s": 1.0}),
        Row("a dog surfing", seed=1, adapters={"s": 0.7, "m": 1.0}, image_embed=embed),
        Row("a bird", seed=2),
        Row("a bear running", seed=3, adapters={"m": 1.2}, image_embed=embed, image_strength=0.5),
    ]
    together = sample(base, rows, SMALL, injector)
    alone = torch.cat([sample(base, [row], SMALL, injector) for row in rows])
    assert (together - alone).abs().max().item() <= 1e-5


def test_motion_until_switches_motion_adapters_off_at_low_noise(loaded) -> None:
    base, injector = loaded
    embed = torch.randn(32, generator=torch.Generator().manual_seed(3))
    row = Row("a cat surfing", seed=2, adapters={"s": 1.0, "m": 1.0}, image_embed=embed)
    calls: list[list[int]] = []  # per UNet call: its timestep, then how often `m` ran in it
    first_motion_adapter = next(iter(injector.get("m").adapters.values()))
    hooks = [
        base.unet.register_forward_pre_hook(lambda _, args: calls.append([int(args[1]), 0])),
        first_motion_adapter.register_forward_hook(lambda *_: calls[-1].__setitem__(1, 1)),
    ]
    try:
        half = sample(base, [row], replace(SMALL, motion_until=0.5), injector)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [[751, 1], [501, 1], [251, 0], [1, 0]]
    always = sample(base, [row], SMALL, injector)
    never = sample(base, [row], replace(SMALL, motion_until=1.0), injector)
    subject_only = sample(
        base, [Row("a cat surfing", seed=2, adapters={"s": 1.0})], SMALL, injector
    )
    assert (never - subject_only).abs().max().item() <= 1e-6
    assert (half - always).abs().max().item() > 1e-3 and (half - never).abs().max().item() > 1e-3


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_motion_until_outside_the_schedule_is_refused(value) -> None:
    from dvkit.errors import DvkitError

    with pytest.raises(DvkitError, match="--motion-until must be a fraction"):
        SamplerSettings(motion_until=value)


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """A catalog with a quickly trained subject `cat` (kept step 2) and motion `surfing`."""
    import imageio.v3 as iio

    from dvkit.catalog import Catalog

    root = tmp_path_factory.mktemp("trained")
    images, videos = root / "images", root / "videos"
    images.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(
            images / f"{index}.png"
        )
    for index in range(2):
        clip = (rng.random((6, 16, 16, 3)) * 255).astype("uint8")
        iio.imwrite(videos / f"{index}.mp4", clip, plugin="FFMPEG", fps=8)
    catalog, _ = Catalog.init(root / "registry")
    with catalog:
        add_subject("cat", [images], catalog=catalog, preset="quick", inversion_steps=2,
                    identity_steps=4, keep_steps=[2])  # fmt: skip
        add_motion("surfing", [videos], catalog=catalog, preset="quick", steps=3, frames=3)
    return root / "registry"


@pytest.fixture
def trained(trained_home, tmp_path):
    """A fresh copy of the trained catalog for each test."""
    import shutil

    from dvkit.catalog import Catalog

    shutil.copytree(trained_home, tmp_path / "registry")
    with Catalog.open(tmp_path / "registry") as catalog:
        yield catalog


def test_compose_writes_records_and_returns_frames(trained, tmp_path) -> None:
    result = compose("cat", "surfing", catalog=trained, seeds=[0, 1], steps=3,
                     formats=["mp4", "gif"])  # fmt: skip
    assert result.prompt == "a <cat> surfing"
    assert result.frames.shape == (2, 3, 16, 16, 3) and result.frames.dtype == np.uint8
    assert [p.suffix for p in result.files] == [".mp4", ".gif", ".mp4", ".gif"]
    assert all(p.is_file() and p.parent == trained.home / "videos" for p in result.files)
    rows = trained.evaluation_rows()
    assert [(r["subject"], r["motion"], r["seed"]) for r in rows] == [
        ("cat@1", "surfing@1", 0),
        ("cat@1", "surfing@1", 1),
    ]
    alone = compose("cat", "surfing", catalog=trained, seeds=[1], steps=3, record=False)
    # A seed's video does not depend on the batch (up to float rounding flipping a uint8 step).
    assert np.abs(alone.frames[0].astype(int) - result.frames[1]).max() <= 1
    assert not alone.files and len(trained.evaluation_rows()) == 2
    step = compose("cat", None, catalog=trained, subject_step=2, steps=3, out=tmp_path / "c.gif")
    assert step.files == [tmp_path / "c.gif"] and step.prompt == "a <cat>"
    assert trained.evaluation_rows()[-1]["subject"] == "cat@1:2"


def test_cli_compose(cli, trained, tmp_path) -> None:
    home = trained.home
    code, out, err = cli("--home", home, "compose", "--subject", "cat", "--motion", "surfing",
                         "--steps", "2", "--seed", "4", "--out", tmp_path / "v.mp4")  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "prompt: a <cat> surfing",
        "settings: base tiny, 2 steps, guidance 9.0, 3 frames, 16×16, seed 4, offset noise 0.0, "
        "motion until 0.0",
        str(tmp_path / "v.mp4"),
    ]
    assert "loss" not in err
    code, out, err = cli("--home", home, "compose", "--motion", "surfing", "--steps", "2",
                         "--prompt", "a bear surfing", "--out", tmp_path)  # fmt: skip
    assert code == 0 and json.dumps(out).count(".mp4") == 1, err


def test_videos_are_named_after_what_they_show(cli, trained, tmp_path) -> None:
    home = trained.home
    made = []
    for args in (
        ("--subject", "cat", "--motion", "surfing"),
        ("--subject", "cat", "--motion", "surfing", "--seed", "0", "--seed", "1"),
        ("--motion", "surfing", "--out", tmp_path / "new" / "folder", "--format", "mp4,gif"),
        ("--subject", "cat@1", "--out", tmp_path / "new" / "folder"),
        ("--base", "tiny", "--out", tmp_path / "new" / "folder"),
    ):
        code, out, err = cli("--home", home, "compose", "--steps", "1", *args)
        assert code == 0, err
        made.append([Path(line).relative_to(line.rsplit("/", 3)[0]).as_posix()
                     for line in out.splitlines()[2:]])  # fmt: skip
    assert made == [
        ["registry/videos/cat-surfing-seed0.mp4"],
        ["registry/videos/cat-surfing-seed0-2.mp4", "registry/videos/cat-surfing-seed1.mp4"],
        ["new/folder/surfing-seed0.mp4", "new/folder/surfing-seed0.gif"],
        ["new/folder/cat-seed0.mp4"],
        ["new/folder/base-seed0.mp4"],
    ]


def test_generations_lists_past_compositions(cli, trained, tmp_path) -> None:
    home = trained.home
    code, out, _ = cli("--home", home, "generations")
    assert code == 0 and out == "no compositions yet (see: dvkit compose)\n"
    for args in (("--subject", "cat", "--seed", "3"), ("--motion", "surfing", "--seed", "5")):
        assert cli("--home", home, "compose", "--steps", "1", *args)[0] == 0
    code, out, err = cli("generations", "--home", home, "--limit", "1")  # --home after too
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("#2  ") and "surfing@1  seed 5  'a video surfing'" in lines[0]
    assert lines[1] == f"    {home / 'videos' / 'surfing-seed5.mp4'}"
    assert lines[2] == (
        "    base tiny, 1 step, guidance 9.0, 3 frames, 16×16, seed 5, offset noise 0.0, "
        "motion until 0.0"
    )
    assert len(lines) == 3
    code, out, _ = cli("generations", "--json", f"--home={home}")
    rows = json.loads(out)
    assert [(r["subject"], r["motion"], r["seed"]) for r in rows] == [
        (None, "surfing@1", 5),
        ("cat@1", None, 3),
    ]
    assert rows[1]["files"] == [str(home / "videos" / "cat-seed3.mp4")]
    assert rows[1]["sampler"]["steps"] == 1 and rows[1]["sampler"]["base"] == "tiny"


def test_the_guidance_image_is_recorded(cli, trained, tmp_path) -> None:
    image = tmp_path / "look.png"
    Image.fromarray(np.full((20, 20, 3), 200, "uint8")).save(image)
    args = ("--motion", "surfing", "--steps", "1", "--guidance-image", image)
    assert cli("--home", trained.home, "compose", *args)[0] == 0
    assert trained.evaluation_rows()[-1]["sampler"]["guidance_image"] == str(image)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--subject", "dog"), "no adapter named 'dog'"),
        (("--motion", "cat"), "cat@1 is a subject adapter, not a motion"),
        (("--subject", "cat", "--subject-step", "7"), "no checkpoint at step 7 (kept: 2)"),
        (("--subject", "cat", "--out", "/dev/null/x.mp4"), "cannot create folder /dev/null"),
        (("--subject", "cat", "--out", "video.avi"), "unsupported video extension .avi"),
        (("--subject", "cat", "--format", "webm"), "unknown video format webm"),
        (("--subject", "cat", "--steps", "0"), "'0' is not a whole number from 1 to"),
        (("--motion", "surfing", "--motion-until", "1.2"), "'--motion-until': '1.2' is not a"),
        (("--subject", "cat", "--device", "tpu"), "unknown device"),
        (("--motion", "surfing", "--guidance-image", "."), "one image file, not folder ."),
    ],
)
def test_cli_compose_errors(cli, trained, args, expected) -> None:
    code, _, err = cli("--home", trained.home, "compose", *args)
    lines = err.strip().splitlines()
    assert code in (1, 2) and len(lines) == 1 and expected in lines[0], err  # 2: usage
    assert trained.evaluation_rows() == []


def test_adapters_of_different_bases_refused(cli, trained, make_adapter) -> None:
    trained.import_file(make_adapter("other-motion", "motion", base="elsewhere"))
    code, _, err = cli(
        "--home", trained.home, "compose", "--subject", "cat", "--motion", "other-motion"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "cat@1 was trained on base tiny" in err and "other-motion@1 on base elsewhere" in err


def test_merged_export_composes_like_its_catalog_entries(trained, tmp_path) -> None:
    from dvkit.io.export import export_merged

    pair = tmp_path / "pair.safetensors"
    export_merged(trained, "cat", "surfing", pair, subject_scale=0.8, steps=3, guidance_scale=7.0,
                  motion_until=0.5)  # fmt: skip
    from_catalog = compose("cat", "surfing", catalog=trained, subject_scale=0.8, steps=3,
                           guidance=7.0, motion_until=0.5, record=False)  # fmt: skip
    from_file = compose(merged=pair, catalog=trained, record=False)
    assert from_file.prompt == from_catalog.prompt == "a <cat> surfing"
    assert np.array_equal(from_catalog.frames, from_file.frames)
    motion_to_the_end = compose("cat", "surfing", catalog=trained, subject_scale=0.8, steps=3,
                                guidance=7.0, record=False)  # fmt: skip
    assert not np.array_equal(motion_to_the_end.frames, from_file.frames)  # the recipe's 0.5
