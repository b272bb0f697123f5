"""The diffusion objective: noising cached latents, the scheduler's target (ε or v) and the
(optionally masked) MSE loss, in the official DreamVideo form (VGen
`tools/modules/diffusions/diffusion_ddim.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw VAE latents from cached posterior parameters (cheap: no VAE call)."""
    return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)


def draw_noise(
    latents: torch.Tensor, generator: torch.Generator, offset_noise: float
) -> torch.Tensor:
    """Gaussian noise shaped as `latents` (B, C, F, h, w), plus `offset_noise` ·
    randn(B, C, F, 1, 1) (one constant per video, channel and frame, as the official trainer),
    drawn after the plain noise."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    if offset_noise:
        shape = latents.shape[:3] + (1,) * (latents.ndim - 3)
        offset = torch.randn(shape, generator=generator, device=latents.device)
        noise = noise + offset_noise * offset
    return noise


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
    Offset noise adds `offset_noise` · randn(B, C, F, 1, 1) (one constant per video, channel and
    frame, as the official trainer), drawn after the plain noise. Timesteps are
    uniform, except that a share `high_noise_share` of the videos (on average) draw theirs from
    `high_noise_band`, given as fractions of the schedule (default: its noisier half).
    """
    batch = latents.shape[0]
    device = latents.device
    noise = draw_noise(latents, generator, offset_noise)
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
    """Mean squared error over every element of (B, C, F, h, w); with a mask (B, 1, F, h, w) in
    {0, 1} only the subject's pixels count: the plain mean of mask · (prediction − target)², as
    the official trainer (not divided by the mask's area, so a small subject gives a small
    loss; AdamW's step size hardly depends on that scale)."""
    if mask is None:
        return F.mse_loss(prediction.float(), target.float())
    return ((prediction.float() - target.float()) ** 2 * mask).mean()


def latent_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Subject masks (N, 1, H, W) in {0, 1} at the latent size (N, 1, h, w), resized NEAREST
    (pixel centres, like PIL's `Image.NEAREST` in the official data pipeline), so they stay in
    {0, 1}."""
    return F.interpolate(masks.float(), size=size, mode="nearest-exact")
