"""The `animatediff-shaped` base: SD 1.5 + AnimateDiff motion adapter v1-5-3 with random,
narrowed weights."""

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from transformers import CLIPTextModel

from dvkit.models.components import BaseComponents
from dvkit.models.injection import adapter_slots
from dvkit.models.random_animatediff import (
    build_animatediff_shaped,
    clip_l_text_config,
    motion_adapter_config,
    sd15_unet_config,
)
from dvkit.models.random_base import CLIP_VOCAB

SCALE = 0.1


@pytest.fixture(scope="module")
def base() -> BaseComponents:
    return build_animatediff_shaped(width_scale=SCALE, text_layers=2)


def _count(module: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_configs_have_the_published_sizes():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config(1.0))
        adapter = MotionAdapter(**motion_adapter_config(1.0))
        text = CLIPTextModel(clip_l_text_config(1.0))
    assert _parameters(unet) == 859_520_964  # SD 1.5's UNet
    assert _parameters(text) == 123_060_480  # SD 1.5's CLIP ViT-L/14 text encoder
    # v1-5-3's fp32 weights file is 1,670,875,648 bytes: these parameters, the 32-frame
    # positional tables of its 20 motion modules and the safetensors header.
    assert _parameters(adapter) == 417_137_600


def test_block_structure_is_the_full_one(base):
    unet = base.unet
    assert isinstance(unet, UNetMotionModel) and base.architecture == "animatediff"
    assert [type(b).__name__ for b in unet.down_blocks] == (
        ["CrossAttnDownBlockMotion"] * 3 + ["DownBlockMotion"]
    )
    assert [type(b).__name__ for b in unet.up_blocks] == (
        ["UpBlockMotion"] + ["CrossAttnUpBlockMotion"] * 3
    )
    assert type(unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"  # v1-5-3: no motion mid
    assert unet.config.block_out_channels == (32, 64, 128, 128)
    assert unet.config.layers_per_block == 2 and unet.config.motion_max_seq_length == 32
    assert _count(unet, Transformer2DModel) == 16  # 3×2 down, 1 mid, 3×3 up
    assert _count(unet, AnimateDiffTransformer3D) == 20  # 4×2 down, 4×3 up
    assert _count(unet, BasicTransformerBlock) == 36
    assert len(adapter_slots(unet, "subject")) == 16  # beside attn2
    assert len(adapter_slots(unet, "motion")) == 20 * 3  # beside attn1, attn2 and ff
    assert unet.config.cross_attention_dim == base.text_encoder.config.hidden_size == 72
    assert base.text_encoder.config.vocab_size == len(base.tokenizer) == CLIP_VOCAB
    assert base.vae.config.sample_size == 512 and base.vae.config.scaling_factor == 0.18215
    scheduler = base.scheduler.config
    assert scheduler.beta_schedule == "linear" and scheduler.steps_offset == 1


def test_one_forward_pass(base):
    with torch.no_grad():
        text = base.family.encode_text(base, ["a cat surfing"])
        pixels = torch.rand(1, 2, 3, 64, 64) * 2 - 1  # one video of two frames
        mean, _ = base.family.encode_frames(base, pixels)
        video = mean.permute(0, 2, 1, 3, 4)  # (1, 4, 2, 8, 8)
        out = base.family.predict(base, video, torch.tensor([500]), text)
    assert out.shape == video.shape == (1, 4, 2, 8, 8) and torch.isfinite(out).all()
