"""The `animatediff` family on `tiny-animatediff`: the sampler against `AnimateDiffPipeline`,
adapter sites, training, composing across families, and adding bases from folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.bases import add_base, open_base
from dvkit.catalog import Catalog
from dvkit.errors import DvkitError, DvkitWarning
from dvkit.evaluate.grid import bench
from dvkit.generate.compose import compose
from dvkit.generate.sampler import Row, SamplerSettings, initial_latents, sample
from dvkit.io.adapter_file import read_adapter_info
from dvkit.io.export import export_adapter
from dvkit.models.injection import AdapterInjector, adapter_slots, create_adapter_state
from dvkit.models.tiny_animatediff import (
    build_tiny_animatediff_base,
    small_motion_adapter,
    small_unet2d,
)
from dvkit.train.api import add_motion, add_subject


def test_sampler_matches_animatediff_pipeline() -> None:
    from diffusers import AnimateDiffPipeline

    base = build_tiny_animatediff_base()
    pipe = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        motion_adapter=None, scheduler=base.family.sampling_scheduler(base),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    row = Row("a cat surfing", seed=5, negative_prompt="a dog")
    settings = SamplerSettings(steps=4, guidance_scale=7.5, frames=3, height=8, width=8)
    start = initial_latents(base, [row], settings, 1.0)
    expected = pipe(
        "a cat surfing", num_inference_steps=4, height=8, width=8, num_frames=3,
        guidance_scale=7.5, negative_prompt="a dog", latents=start, output_type="pt",
    ).frames  # (1, F, 3, H, W)  # fmt: skip
    ours = sample(base, [row], settings)
    assert ours.shape == (1, 3, 8, 8, 3)
    assert (expected.permute(0, 1, 3, 4, 2) - ours).abs().max().item() <= 1e-5


def test_adapters_sit_at_every_spatial_attn2_and_motion_module_layer() -> None:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    unet = build_tiny_animatediff_base().unet
    spatial = [
        f"{path}.transformer_blocks.{i}"
        for path, module in unet.named_modules() if isinstance(module, Transformer2DModel)
        for i in range(len(module.transformer_blocks))
    ]  # fmt: skip
    temporal = [
        f"{path}.transformer_blocks.{i}"
        for path, module in unet.named_modules() if isinstance(module, AnimateDiffTransformer3D)
        for i in range(len(module.transformer_blocks))
    ]  # fmt: skip
    subject = adapter_slots(unet, "subject")
    motion = adapter_slots(unet, "motion")
    assert [(s.block, s.slot) for s in subject] == [(block, "attn2") for block in spatial]
    assert [(s.block, s.slot) for s in motion] == [
        (block, slot) for block in temporal for slot in ("attn1", "attn2", "ff")
    ]
    assert len(temporal) == 7 and all(".motion_modules." in block for block in temporal)
    assert "mid_block.motion_modules.0.transformer_blocks.0" in temporal


def test_motion_adapters_read_the_input_with_frame_positions() -> None:
    base = build_tiny_animatediff_base()
    injector = AdapterInjector(base.unet)
    fresh = create_adapter_state(base.unet, "motion", cond_dim=32)
    injector.load("m", "motion", {k: torch.randn_like(v) for k, v in fresh.items()})
    slot = adapter_slots(base.unet, "motion")[0]
    block = base.unet.get_submodule(slot.block)
    adapter = injector.get("m").adapter(slot.prefix)
    seen = {}
    hooks = [
        block.norm1.register_forward_pre_hook(lambda _, args: seen.setdefault("h", args[0])),
        adapter.register_forward_pre_hook(lambda _, args: seen.setdefault("a", args[0])),
    ]
    try:
        sample(base, [Row("a cat", adapters={"m": 1.0})], SamplerSettings(steps=1, frames=3,
               height=8, width=8, guidance_scale=1.0), injector)  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    assert block.pos_embed is not None
    assert torch.equal(seen["a"], block.pos_embed(seen["h"]))
    assert not torch.equal(seen["a"], seen["h"])


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray((rng.random((12, 10, 3)) * 255).astype("uint8")).save(
            folder / f"{index}.png"
        )
    return folder


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    clips = [folder / f"{index}" for index in range(2)]
    for clip in clips:
        clip.mkdir()
        for frame in range(4):
            pixels = (rng.random((8, 8, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(clip / f"{frame}.png")
    return clips


def test_training_bench_export_on_animatediff_and_composing_across_families(
    catalog, images, videos, tmp_path
) -> None:
    fast = {"preset": "quick", "resolution": 8, "checkpoint_every": 2}
    cat = add_subject("cat", [images], catalog=catalog, base="tiny-animatediff",
                      inversion_steps=2, identity_steps=2, **fast)  # fmt: skip
    surf = add_motion("surf", videos, catalog=catalog, base="tiny-animatediff", steps=2,
                      frames=4, **fast)  # fmt: skip
    assert (cat.architecture, surf.architecture) == ("animatediff", "animatediff")
    assert surf.placement == ["attn1", "attn2", "ff"]
    video = compose("cat", "surf", catalog=catalog, steps=2, frames=3, size=8)
    assert video.frames.shape == (1, 3, 8, 8, 3)
    grid = bench(catalog, ["cat"], ["surf"], steps=2, frames=3, clip="tiny", dino="tiny",
                 baselines=False)  # fmt: skip
    assert [(row["subject"], row["motion"]) for row in grid.rows] == [("cat@1", "surf@1")]
    exported = export_adapter(catalog, "surf", tmp_path / "surf.safetensors").path
    assert read_adapter_info(exported).architecture == "animatediff"
    Catalog.init(tmp_path / "elsewhere")
    with Catalog.open(tmp_path / "elsewhere") as fresh:
        fresh.import_file(exported)
        with pytest.warns(DvkitWarning, match="no guidance image"):
            again = compose(None, "surf", "a cat", catalog=fresh, steps=2, frames=3, size=8)
    assert again.frames.shape == (1, 3, 8, 8, 3)
    other = add_motion("tinysurf", videos, catalog=catalog, base="tiny", steps=2, frames=4, **fast)
    assert other.architecture == "modelscope-t2v"
    with pytest.raises(DvkitError) as caught:
        compose("cat", "tinysurf", catalog=catalog, steps=2)
    message = str(caught.value)
    assert "tiny-animatediff (animatediff" in message and "tiny (modelscope-t2v" in message


def _save_parts(base, folder, unet):
    unet.save_pretrained(folder / "unet")
    base.vae.save_pretrained(folder / "vae")
    base.text_encoder.save_pretrained(folder / "text_encoder")
    base.tokenizer.save_pretrained(folder / "tokenizer")
    base.scheduler.save_pretrained(folder / "scheduler")


def test_base_add_from_sd_folder_with_motion_adapter_and_from_animatediff_folder(
    catalog, tmp_path
) -> None:
    from diffusers import UNetMotionModel

    tiny = build_tiny_animatediff_base()
    torch.manual_seed(0)
    unet2d, adapter = small_unet2d(), small_motion_adapter()
    sd = tmp_path / "sd15"
    _save_parts(tiny, sd, unet2d)
    adapter.save_pretrained(tmp_path / "motion-adapter")
    record = add_base(catalog, "mine", str(sd), motion_adapter=str(tmp_path / "motion-adapter"))
    assert record.architecture == "animatediff"
    assert record.config["sources"] == {"motion_adapter": str(tmp_path / "motion-adapter")}
    saved = tmp_path / "animatediff"
    _save_parts(tiny, saved, UNetMotionModel.from_unet2d(unet2d, adapter))
    again = add_base(catalog, "saved", str(saved))
    assert again.architecture == "animatediff"
    assert again.fingerprint != record.fingerprint  # other files, though the same weights
    ours, theirs = open_base(catalog, "mine")[0].unet, open_base(catalog, "saved")[0].unet
    assert type(ours).__name__ == "UNetMotionModel"
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    with pytest.raises(DvkitError, match="motion-adapter"):
        add_base(catalog, "bare", str(sd), family="animatediff")
