"""Encoding training data once per run: VAE posteriors and text embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, PreTrainedTokenizerBase


@torch.no_grad()
def encode_frames(
    vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior mean and std of frames (..., 3, H, W) → (..., C, h, w) each."""
    lead = pixels.shape[:-3]
    flat = pixels.reshape(-1, *pixels.shape[-3:])
    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    for chunk in flat.split(batch_size):
        posterior = vae.encode(chunk.to(device, dtype)).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    scale = vae.config.scaling_factor
    mean, std = torch.cat(means) * scale, torch.cat(stds) * scale
    return mean.reshape(*lead, *mean.shape[1:]), std.reshape(*lead, *std.shape[1:])


def as_video(latents: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) frames-first latents → (B, C, F, h, w) as the UNet takes them."""
    return latents.permute(0, 2, 1, 3, 4)


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_text(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, prompts: Sequence[str]
) -> torch.Tensor:
    """Last hidden states (N, tokens, width) of the prompts, with gradients if enabled."""
    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(ids)[0]
