"""A base with the real ModelScope T2V architecture and random weights, optionally narrowed.

`build_modelscope_shaped()` gives the components of `ali-vilab/text-to-video-ms-1.7b` (UNet3D,
SD VAE, OpenCLIP-H text encoder, DDIM schedule) with seeded random weights, so speed and memory
of training and sampling can be measured on the real shapes with no download. `width_scale`
narrows every width by the same factor (module structure unchanged: same blocks, layers, heads
layout) for CPU use; `text_layers` shortens the text encoder.

Width rules: the UNet's and VAE's channel counts keep the ratios 1:2:4:4 of the original and are
multiples of 32 (their GroupNorm groups). The UNet's `attention_head_dim` config value is the
*number of heads* (64 at full width: 5, 10 and 20 channels per head in its three widths); narrowed,
it is the largest divisor of the first width not above a fifth of it, so heads keep at least
5 channels and divide every block width. The text width (= the UNet's `cross_attention_dim`) is a
multiple of its 16 heads.

`build_vit_h_shaped_encoder()` gives an OpenCLIP ViT-H/14-shaped image encoder (the official
appearance-guidance encoder) with random weights, narrowed the same way.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dvkit.models.components import BaseComponents, dreamvideo_scheduler
from dvkit.models.image_encoder import ImageEncoder
from dvkit.models.tiny import BOS_TOKEN, EOS_TOKEN, MAX_TOKENS, write_word_vocab

MODELSCOPE_SHAPED_NAME = "modelscope-shaped"
MODELSCOPE_ARCHITECTURE = "modelscope-t2v"
MODELSCOPE_REPO = "ali-vilab/text-to-video-ms-1.7b"

NORM_GROUPS = 32
UNET_WIDTHS = (320, 640, 1280, 1280)
UNET_HEADS = 64  # diffusers' `attention_head_dim`, really the number of heads
VAE_WIDTHS = (128, 256, 512, 512)
TEXT_WIDTH = 1024
TEXT_HEADS = 16
TEXT_LAYERS = 23  # OpenCLIP ViT-H/14's 24 text layers less the last (SD 2 uses the penultimate)
TEXT_FF_RATIO = 4
CLIP_VOCAB = 49408  # OpenAI CLIP BPE: 49406 tokens, then <|startoftext|> and <|endoftext|>
VIT_H_WIDTH = 1280
VIT_H_HEADS = 16
VIT_H_LAYERS = 32
VIT_H_EMBED = 1024
VIT_H_PATCH = 14
VIT_H_IMAGE = 224


def build_modelscope_shaped(
    width_scale: float = 1.0, text_layers: int | None = None, seed: int = 0
) -> BaseComponents:
    """ModelScope T2V components with seeded random weights; see the module docstring.

    The same arguments always give the same weights. At `width_scale=1.0` the UNet has the
    original's 1.41 B parameters and takes about 5.6 GB in float32.
    """
    if not width_scale > 0:
        raise ValueError(f"width_scale must be positive, not {width_scale}")
    if text_layers is not None and text_layers < 1:
        raise ValueError(f"text_layers must be at least 1, not {text_layers}")
    tokenizer = build_clip_sized_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(**unet_config(width_scale))
        vae = AutoencoderKL(**vae_config(width_scale))
        text_encoder = CLIPTextModel(
            text_config(
                width_scale,
                text_layers,
                tokenizer.bos_token_id,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
            )
        )
    return BaseComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=dreamvideo_scheduler(),
        name=MODELSCOPE_SHAPED_NAME,
        architecture=MODELSCOPE_ARCHITECTURE,
    )


def unet_widths(width_scale: float) -> tuple[tuple[int, ...], int]:
    """The UNet's block_out_channels and head count (`attention_head_dim`) at `width_scale`."""
    first = round_to_multiple(UNET_WIDTHS[0] * width_scale, NORM_GROUPS)
    widths = tuple(first * width // UNET_WIDTHS[0] for width in UNET_WIDTHS)
    limit = max(1, first * UNET_HEADS // UNET_WIDTHS[0])
    heads = max(d for d in range(1, limit + 1) if first % d == 0)
    return widths, heads


def text_width(width_scale: float) -> int:
    """The text encoder's hidden size (the UNet's cross_attention_dim) at `width_scale`."""
    return round_to_multiple(TEXT_WIDTH * width_scale, TEXT_HEADS)


def unet_config(width_scale: float = 1.0) -> dict[str, Any]:
    """The `UNet3DConditionModel` config of ModelScope T2V (its unet/config.json), narrowed."""
    widths, heads = unet_widths(width_scale)
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        "block_out_channels": widths,
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": NORM_GROUPS,
        "norm_eps": 1e-5,
        "cross_attention_dim": text_width(width_scale),
        "attention_head_dim": heads,
    }


def vae_config(width_scale: float = 1.0, sample_size: int = 256) -> dict[str, Any]:
    """The Stable Diffusion `AutoencoderKL` config ModelScope T2V uses, narrowed (SD 1.5's own
    VAE config is the same with `sample_size` 512)."""
    first = round_to_multiple(VAE_WIDTHS[0] * width_scale, NORM_GROUPS)
    widths = tuple(first * width // VAE_WIDTHS[0] for width in VAE_WIDTHS)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": widths,
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
    }


def text_config(
    width_scale: float = 1.0,
    text_layers: int | None = None,
    bos_token_id: int = CLIP_VOCAB - 2,
    eos_token_id: int = CLIP_VOCAB - 1,
    pad_token_id: int = CLIP_VOCAB - 1,
) -> CLIPTextConfig:
    """The OpenCLIP ViT-H/14 text tower as a transformers `CLIPTextConfig`, narrowed."""
    return clip_text_config(
        width=text_width(width_scale),
        heads=TEXT_HEADS,
        layers=TEXT_LAYERS if text_layers is None else text_layers,
        projection=round_to_multiple(512 * width_scale, TEXT_HEADS),
        activation="gelu",
        special_ids=(bos_token_id, eos_token_id, pad_token_id),
    )


def clip_text_config(
    width: int,
    heads: int,
    layers: int,
    projection: int,
    activation: str,
    special_ids: tuple[int, int, int] = (CLIP_VOCAB - 2, CLIP_VOCAB - 1, CLIP_VOCAB - 1),
) -> CLIPTextConfig:
    """A CLIP text transformer over CLIP's vocabulary and 77 positions, its MLP 4× `width`;
    `special_ids` are the (bos, eos, pad) token ids."""
    bos, eos, pad = special_ids
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=width,
        intermediate_size=width * TEXT_FF_RATIO,
        projection_dim=projection,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        hidden_act=activation,
        layer_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def build_clip_sized_tokenizer() -> CLIPTokenizer:
    """The tiny tokenizer's merges in a vocabulary of CLIP's size and special-token ids.

    The tiny vocabulary (bytes and the tiny words) is padded with unreachable filler entries to
    49406 entries, then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407 as in OpenAI CLIP,
    so `len(tokenizer)` equals the text encoder's vocab_size and added placeholder tokens grow
    the embedding matrix as they would on the real base.
    """
    with tempfile.TemporaryDirectory(prefix="dvkit-shaped-tokenizer-") as name:
        folder = Path(name)
        write_word_vocab(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        del vocab[BOS_TOKEN], vocab[EOS_TOKEN]
        for index in range(len(vocab), CLIP_VOCAB - 2):
            vocab[f"<|filler_{index}|>"] = index
        vocab[BOS_TOKEN] = CLIP_VOCAB - 2
        vocab[EOS_TOKEN] = CLIP_VOCAB - 1
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)


def build_vit_h_shaped_encoder(
    width_scale: float = 1.0,
    layers: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ImageEncoder:
    """An OpenCLIP CLIP whose image tower is ViT-H/14's (narrowed), with random weights.

    The text tower, never used for appearance guidance, is a token one-layer stub. The pooled
    embedding is 1024-d at full width, like `ViT-H-14:laion2b_s32b_b79k`.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    width = round_to_multiple(VIT_H_WIDTH * width_scale, VIT_H_HEADS)
    embed = round_to_multiple(VIT_H_EMBED * width_scale, VIT_H_HEADS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=embed,
            vision_cfg=CLIPVisionCfg(
                layers=VIT_H_LAYERS if layers is None else layers,
                width=width,
                head_width=width // VIT_H_HEADS,
                patch_size=VIT_H_PATCH,
                image_size=VIT_H_IMAGE,
            ),
            text_cfg=CLIPTextCfg(
                context_length=MAX_TOKENS, vocab_size=CLIP_VOCAB, width=16, heads=2, layers=1
            ),
        )
    return ImageEncoder(
        model=model.eval().to(device),
        spec="vit-h-14-shaped",
        image_size=VIT_H_IMAGE,
        embed_dim=embed,
    )


def round_to_multiple(value: float, unit: int) -> int:
    """`value` rounded to the nearest positive multiple of `unit`."""
    return max(unit, round(value / unit) * unit)
