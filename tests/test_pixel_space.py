"""Pixel-space bases: the identity codec and the diffusion target (ε or v)."""

import pytest
import torch
from diffusers import DDIMScheduler

from dvkit.models.pixel_codec import PixelCodec
from dvkit.train.diffusion import add_noise, diffusion_loss


def _pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pixel_codec_is_the_identity() -> None:
    codec = PixelCodec()
    pixels = _pixels(2, 3, 16, 16)
    posterior = codec.encode(pixels).latent_dist
    assert torch.equal(posterior.mean, pixels)
    assert posterior.std.shape == pixels.shape and not posterior.std.any()
    assert torch.equal(codec.decode(pixels).sample, pixels)
    assert codec.config.scaling_factor == 1.0
    assert codec.config.latent_channels == 3
    assert len(codec.config.block_out_channels) == 1  # no downsampling
    assert PixelCodec(channels=4).config.latent_channels == 4
    assert not list(codec.parameters()) and not codec.state_dict()  # nothing to save


def test_pixel_codec_follows_to() -> None:
    codec = PixelCodec()
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32
    assert codec.to(torch.float16).dtype == torch.float16
    moved = codec.to("meta", torch.bfloat16)
    assert moved is codec
    assert codec.device == torch.device("meta") and codec.dtype == torch.bfloat16


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    )


def _draws(latents: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and timesteps add_noise draws from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
    return noise, timesteps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_add_noise_target_follows_the_prediction_type(prediction_type) -> None:
    scheduler = _scheduler(prediction_type)
    latents = _pixels(3, 3, 4, 8, 8)
    noisy, target, timesteps = add_noise(scheduler, latents, torch.Generator().manual_seed(7), 0.0)
    noise, expected_steps = _draws(latents, 7)
    assert torch.equal(timesteps, expected_steps)
    assert torch.allclose(noisy, scheduler.add_noise(latents, noise, timesteps))
    assert target.shape == latents.shape
    if prediction_type == "epsilon":
        assert torch.equal(target, noise)
    else:
        assert torch.allclose(target, scheduler.get_velocity(latents, noise, timesteps))
        assert not torch.allclose(target, noise)
        # v = √ᾱ·ε − √(1−ᾱ)·x₀, so √ᾱ·noisy − √(1−ᾱ)·v gives back the clean latents
        alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
        clean = alpha.sqrt() * noisy - (1 - alpha).sqrt() * target
        assert torch.allclose(clean, latents, atol=1e-5)


def test_add_noise_with_offset_noise_and_v_prediction() -> None:
    scheduler = _scheduler("v_prediction")
    latents = _pixels(2, 3, 4, 8, 8, seed=1)
    plain = add_noise(scheduler, latents, torch.Generator().manual_seed(3), 0.0)
    offset = add_noise(scheduler, latents, torch.Generator().manual_seed(3), 0.5)
    assert not torch.allclose(plain[1], offset[1])
    noisy, target, timesteps = offset
    alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    # the target is still the velocity of the noise actually added
    noise = (noisy - alpha.sqrt() * latents) / (1 - alpha).sqrt()
    assert torch.allclose(target, alpha.sqrt() * noise - (1 - alpha).sqrt() * latents, atol=1e-4)
    assert diffusion_loss(target, target).item() == 0.0


def test_high_noise_share_draws_timesteps_from_the_noisier_half() -> None:
    scheduler = _scheduler("epsilon")
    latents = _pixels(400, 1, 1, 2, 2)
    uniform = add_noise(scheduler, latents, torch.Generator().manual_seed(5), 0.0, 0.0)[2]
    assert torch.equal(
        uniform, add_noise(scheduler, latents, torch.Generator().manual_seed(5), 0.0)[2]
    )
    for share in (0.5, 1.0):
        steps = add_noise(scheduler, latents, torch.Generator().manual_seed(5), 0.0, share)[2]
        noisier = (steps >= 500).float().mean().item()
        # uniform draws put half in the noisier half; the share moves the rest there too
        assert abs(noisier - (share + (1 - share) / 2)) < 0.07
        assert steps.min() >= 0 and steps.max() < 1000
    assert abs((uniform >= 500).float().mean().item() - 0.5) < 0.07


def test_high_noise_band_bounds_the_chosen_timesteps() -> None:
    scheduler = _scheduler("epsilon")
    latents = _pixels(400, 1, 1, 2, 2)

    def timesteps(share: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(5)
        return add_noise(scheduler, latents, generator, 0.0, share, (0.65, 0.9))[2]

    steps = timesteps(1.0)
    assert steps.min() >= 650 and steps.max() < 900
    assert steps.float().std() > 50  # spread over the band, not one value
    half = timesteps(0.5)
    inside = ((half >= 650) & (half < 900)).float().mean().item()
    # half the draws come from the band, and a quarter of the uniform rest land there anyway
    assert abs(inside - (0.5 + 0.5 * 0.25)) < 0.07
