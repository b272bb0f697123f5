"""The metric encoders: CLIP through open_clip (default ViT-B-32 with OpenAI weights) and DINO
through timm (default `vit_small_patch16_224.dino`), from the Hugging Face / open_clip caches or
local files; `tiny` builds small seeded ones that need no download (tests and smoke runs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dvkit.errors import DvkitError

DEFAULT_CLIP = "ViT-B-32:openai"
DEFAULT_DINO = "vit_small_patch16_224.dino"
TINY = "tiny"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(DvkitError):
    """A metric encoder that cannot be found or loaded."""


@dataclass
class ImageTower:
    """Any image encoder: resize, normalise, embed, L2-normalise."""

    model: nn.Module
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @torch.no_grad()
    def images(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Normalised embeddings (N, D) of frames (N, H, W, 3) uint8 or floats in [0, 1],
        resized on the shorter side and centre-cropped as CLIP's preprocessing does."""
        device = next(self.model.parameters()).device
        pixels = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
        pixels = pixels.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        outputs = []
        for chunk in pixels.split(batch_size):
            chunk = _resize_and_crop(chunk.to(device), self.image_size)
            outputs.append(self._embed((chunk - mean) / std).float())
        embeddings = torch.cat(outputs)
        return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


@dataclass
class ClipScorer(ImageTower):
    """CLIP: images and texts in one space."""

    tokenizer: object = None

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        embeddings = self.model.encode_text(self.tokenizer(prompts).to(device)).float()
        return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def load_clip(spec: str = DEFAULT_CLIP, device: torch.device | str = "cpu") -> ClipScorer:
    """`tiny`, or open_clip `MODEL:PRETRAINED` (PRETRAINED may be a local weights file)."""
    import open_clip

    if spec == TINY:
        from dvkit.models.image_encoder import load_image_encoder

        tiny = load_image_encoder(TINY, device)
        return ClipScorer(tiny.model, tiny.image_size, tiny.mean, tiny.std,
                          open_clip.get_tokenizer("ViT-B-32"))  # fmt: skip
    name, _, pretrained = spec.partition(":")
    if name not in open_clip.list_models():
        raise EncoderError(f"unknown open_clip model {name!r} in CLIP encoder {spec!r}")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, device=device)
    except (RuntimeError, OSError, ValueError):
        raise EncoderError(
            f"CLIP encoder {spec!r} is not in the Hugging Face / open_clip cache and cannot be "
            f"downloaded; fetch its weights on a machine with network (open_clip downloads them "
            f"on first use) or pass MODEL:/path/to/weights"
        ) from None
    size = model.visual.image_size
    return ClipScorer(
        model.eval(), size[0] if isinstance(size, tuple) else size,
        tuple(getattr(model.visual, "image_mean", None) or IMAGENET_MEAN),
        tuple(getattr(model.visual, "image_std", None) or IMAGENET_STD),
        open_clip.get_tokenizer(name),
    )  # fmt: skip


def load_dino(spec: str = DEFAULT_DINO, device: torch.device | str = "cpu") -> ImageTower:
    """`tiny`, a timm model name with pretrained weights, or `NAME:/path/to/weights`."""
    import timm

    if spec == TINY:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                      img_size=32, patch_size=8, embed_dim=32, depth=1,
                                      num_heads=2)  # fmt: skip
        return ImageTower(model.eval().to(device), 32, IMAGENET_MEAN, IMAGENET_STD)
    name, _, weights = spec.partition(":")
    try:
        options = {"pretrained_cfg_overlay": {"file": weights}} if weights else {}
        model = timm.create_model(name, pretrained=True, num_classes=0, **options)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise EncoderError(f"unknown timm model {name!r} in DINO encoder {spec!r}") from None
        raise EncoderError(_missing(spec)) from None
    except (OSError, ValueError):
        raise EncoderError(_missing(spec)) from None
    config = model.pretrained_cfg
    return ImageTower(
        model.eval().to(device), config.get("input_size", (3, 224, 224))[-1],
        tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD)),
    )  # fmt: skip


def _resize_and_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    resized = F.interpolate(pixels, size=new, mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return resized[..., top : top + size, left : left + size]


def _missing(spec: str) -> str:
    return (
        f"DINO encoder {spec!r} is not in the Hugging Face cache and cannot be downloaded; "
        f"fetch it on a machine with network (timm downloads it on first use) or pass "
        f"NAME:/path/to/weights"
    )
