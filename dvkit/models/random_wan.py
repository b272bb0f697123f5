"""A base with the real Wan 2.1 T2V 1.3B architecture and random weights, optionally narrowed:
the `wan` family's counterpart of `dvkit.models.random_base.build_modelscope_shaped`, for
measuring speed and memory on the real shapes with no download.

The configs it follows (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, diffusers config.json files):

- Transformer: `WanTransformer3DModel`, 30 blocks of 12 heads × 128 (width 1536), FFN 8960,
  patches 1×2×2, 16 latent channels, text_dim 4096, freq_dim 256, cross-attention norm on,
  `rms_norm_across_heads` q/k norm, RoPE over up to 1024 positions.
- VAE: `AutoencoderKLWan`, base width 96, multipliers 1/2/4/4, 2 residual blocks per level,
  temporal downsampling in the last two levels (8× space, 4× time), z_dim 16, diffusers'
  default `latents_mean` / `latents_std`.
- Text: umt5-xxl's encoder (`UMT5EncoderModel`): width 4096, 24 layers, 64 heads of 64, gated
  GELU FFN 10240, 32 relative-position buckets up to distance 128, 256,384 rows. The tokenizer
  is `tiny_wan`'s small one, padding to umt5's 512 tokens, so the text encoder reads as many
  positions as on the real base.
- Scheduler: `tiny_wan.wan_scheduler()` (UniPC, flow prediction, shift 3).

Width rules: `width_scale` multiplies the transformer's per-head width (an even number; heads
stay 12), its FFN, the VAE's base width (a multiple of 8) and UMT5's width (a multiple of its
64 heads), per-head width (even) and FFN; `text_layers` shortens the text encoder. Module
structure (blocks, layers, heads) is the original's at every scale.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from dvkit.models.components import BaseComponents
from dvkit.models.random_base import round_to_multiple
from dvkit.models.tiny_wan import build_wan_tokenizer, umt5_encoder, wan_scheduler

WAN_SHAPED_NAME = "wan-shaped"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
HEADS, HEAD_WIDTH, FFN, BLOCKS = 12, 128, 8960, 30
UMT5_WIDTH, UMT5_HEADS, UMT5_HEAD_WIDTH, UMT5_FFN, UMT5_LAYERS = 4096, 64, 64, 10240, 24
UMT5_ROWS = 256384
UMT5_TOKENS = 512
VAE_WIDTH = 96


def build_wan_shaped(
    width_scale: float = 1.0, text_layers: int | None = None, seed: int = 0
) -> BaseComponents:
    """Wan 2.1 T2V 1.3B components with seeded random weights; see the module docstring. The
    same arguments always give the same weights. `ValueError` for a scale or layer count that
    is not positive."""
    if not width_scale > 0:
        raise ValueError(f"width_scale must be positive, not {width_scale}")
    if text_layers is not None and text_layers < 1:
        raise ValueError(f"text_layers must be at least 1, not {text_layers}")
    text_width = round_to_multiple(UMT5_WIDTH * width_scale, UMT5_HEADS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = wan_shaped_transformer(width_scale)
        vae = AutoencoderKLWan(base_dim=round_to_multiple(VAE_WIDTH * width_scale, 8), z_dim=16)
        text_encoder = umt5_encoder(
            UMT5_ROWS,
            text_width,
            heads=UMT5_HEADS,
            head_width=round_to_multiple(UMT5_HEAD_WIDTH * width_scale, 2),
            ffn=round_to_multiple(UMT5_FFN * width_scale, 8),
            layers=UMT5_LAYERS if text_layers is None else text_layers,
            buckets=32,
        )
    return BaseComponents(
        unet=transformer,
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_wan_tokenizer(UMT5_TOKENS),
        scheduler=wan_scheduler(),
        name=WAN_SHAPED_NAME,
        architecture="wan",
    )


def wan_shaped_transformer(width_scale: float = 1.0) -> WanTransformer3DModel:
    """Wan 2.1 T2V 1.3B's transformer, narrowed by `width_scale` as `build_wan_shaped` narrows
    it (text_dim: UMT5's scaled width), freshly initialised from torch's RNG, in eval mode."""
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=round_to_multiple(HEAD_WIDTH * width_scale, 2),
        in_channels=16,
        out_channels=16,
        text_dim=round_to_multiple(UMT5_WIDTH * width_scale, UMT5_HEADS),
        freq_dim=256,
        ffn_dim=round_to_multiple(FFN * width_scale, 8),
        num_layers=BLOCKS,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    ).eval()
