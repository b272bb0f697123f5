"""The identity 'VAE' of pixel-space bases: latents are the pixels themselves, in [-1, 1]."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers.configuration_utils import FrozenDict
from torch import nn


class PixelCodec(nn.Module):
    """Stands where a base's `AutoencoderKL` stands: encode and decode leave pixels unchanged.

    Its config answers what dvkit asks a VAE (scaling factor, downsampling depth, channels).
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.config = FrozenDict(
            scaling_factor=1.0, block_out_channels=[channels], latent_channels=channels
        )
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        """A posterior whose mean is the pixels and whose spread is zero."""
        return SimpleNamespace(
            latent_dist=SimpleNamespace(mean=pixels, std=torch.zeros_like(pixels))
        )

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=latents)
