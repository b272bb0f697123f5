"""The official DreamVideo recipe (issue 15), point by point, on the tiny base: offset noise at
inference and per frame in training, masks in both subject stages, reference images and frames
of imported adapters, the warm-up and the two official motion presets."""

import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import load
from test_vgen_import import IDENTITY_SLOTS, TINY_SPATIAL, save_adapter, vgen_state

from dvkit.catalog import Catalog
from dvkit.errors import DvkitError, DvkitWarning
from dvkit.evaluate.grid import bench
from dvkit.generate import compose as compose_module
from dvkit.generate.compose import compose
from dvkit.generate.sampler import Row, SamplerSettings, initial_latents
from dvkit.io.export import export_merged, load_merged
from dvkit.models.builtin import sampler_choices
from dvkit.models.tiny import build_tiny_base
from dvkit.train.api import add_motion, add_subject
from dvkit.train.diffusion import add_noise, diffusion_loss, latent_masks
from dvkit.train.loop import LoopSettings, SilentReporter, Stage, run_stage
from dvkit.train.settings import QUICK, MotionSettings, SubjectSettings, preset_values
from dvkit.train.subject import train_subject

CPU = torch.device("cpu")
ENCODERS = {"clip": "tiny", "dino": "tiny", "device": "cpu"}


# ---- 1. offset noise at inference -------------------------------------------------------------


def test_starting_latents_carry_a_per_frame_offset_seeded_per_row() -> None:
    base = build_tiny_base()
    settings = SamplerSettings(steps=2, frames=4, height=16, width=16, offset_noise=0.1)
    rows = [Row("a cat", seed=3), Row("a dog", seed=7)]
    together = initial_latents(base, rows, settings, 1.0)
    alone = initial_latents(base, rows[1:], settings, 1.0)
    assert torch.equal(together[1:], alone)  # a row's latents do not depend on its neighbours
    generator = torch.Generator().manual_seed(7)
    plain = torch.randn((1, 4, 4, 16, 16), generator=generator)  # the row's own noise, first
    offset = alone - plain
    assert torch.allclose(offset, offset[..., :1, :1].expand_as(offset), atol=1e-6)  # over h, w
    per_frame = offset[0, :, :, 0, 0]  # (channels, frames)
    assert (per_frame[:, 1:] - per_frame[:, :-1]).abs().min() > 1e-4  # each frame its own
    expected = 0.1 * torch.randn((1, 4, 4, 1, 1), generator=generator)  # then randn(b, c, f, 1, 1)
    assert torch.allclose(offset, expected.expand_as(offset), atol=1e-6)
    without = initial_latents(base, rows[1:], replace(settings, offset_noise=0.0), 1.0)
    assert torch.equal(without, plain)  # built-in bases: plain Gaussian noise, as before


def test_offset_noise_defaults_to_the_official_on_real_bases_only() -> None:
    assert sampler_choices("ms", None, None, None)[3] == 0.1
    assert sampler_choices("tiny", None, None, None)[3] == 0.0
    assert sampler_choices("sprites", None, None, None)[3] == 0.0
    assert sampler_choices("tiny", None, None, None, 0.3)[3] == 0.3
    with pytest.raises(DvkitError, match="--offset-noise must be a finite number from 0 to 1"):
        SamplerSettings(offset_noise=-0.1)


def test_compose_records_and_applies_offset_noise(cli, catalog, tmp_path) -> None:
    plain = compose(catalog=catalog, steps=2, frames=3, size=16, record=False)
    offset = compose(catalog=catalog, steps=2, frames=3, size=16, offset_noise=0.5, record=False)
    assert not np.array_equal(plain.frames, offset.frames)
    args = ("--home", catalog.home, "compose", "--steps", "2", "--frames", "3", "--size", "16")
    code, _, err = cli(*args, "--offset-noise", "0.5", "--out", tmp_path / "v.gif")
    assert code == 0, err
    assert catalog.evaluation_rows()[-1]["sampler"]["offset_noise"] == 0.5
    code, _, err = cli("--home", catalog.home, "compose", "--offset-noise", "-1")
    assert code == 2 and err.strip().splitlines() == [
        "error: Invalid value for '--offset-noise': '-1' is not a finite number from 0 to 1"
    ]


# ---- 2. offset noise in training ------------------------------------------------------------


def test_training_offset_noise_is_drawn_per_video_channel_and_frame() -> None:
    latents = torch.zeros(2, 4, 5, 6, 6)
    _, target, _ = add_noise(DDIMScheduler(), latents, torch.Generator().manual_seed(0), 0.1)
    generator = torch.Generator().manual_seed(0)
    plain = torch.randn(latents.shape, generator=generator)
    offset = 0.1 * torch.randn((2, 4, 5, 1, 1), generator=generator)  # randn(b, c, f, 1, 1)
    assert torch.allclose(target - plain, offset.expand_as(plain), atol=1e-6)
    assert offset[:, :, 1:].sub(offset[:, :, :-1]).abs().min() > 0


# ---- 3. masks -------------------------------------------------------------------------------


def test_masked_loss_is_the_plain_mean_over_all_elements() -> None:
    prediction = torch.zeros(1, 2, 1, 2, 2)
    target = torch.tensor([[1.0, 5.0], [5.0, 5.0], [2.0, 10.0], [10.0, 10.0]]).view(1, 2, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 1, 2, 2)
    # (1² + 2²) over the one subject pixel, divided by all 8 elements (not by the mask's area)
    assert diffusion_loss(prediction, target, mask).item() == pytest.approx(5 / 8)
    assert diffusion_loss(prediction, target).item() == pytest.approx(
        (1 + 25 * 3 + 4 + 100 * 3) / 8
    )


def test_masks_are_resized_nearest_like_pil() -> None:
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:11, 5:14] = 1
    resized = latent_masks(torch.from_numpy(mask).float()[None, None], (4, 4))
    assert set(resized.unique().tolist()) <= {0.0, 1.0}
    pil = Image.fromarray(mask * 255).resize((4, 4), Image.NEAREST)
    assert np.array_equal(resized[0, 0].numpy(), np.asarray(pil) / 255)


def test_textual_inversion_counts_only_the_subject_pixels(tmp_path) -> None:
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    settings = SubjectSettings(**{**QUICK["subject"], "inversion_steps": 3, "identity_steps": 0,
                                  "token": "<cat>", "initializer": "cat"})  # fmt: skip
    half = torch.zeros(2, 1, 16, 16)
    half[..., :8] = 1

    def learned(masks, folder):
        result = train_subject(build_tiny_base(), pixels, masks, settings, CPU, torch.float32,
                               tmp_path / folder, SilentReporter())  # fmt: skip
        return result.embedding, result.loss_curves["inversion"]

    unmasked, _ = learned(None, "a")
    masked, _ = learned(half, "b")
    empty, losses = learned(torch.zeros(2, 1, 16, 16), "c")
    assert not torch.equal(masked, unmasked)  # the mask changes what the row learns
    base = build_tiny_base()
    cat = base.text_encoder.get_input_embeddings().weight[
        base.tokenizer.convert_tokens_to_ids("cat</w>")
    ]
    assert [loss for _, loss in losses] == [0.0] * 3
    assert torch.equal(empty[0], cat)  # no subject pixel: nothing to learn, the row stays put


# ---- 5. and 6. imported subjects' references, imported motions' frames ----------------------


def _fake_sample(base, rows, settings, injector=None, on_step=None) -> torch.Tensor:
    """Black videos of the requested shape, for tests of what `compose` asks the sampler."""
    return torch.zeros(len(rows), settings.frames, settings.height, settings.width, 3)


@pytest.fixture
def imported(cli, home, tmp_path):
    """dog2 (with --references), plain (without) and the motion carturn, imported on tiny."""
    from test_vgen_import import MOTION_SLOTS, TINY_TEMPORAL, save_embedding

    folder = tmp_path / "official"
    folder.mkdir()
    identity = save_adapter(folder / "dog2_adapter_00000500.pth",
                            vgen_state(TINY_SPATIAL, IDENTITY_SLOTS))  # fmt: skip
    other = save_adapter(folder / "plain_adapter_00000500.pth",
                         vgen_state(TINY_SPATIAL, IDENTITY_SLOTS, seed=2))  # fmt: skip
    embedding = save_embedding(folder / "text_embedding_of_dog2_0003000.pth")
    motion = save_adapter(folder / "carTurn_adapter_00001500.pth",
                          vgen_state(TINY_TEMPORAL, MOTION_SLOTS, cond_dim=32, seed=1))  # fmt: skip
    references = tmp_path / "references"
    references.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(references / "dog.png")
    common = ("--home", home, "import", "--base", "tiny", "--embedding", embedding)
    code, _, err = cli(*common, identity, motion, "--references", references)
    assert code == 0, err
    code, _, err = cli(*common, other)
    assert code == 0, err
    return home, references / "dog.png"


def test_import_stores_references_and_the_official_frames(imported, monkeypatch) -> None:
    home, image = imported
    with Catalog.open(home) as catalog:
        dog, plain, motion = (catalog.show(ref) for ref in ("dog2", "plain", "carturn"))
        stored = load(catalog.read_blob(dog.blob))["reference_images"]
        assert "reference_images" not in load(catalog.read_blob(plain.blob))
        assert stored.dtype == torch.uint8 and stored.shape == (1, 8, 8, 3)  # tiny's native size
        assert np.array_equal(stored[0].numpy(), np.asarray(Image.open(image)))
        assert dog.training["reference_files"] == ["dog.png"]
        assert motion.training["frames"] == 32  # the official inference's count
        monkeypatch.setattr(compose_module, "sample", _fake_sample)
        composed = compose("dog2", "carturn", catalog=catalog, steps=1, record=False)
    assert composed.frames.shape[1] == 32  # compose's default: the motion's frames


def test_imported_references_guide_like_the_same_guidance_image(imported) -> None:
    home, image = imported
    with Catalog.open(home) as catalog, warnings.catch_warnings():
        warnings.simplefilter("error", DvkitWarning)
        small = {"steps": 1, "frames": 4, "record": False}
        stored = compose("dog2", "carturn", catalog=catalog, **small)
        given = compose("dog2", "carturn", catalog=catalog, guidance_image=image, **small)
        assert np.array_equal(stored.frames, given.frames)
        with pytest.warns(DvkitWarning, match="zero appearance embedding") as caught:
            bare = compose("plain", "carturn", catalog=catalog, **small)
    (warning,) = [w for w in caught if issubclass(w.category, DvkitWarning)]
    assert "re-import plain@1 with --references DIR" in str(warning.message)
    assert not np.array_equal(bare.frames, stored.frames)


def test_cli_warns_in_one_line_when_a_motion_has_no_guidance_image(cli, imported, tmp_path):
    home, _ = imported
    args = ("--home", home, "compose", "--motion", "carturn", "--steps", "1", "--frames", "2")

    def warned(*more):
        code, _, err = cli(*args, *more)
        assert code == 0, err
        return [line for line in err.splitlines() if line.startswith("warning:")]

    assert warned("--subject", "plain", "--out", tmp_path / "a.gif") == [
        "warning: no guidance image for carturn@1: the motion adapter gets a zero appearance "
        "embedding; give one with --guidance-image, or re-import plain@1 with --references DIR"
    ]
    assert warned("--out", tmp_path / "b.gif") == [
        "warning: no guidance image for carturn@1: the motion adapter gets a zero appearance "
        "embedding; give one with --guidance-image"
    ]
    assert warned("--subject", "dog2", "--out", tmp_path / "c.gif") == []


def test_references_errors_are_one_line_and_register_nothing(
    cli, home, imported, tmp_path, make_adapter
) -> None:
    motion = tmp_path / "official" / "carTurn_adapter_00001500.pth"
    identity = tmp_path / "official" / "dog2_adapter_00000500.pth"
    with Catalog.open(home) as catalog:
        before = catalog.adapter_rows(all_versions=True)
    cases = [
        ((motion, "--name", "turn", "--references", tmp_path / "references"),
         "no identity adapter"),
        ((identity, "--name", "rex", "--embedding",
          tmp_path / "official" / "text_embedding_of_dog2_0003000.pth",
          "--references", tmp_path / "missing"), "missing: no such file or folder"),
    ]  # fmt: skip
    for args, expected in cases:
        code, _, err = cli("--home", home, "import", "--base", "tiny", *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert expected in lines[0]
    code, _, err = cli("--home", home, "import", make_adapter("kit"), "--references", tmp_path)
    assert code == 1 and err.strip().splitlines() == [
        "error: --base, --embedding and --references apply to official .pth checkpoints and "
        "textual-inversion embeddings; dvkit files name their own base and carry their own "
        "images"
    ]
    with Catalog.open(home) as catalog:
        assert catalog.adapter_rows(all_versions=True) == before


# ---- 8. warm-up -----------------------------------------------------------------------------


def test_warmup_starts_at_zero_and_reaches_the_full_rate_at_step_10(monkeypatch, tmp_path):
    rates: list[float] = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    weight = torch.nn.Parameter(torch.zeros(3))
    stage = Stage("warm", 12, 0.1, {"w": weight}, lambda _: ((weight - 1) ** 2).sum())
    run_stage(stage, LoopSettings(warmup_steps=10), tmp_path, torch.Generator(),
              SilentReporter(), resume=False)  # fmt: skip
    assert rates[0] == 0.0 and rates[10] == rates[11] == 0.1
    assert rates == pytest.approx([0.1 * min(1.0, step / 10) for step in range(12)])


# ---- 9. the two official motion presets and λ_uncond ---------------------------------------


def test_presets_are_the_two_official_motion_configs(cli, home) -> None:
    def motion(preset):
        s = MotionSettings(**preset_values(preset, "motion"))
        return s.image_dropout, s.steps, s.batch_size, s.image_strength_uncond, s.preset

    assert motion("official") == (0.0, 1000, 2, 0.0, "official")  # playingGuitar
    assert motion("official-carturn") == (0.5, 3000, 1, 1.0, "official-carturn")
    with pytest.raises(DvkitError, match="does not apply to a subject"):
        preset_values("official-carturn", "subject")
    with pytest.raises(DvkitError, match="official, official-carturn, quick"):
        preset_values("paper", "motion")
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", home, "--preset",
                       "official-carturn")  # fmt: skip
    assert code == 1 and err.strip().splitlines() == [
        "error: preset 'official-carturn' does not apply to a subject (use official, quick)"
    ]


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """A subject `cat` and motions `guitar` (quick: λ_uncond 0) and `car` (official-carturn)."""
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "videos").mkdir()
    for index in range(2):
        pixels = (rng.random((16, 16, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
    clip = (rng.random((4, 16, 16, 3)) * 255).astype("uint8")
    iio.imwrite(root / "videos" / "0.mp4", clip, plugin="FFMPEG", fps=8)
    catalog, _ = Catalog.init(root / "registry")
    small = {"steps": 2, "frames": 3, "resolution": 16, "fps": None, "lr": 1e-3}
    with catalog:
        add_subject("cat", [root / "images"], catalog=catalog, preset="quick",
                    inversion_steps=1, identity_steps=2)  # fmt: skip
        add_motion("guitar", [root / "videos"], catalog=catalog, preset="quick", **small)
        add_motion("car", [root / "videos"], catalog=catalog, preset="official-carturn", **small)
    return root / "registry"


@pytest.fixture
def trained(trained_home, tmp_path):
    shutil.copytree(trained_home, tmp_path / "registry")
    with Catalog.open(tmp_path / "registry") as opened:
        yield opened


def test_motions_record_their_preset_and_compose_uses_their_lambda(trained, monkeypatch) -> None:
    car = trained.show("car").training
    assert (car["preset"], car["image_dropout"], car["batch_size"]) == ("official-carturn", 0.5, 1)
    assert car["image_strength_uncond"] == 1.0
    assert trained.show("guitar").training["image_strength_uncond"] == 0.0
    seen: list[Row] = []

    def fake_sample(base, rows, settings, injector=None, on_step=None):
        seen.extend(rows)
        return _fake_sample(base, rows, settings)

    monkeypatch.setattr(compose_module, "sample", fake_sample)
    for motion, given, expected in (("car", None, 1.0), ("guitar", None, 0.0),
                                    ("guitar", 0.5, 0.5)):  # fmt: skip
        compose("cat", motion, catalog=trained, image_strength_uncond=given, steps=1)
        assert seen[-1].image_strength_uncond == expected
        assert trained.evaluation_rows()[-1]["sampler"]["image_strength_uncond"] == expected


def test_bench_uses_each_motions_lambda_and_keys_cells_by_offset_noise(trained) -> None:
    common = {"seeds": [0], "steps": 1, "frames": 2, **ENCODERS}
    first = bench(trained, ["cat"], ["guitar", "car"], **common)
    by_motion = {
        row["sampler"]["pair"][1]: row["sampler"]["image_strength_uncond"]
        for row in first.rows
        if row["sampler"]["role"] == "joint"
    }
    assert by_motion == {"guitar@1": 0.0, "car@1": 1.0}
    assert {row["sampler"]["offset_noise"] for row in first.rows} == {0.0}  # tiny's default
    offset = bench(trained, ["cat"], ["guitar"], offset_noise=0.2, **common)
    assert (offset.generated, offset.skipped) == (4, 0)  # other sampler settings: new cells
    assert {row["sampler"]["offset_noise"] for row in offset.rows} == {0.2}
    again = bench(trained, ["cat"], ["guitar"], offset_noise=0.2, **common)
    assert (again.generated, again.skipped) == (0, 4)


def test_merged_export_records_lambda_and_offset_noise(trained, tmp_path) -> None:
    export_merged(trained, "cat", "car", tmp_path / "car.safetensors", offset_noise=0.05)
    export_merged(trained, "cat", "guitar", tmp_path / "guitar.safetensors")
    car = load_merged(tmp_path / "car.safetensors")
    guitar = load_merged(tmp_path / "guitar.safetensors")
    assert (car.image_strength_uncond, car.offset_noise) == (1.0, 0.05)
    assert (guitar.image_strength_uncond, guitar.offset_noise) == (0.0, 0.0)  # tiny's own
    compose(merged=tmp_path / "car.safetensors", catalog=trained, steps=1)
    sampler = trained.evaluation_rows()[-1]["sampler"]
    assert (sampler["offset_noise"], sampler["image_strength_uncond"]) == (0.05, 1.0)
