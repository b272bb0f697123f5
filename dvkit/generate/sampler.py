"""dvkit's sampling loop over any base family: the family gives the scheduler, text, latents and
denoiser calls; this loop keeps rows, guidance and adapter selection.

With no adapters it follows the family's reference pipeline (`TextToVideoSDPipeline`,
`AnimateDiffPipeline`) step for step (same noise for the
same seed, same classifier-free guidance, same decoding). On top it runs a batch of rows that
may each use other adapters, scales, prompts, seeds and appearance guidance: the conditional
branch sees the row's image embedding at strength λ, the unconditional branch a zero embedding
at its own strength (as the official DreamVideo inference does). `motion_until` can switch the
motion adapters off for the last, low-noise steps, where a motion is already laid out and only
the look is being refined. `offset_noise` adds a per-video, per-channel and per-frame constant
to the starting noise, as the official inference does on real bases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dvkit.models.builtin import check_motion_until, check_offset_noise
from dvkit.models.components import BaseComponents
from dvkit.models.injection import AdapterInjector
from dvkit.ranges import FRAMES, GUIDANCE_SCALE, SAMPLING_STEPS, SIZE


@dataclass
class Row:
    """One video of a batch."""

    prompt: str
    seed: int = 0
    negative_prompt: str = ""
    adapters: Mapping[str, float] = field(default_factory=dict)
    image_embed: torch.Tensor | None = None
    image_strength: float = 1.0
    image_strength_uncond: float = 1.0


@dataclass
class SamplerSettings:
    steps: int = 50
    guidance_scale: float = 9.0
    frames: int = 16
    height: int = 256
    width: int = 256
    decode_batch: int = 16
    motion_until: float = 0.0
    """Motion adapters act while the timestep is at least this fraction of the schedule, and
    are switched off below it (0: at every step)."""
    offset_noise: float = 0.0
    """Strength of the offset noise added to the starting latents (0: plain Gaussian noise, as
    diffusers' pipeline; the official DreamVideo inference uses 0.1, `compose` and `bench` the
    base's default)."""

    def __post_init__(self) -> None:
        """Raises `DvkitError` for steps, frames, a size, a guidance scale or `motion_until` out
        of range (or NaN)."""
        SAMPLING_STEPS.check("steps", self.steps)
        FRAMES.check("frames", self.frames)
        SIZE.check("height", self.height)
        SIZE.check("width", self.width)
        GUIDANCE_SCALE.check("guidance scale", self.guidance_scale)
        check_motion_until(self.motion_until)
        check_offset_noise(self.offset_noise)


@torch.no_grad()
def sample(
    base: BaseComponents,
    rows: Sequence[Row],
    settings: SamplerSettings,
    injector: AdapterInjector | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Videos of `rows` as float frames in [0, 1], shaped (rows, frames, height, width, 3)."""
    family = base.family
    device, dtype = base.unet.device, base.unet.dtype
    scheduler = family.sampling_scheduler(base)
    scheduler.set_timesteps(settings.steps, device=device)
    guided = settings.guidance_scale > 1.0
    if injector is not None:  # before the text encoder runs: LoRAs may act on it too
        _select(injector, rows, guided, device)
    negatives = [row.negative_prompt for row in rows] if guided else []
    texts = family.encode_text(base, negatives + [row.prompt for row in rows]).to(dtype)
    latents = initial_latents(base, rows, settings, scheduler.init_noise_sigma)
    motion_on = injector is not None and settings.motion_until > 0
    total = len(scheduler.timesteps)
    for index, timestep in enumerate(scheduler.timesteps):
        if motion_on and family.noise_fraction(base, timestep) < settings.motion_until:
            _select(injector, rows, guided, device, without_kind="motion")
            motion_on = False
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, timestep)
        noise = family.predict(base, model_input, timestep, texts)
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + settings.guidance_scale * (cond - uncond)
        batch, channels, frames, height, width = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        noise = noise.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        flat = scheduler.step(noise, timestep, flat).prev_sample
        latents = flat.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        if on_step:
            on_step(index + 1, total)
    if injector is not None:
        injector.clear()
    return family.decode(base, latents, settings.decode_batch)


def check_size(base: BaseComponents, size: int) -> int:
    """`size` if `base` can sample videos of it, else a `SizeError` naming the nearest sizes it
    can (see `Family.latent_shape`)."""
    base.family.latent_shape(base, 1, size, size)
    return size


def initial_latents(
    base: BaseComponents, rows: Sequence[Row], settings: SamplerSettings, sigma: float
) -> torch.Tensor:
    """Starting latents (rows, C, F, h, w): each row's noise from its own seed on the CPU, so
    results do not depend on the batch.

    With `settings.offset_noise` s, the row's generator then draws o ~ N(0, 1) of shape
    (1, C, F, 1, 1) and the noise becomes noise + s·o: one constant per channel and frame, as the
    official inference (VGen `inference_dreamvideo_entrance.py`: `noise + noise_strength *
    randn(b, c, f, 1, 1)`).
    """
    channels, frames, height, width = base.family.latent_shape(
        base, settings.frames, settings.height, settings.width
    )
    shape = (1, channels, frames, height, width)
    noise = []
    for row in rows:
        generator = torch.Generator().manual_seed(row.seed)
        row_noise = torch.randn(shape, generator=generator)
        if settings.offset_noise:
            offset = torch.randn((1, channels, frames, 1, 1), generator=generator)
            row_noise = row_noise + settings.offset_noise * offset
        noise.append(row_noise)
    return torch.cat(noise).to(base.unet.device, base.unet.dtype) * sigma


def _select(
    injector: AdapterInjector,
    rows: Sequence[Row],
    guided: bool,
    device: torch.device,
    without_kind: str | None = None,
) -> None:
    """Per-row adapters for both branches, leaving out adapters of `without_kind`; image
    embeddings only in the conditional one."""
    dims = {e.shape[-1] for row in rows if (e := row.image_embed) is not None}
    embeds = strengths = None
    if dims:
        (dim,) = dims
        zero = torch.zeros(dim)
        cond = torch.stack([zero if r.image_embed is None else r.image_embed.float() for r in rows])
        cond_strength = torch.tensor([row.image_strength for row in rows])
        embeds, strengths = cond.to(device), cond_strength.to(device)
        if guided:
            uncond_strength = torch.tensor([row.image_strength_uncond for row in rows])
            embeds = torch.cat([torch.zeros_like(cond), cond]).to(device)
            strengths = torch.cat([uncond_strength, cond_strength]).to(device)
    choices = [
        {name: scale for name, scale in row.adapters.items()
         if injector.get(name).kind != without_kind}
        for row in rows
    ]  # fmt: skip
    injector.set_rows(choices * 2 if guided else choices, image_embeds=embeds, strength=strengths)
