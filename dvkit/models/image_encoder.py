"""Image encoders for appearance guidance: OpenCLIP `ViT-H-14:laion2b_s32b_b79k` for real bases
(from the open_clip / Hugging Face cache), `tiny` (seeded random weights, no download) for tests,
and `sprites` (colour and centred shape from pixels, see `dvkit.sprites.appearance`).

What each reads of a training clip's frame (`prepare_frame`): an OpenCLIP encoder the raw
decoded frame, centre-cropped to a square by PIL and then put through open_clip's own
preprocessing, as the official trainer does (DESIGN §1); the built-in encoders the training
frame, as they were made. Frames are prepared one at a time as they are decoded and embedded in
batches (`encode_prepared`), so no raw frame is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dvkit.errors import DvkitError

if TYPE_CHECKING:
    from PIL import Image

TINY_SPEC = "tiny"
SPRITES_SPEC = "sprites"
TINY_EMBED_DIM = 32
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoderError(DvkitError):
    """An image encoder that cannot be found or loaded."""


class AppearanceEncoder(Protocol):
    """What appearance guidance needs of an encoder: its spec and width, `encode` for pictures
    at training size, `prepare_frame` and `encode_prepared` for the frames of training clips."""

    spec: str
    embed_dim: int

    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Embeddings (N, embed_dim) of pixels (N, 3, H, W) in [-1, 1]."""
        ...

    def prepare_frame(self, image: Image.Image, pixels: torch.Tensor) -> torch.Tensor:
        """What `encode_prepared` reads of one frame of a training clip: `image` is the raw
        decoded frame (8-bit RGB, upright, full size), `pixels` (3, S, S) in [-1, 1] the
        training frame made from it. Each encoder keeps the one it is meant for (module
        docstring), at a size that does not depend on the frame's."""
        ...

    def encode_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, embed_dim) of N stacked `prepare_frame` results."""
        ...


@dataclass
class ImageEncoder:
    """An OpenCLIP model used through its image tower, with open_clip's preprocessing."""

    model: nn.Module
    spec: str
    image_size: int
    embed_dim: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    preprocess: Callable[[Image.Image], torch.Tensor] | None = None
    """open_clip's evaluation transform (the third result of `create_model_and_transforms`);
    when not given, `open_clip.image_transform` builds it from `image_size`, `mean`, `std`."""

    def __post_init__(self) -> None:
        if self.preprocess is None:
            from open_clip import image_transform

            self.preprocess = image_transform(
                self.image_size, is_train=False, mean=self.mean, std=self.std
            )

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Unnormalised image embeddings (N, embed_dim) of Pillow images of any size: each is
        centre-cropped to a square by PIL, then preprocessed by open_clip (resize to
        `image_size`, normalise)."""
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            outputs.append(self.encode_prepared(torch.stack([self._prepared(i) for i in chunk])))
        return torch.cat(outputs)

    def prepare_frame(self, image: Image.Image, pixels: torch.Tensor) -> torch.Tensor:
        """The raw frame, centre-cropped and preprocessed: (3, image_size, image_size)."""
        return self._prepared(image)

    @torch.no_grad()
    def encode_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings (N, embed_dim) of preprocessed images."""
        device = next(self.model.parameters()).device
        return self.model.encode_image(prepared.to(device)).float()

    def _prepared(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess(centre_square(image))

    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Unnormalised image embeddings (N, embed_dim) of pixels (N, 3, H, W) in [-1, 1],
        through the same preprocessing as `encode_images`."""
        from PIL import Image

        values = ((pixels.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
        arrays = values.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return self.encode_images([Image.fromarray(array) for array in arrays], batch_size)


@dataclass
class TinyEncoder:
    """A small seeded OpenCLIP model for tests: bicubic-resizes its input to `image_size`."""

    model: nn.Module
    spec: str
    image_size: int
    embed_dim: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Embeddings (N, embed_dim) of pixels (N, 3, H, W) in [-1, 1]."""
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

    def prepare_frame(self, image: Image.Image, pixels: torch.Tensor) -> torch.Tensor:
        """The training frame (3, S, S) in [-1, 1]."""
        return pixels

    def encode_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, embed_dim) of training frames (N, 3, S, S) in [-1, 1]."""
        return self.encode(prepared)

    def to_device(self, device: torch.device | str) -> TinyEncoder:
        self.model.to(device)
        return self


def load_image_encoder(spec: str, device: torch.device | str = "cpu") -> AppearanceEncoder:
    """`tiny`, `sprites`, or `MODEL:PRETRAINED` as open_clip names them (PRETRAINED may be a
    local file).

    Raises:
        ImageEncoderError: an unknown model, or weights that cannot be loaded.
    """
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
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device
        )
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
        preprocess=preprocess,
    )


def centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square of a Pillow image (a crop, no resampling)."""
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _tiny_encoder() -> TinyEncoder:
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
    return TinyEncoder(model=model.eval(), spec=TINY_SPEC, image_size=32, embed_dim=TINY_EMBED_DIM)
