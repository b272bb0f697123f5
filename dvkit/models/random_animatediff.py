"""A base with the real AnimateDiff architecture (Stable Diffusion 1.5 + motion adapter v1-5-3)
and random weights, optionally narrowed: the `animatediff` family's counterpart of
`dvkit.models.random_base.build_modelscope_shaped`, for measuring speed and memory on the real
shapes with no download.

The configs it follows (diffusers config.json files):

- UNet: `stable-diffusion-v1-5` unet/, a `UNet2DConditionModel`: block_out_channels
  320/640/1280/1280, layers_per_block 2, down blocks CrossAttnDownBlock2D ×3 + DownBlock2D, up
  blocks UpBlock2D + CrossAttnUpBlock2D ×3, cross_attention_dim 768, attention_head_dim 8 (in
  diffusers' UNet2DConditionModel that value is the *number of heads*: 40, 80 and 160 channels
  per head), sample_size 64 (512-pixel images), 32 GroupNorm groups, norm_eps 1e-5. 859.5 M
  parameters.
- Motion modules: `guoyww/animatediff-motion-adapter-v1-5-3`, a `MotionAdapter`: the UNet's
  block_out_channels, motion_layers_per_block 2, motion_num_attention_heads 8,
  motion_norm_num_groups 32, motion_max_seq_length 32 (frames), use_motion_mid_block False
  (v1-5-2 has a motion mid block; v1-5-3 has none). Combined with
  `UNetMotionModel.from_unet2d`, as the `animatediff` family loads a real base.
- VAE: SD 1.5's `AutoencoderKL` (`random_base.vae_config`, sample_size 512).
- Text: SD 1.5's CLIP ViT-L/14 text encoder: 768 wide, 12 layers, 12 heads, MLP 3072,
  `quick_gelu`, projection 768, 77 positions, CLIP's 49408-token vocabulary (the tokenizer is
  `random_base.build_clip_sized_tokenizer`).
- Scheduler: `dvkit.families.animatediff.animatediff_scheduler()`.

Width rules, as for the ModelScope-shaped base: `width_scale` multiplies every width; UNet and
VAE widths keep the ratios 1:2:4:4 and are multiples of 32 (GroupNorm groups), so the 8 spatial
and 8 temporal heads always divide them (narrowed, heads get fewer channels; at width 0.1: 4).
The text width (= the UNet's cross_attention_dim) is a multiple of its 12 heads.
`text_layers` shortens the text encoder. Module structure (blocks, layers, heads) is the
original's at every scale.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from dvkit.families.animatediff import animatediff_scheduler
from dvkit.models.components import BaseComponents
from dvkit.models.random_base import (
    NORM_GROUPS,
    UNET_WIDTHS,
    build_clip_sized_tokenizer,
    clip_text_config,
    round_to_multiple,
    vae_config,
)

ANIMATEDIFF_SHAPED_NAME = "animatediff-shaped"
ANIMATEDIFF_ARCHITECTURE = "animatediff"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_ADAPTER_REPO = "guoyww/animatediff-motion-adapter-v1-5-3"

SD15_HEADS = 8  # UNet2DConditionModel's `attention_head_dim`, really the number of heads
SD15_SAMPLE_SIZE = 64
SD15_VAE_SAMPLE_SIZE = 512
MOTION_HEADS = 8
MOTION_MAX_FRAMES = 32
CLIP_L_WIDTH = 768
CLIP_L_HEADS = 12
CLIP_L_LAYERS = 12


def build_animatediff_shaped(
    width_scale: float = 1.0, text_layers: int | None = None, seed: int = 0
) -> BaseComponents:
    """AnimateDiff (SD 1.5 + motion adapter v1-5-3) components with seeded random weights; see
    the module docstring. The same arguments always give the same weights."""
    if not width_scale > 0:
        raise ValueError(f"width_scale must be positive, not {width_scale}")
    if text_layers is not None and text_layers < 1:
        raise ValueError(f"text_layers must be at least 1, not {text_layers}")
    tokenizer = build_clip_sized_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet2d = UNet2DConditionModel(**sd15_unet_config(width_scale))
        adapter = MotionAdapter(**motion_adapter_config(width_scale))
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        vae = AutoencoderKL(**vae_config(width_scale, sample_size=SD15_VAE_SAMPLE_SIZE))
        special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        text_encoder = CLIPTextModel(clip_l_text_config(width_scale, text_layers, special))
    return BaseComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=animatediff_scheduler(),
        name=ANIMATEDIFF_SHAPED_NAME,
        architecture=ANIMATEDIFF_ARCHITECTURE,
    )


def sd15_widths(width_scale: float) -> tuple[int, ...]:
    """The UNet's (and motion adapter's) block_out_channels at `width_scale`."""
    first = round_to_multiple(UNET_WIDTHS[0] * width_scale, NORM_GROUPS)
    return tuple(first * width // UNET_WIDTHS[0] for width in UNET_WIDTHS)


def clip_l_width(width_scale: float) -> int:
    """The text encoder's hidden size (the UNet's cross_attention_dim) at `width_scale`."""
    return round_to_multiple(CLIP_L_WIDTH * width_scale, CLIP_L_HEADS)


def sd15_unet_config(width_scale: float = 1.0) -> dict[str, Any]:
    """SD 1.5's `UNet2DConditionModel` config (its unet/config.json), narrowed."""
    return {
        "sample_size": SD15_SAMPLE_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": sd15_widths(width_scale),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "norm_num_groups": NORM_GROUPS,
        "norm_eps": 1e-5,
        "cross_attention_dim": clip_l_width(width_scale),
        "attention_head_dim": SD15_HEADS,
    }


def motion_adapter_config(width_scale: float = 1.0) -> dict[str, Any]:
    """The `guoyww/animatediff-motion-adapter-v1-5-3` `MotionAdapter` config, narrowed."""
    return {
        "block_out_channels": sd15_widths(width_scale),
        "motion_layers_per_block": 2,
        "motion_mid_block_layers_per_block": 1,
        "motion_num_attention_heads": MOTION_HEADS,
        "motion_norm_num_groups": NORM_GROUPS,
        "motion_max_seq_length": MOTION_MAX_FRAMES,
        "use_motion_mid_block": False,
    }


def clip_l_text_config(
    width_scale: float = 1.0,
    text_layers: int | None = None,
    special_ids: tuple[int, int, int] | None = None,
) -> CLIPTextConfig:
    """SD 1.5's CLIP ViT-L/14 text encoder as a `CLIPTextConfig`, narrowed; `special_ids` are
    the tokenizer's (bos, eos, pad) ids (default: CLIP's)."""
    width = clip_l_width(width_scale)
    options = {} if special_ids is None else {"special_ids": special_ids}
    return clip_text_config(
        width=width,
        heads=CLIP_L_HEADS,
        layers=CLIP_L_LAYERS if text_layers is None else text_layers,
        projection=width,
        activation="quick_gelu",
        **options,
    )
