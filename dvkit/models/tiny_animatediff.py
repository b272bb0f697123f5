"""The built-in `tiny-animatediff` base: an AnimateDiff `UNetMotionModel` built from small
configs and a seed, for tests and smoke runs (its pictures mean nothing).

It is what `UNetMotionModel.from_unet2d` makes of a small `UNet2DConditionModel` and a small
`MotionAdapter`, as a real AnimateDiff base is made of SD 1.5 and a motion adapter; the VAE, text
encoder and tokenizer are the `tiny` base's.
"""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from dvkit.families.animatediff import animatediff_scheduler
from dvkit.models.components import BaseComponents
from dvkit.models.tiny import TEXT_WIDTH, build_tiny_tokenizer, small_text_encoder, small_vae

TINY_ANIMATEDIFF_NAME = "tiny-animatediff"
WIDTHS = (16, 32)


def build_tiny_animatediff_base(seed: int = 0) -> BaseComponents:
    """Build `tiny-animatediff`; the same seed always gives the same weights (and fingerprint)."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNetMotionModel.from_unet2d(small_unet2d(), small_motion_adapter())
        vae = small_vae()
        text_encoder = small_text_encoder(tokenizer, TEXT_WIDTH, intermediate=37)
    return BaseComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=animatediff_scheduler(),
        name=TINY_ANIMATEDIFF_NAME,
        architecture="animatediff",
    )


def small_unet2d() -> UNet2DConditionModel:
    """A two-level SD-style UNet (cross-attention at the first level and in the middle)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=WIDTHS,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
    )


def small_motion_adapter() -> MotionAdapter:
    """Motion modules for `small_unet2d`: one per resnet, and one in the middle block."""
    return MotionAdapter(
        block_out_channels=WIDTHS,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
