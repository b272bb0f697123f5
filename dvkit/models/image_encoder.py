"""Image encoders for appearance guidance: OpenCLIP `ViT-H-14:laion2b_s32b_b79k` for real bases
(from the open_clip / Hugging Face cache), `tiny` (seeded random weights, no download) for tests,
and `sprites` (colour and centred shape from pixels, see `dvkit.sprites.appearance`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dvkit.errors import DvkitError

TINY_SPEC = "tiny"
SPRITES_SPEC = "sprites"
TINY_EMBED_DIM = 32
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoderError(DvkitError):
    """An image encoder that cannot be found or loaded."""


class AppearanceEncoder(Protocol):
    """What appearance guidance needs of an encoder: its spec, width and `encode`."""

    spec: str
    embed_dim: int

    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Embeddings (N, embed_dim) of pixels (N, 3, H, W) in [-1, 1]."""
        ...


@dataclass
class ImageEncoder:
    """An OpenCLIP model used through its image tower."""

    model: nn.Module
    spec: str
    image_size: int
    embed_dim: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Unnormalised image embeddings (N, embed_dim) of pixels (N, 3, H, W) in [-1, 1]."""
        device = next(self.model.parameters()).device
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        outputs = []
        for chunk in pixels.split(batch_size):
            images = (chunk.to(device, torch.float32) + 1) / 2
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            ).clamp(0, 1)
            outputs.append(self.model.encode_image((images - mean) / std).float())
        return torch.cat(outputs)


def load_image_encoder(spec: str, device: torch.device | str = "cpu") -> AppearanceEncoder:
    """`tiny`, `sprites`, or `MODEL:PRETRAINED` as open_clip names them (PRETRAINED may be a
    local file)."""
    if spec == TINY_SPEC:
        return _tiny_encoder().to_device(device)
    if spec == SPRITES_SPEC:
        from dvkit.sprites.appearance import SpritesAppearanceEncoder

        return SpritesAppearanceEncoder()
    name, _, pretrained = spec.partition(":")
    import open_clip

    if name not in open_clip.list_models():
        raise ImageEncoderError(f"unknown open_clip model {name!r} in image encoder {spec!r}")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, device=device)
    except (RuntimeError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        if "download" in detail.lower() or "cache" in detail.lower():
            detail = "its weights are not in the Hugging Face cache and could not be downloaded"
        raise ImageEncoderError(
            f"cannot load image encoder {spec!r}: {detail[:200]}; fetch the weights first "
            "(open_clip keeps them in the Hugging Face cache) or pass MODEL:/path/to/weights"
        ) from None
    size = model.visual.image_size
    return ImageEncoder(
        model=model.eval(),
        spec=spec,
        image_size=size[0] if isinstance(size, tuple) else size,
        embed_dim=model.visual.output_dim,
        mean=tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN),
        std=tuple(getattr(model.visual, "image_std", None) or OPENAI_STD),
    )


def _tiny_encoder() -> _TinyEncoder:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(
            embed_dim=TINY_EMBED_DIM,
            vision_cfg=CLIPVisionCfg(
                layers=1, width=32, head_width=16, patch_size=8, image_size=32
            ),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=16, heads=2, layers=1),
        )
    return _TinyEncoder(model=model.eval(), spec=TINY_SPEC, image_size=32, embed_dim=TINY_EMBED_DIM)


class _TinyEncoder(ImageEncoder):
    def to_device(self, device: torch.device | str) -> ImageEncoder:
        self.model.to(device)
        return self
