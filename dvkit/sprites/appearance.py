"""The sprites base's appearance encoder: what an object looks like, not where it is.

Appearance guidance tells a motion adapter how the object looks so that the adapter need not
learn it from its training clips. On real bases OpenCLIP does that; for the sprites world this
encoder computes it from pixels, with no weights: the object's mean colour (pixels weighted by
brightness) and its brightness mask moved so that its centroid sits in the middle of the frame,
pooled to 8×8. Moving the object leaves the embedding unchanged, so a motion adapter cannot read
positions (its own job) from it, only the look it should keep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dvkit.models.image_encoder import SPRITES_SPEC
from dvkit.sprites.world import SIZE

if TYPE_CHECKING:
    from PIL import Image

POOLED = 8
COLOUR_WEIGHT, MASK_WEIGHT = 4.0, 2.0
"""Scales that keep the 3 colour values from being swamped by the 64 mask values."""


class SpritesAppearanceEncoder:
    """Colour and centred shape of the object in each image, as one embedding."""

    spec = SPRITES_SPEC
    embed_dim = 3 + POOLED * POOLED

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Embeddings (N, 67) of images (N, 3, H, W) in [-1, 1]; other sizes are resized."""
        images = (pixels.float().cpu() + 1) / 2
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="area")
        weight = images.amax(dim=1)  # (N, S, S): brightness, 0 on the black background
        total = weight.sum((1, 2)).clamp(min=1e-6)
        colour = (images * weight[:, None]).sum((2, 3)) / total[:, None]
        centred = _centre(weight, total)
        mask = F.avg_pool2d(centred[:, None], SIZE // POOLED).flatten(1)
        return torch.cat([colour * COLOUR_WEIGHT, mask * MASK_WEIGHT], dim=1)

    def prepare_frame(self, image: Image.Image, pixels: torch.Tensor) -> torch.Tensor:
        """The training frame (3, S, S) in [-1, 1]: the sprites world is drawn at that size."""
        return pixels

    def encode_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, 67) of training frames (N, 3, S, S) in [-1, 1]."""
        return self.encode(prepared)


def _centre(weight: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Each mask (N, S, S) shifted (wrapping round) so that its centroid is at (S/2, S/2)."""
    coords = torch.arange(SIZE, dtype=weight.dtype)
    row = ((weight.sum(2) * coords).sum(1) / total).round().long()
    col = ((weight.sum(1) * coords).sum(1) / total).round().long()
    rows = (coords.long()[None, :] + row[:, None] - SIZE // 2) % SIZE  # (N, S)
    cols = (coords.long()[None, :] + col[:, None] - SIZE // 2) % SIZE
    picked = weight.gather(1, rows[:, :, None].expand(-1, -1, SIZE))
    return picked.gather(2, cols[:, None, :].expand(-1, SIZE, -1))
