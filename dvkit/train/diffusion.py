"""The diffusion objective: noising cached latents, the scheduler's target (ε or v) and the
(optionally masked) MSE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw VAE latents from cached posterior parameters (cheap: no VAE call)."""
    return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)


def add_noise(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    generator: torch.Generator,
    offset_noise: float,
    high_noise_share: float = 0.0,
    high_noise_band: tuple[float, float] = (0.5, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy latents (B, C, F, H, W), what the UNet should predict, and the timesteps.

    The target is the noise for ε-prediction schedulers and the velocity for v-prediction ones.
    Offset noise adds a per-video, per-channel constant, scaled by `offset_noise`. Timesteps are
    uniform, except that a share `high_noise_share` of the videos (on average) draw theirs from
    `high_noise_band`, given as fractions of the schedule (default: its noisier half).
    """
    batch, channels = latents.shape[:2]
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if offset_noise:
        shape = (batch, channels) + (1,) * (latents.ndim - 2)
        noise = noise + offset_noise * torch.randn(shape, generator=generator, device=device)
    steps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch,), generator=generator, device=device)
    if high_noise_share:
        low, high = (round(bound * steps) for bound in high_noise_band)
        noisier = torch.randint(low, high, (batch,), generator=generator, device=device)
        chosen = torch.rand(batch, generator=generator, device=device) < high_noise_share
        timesteps = torch.where(chosen, noisier, timesteps)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy, scheduler.get_velocity(latents, noise, timesteps), timesteps
    return noisy, noise, timesteps


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error; with a mask (B, 1, F, H, W) only the subject's pixels count."""
    if mask is None:
        return F.mse_loss(prediction.float(), target.float())
    error = (prediction.float() - target.float()) ** 2 * mask
    return error.sum() / (mask.sum() * prediction.shape[1]).clamp(min=1)
