"""Motion learning with appearance guidance.

Each step draws, for every video of the batch, a clip, one of the clip's windows (the official
trainer draws a random window per step; dvkit draws from a bounded pool of windows, see
`dvkit.train.windows`) and one real frame of that window, whose image embedding is fed to every
motion adapter so they need not memorise appearance. The kept frames' VAE posteriors (and that
of the zero frame that pads short clips), their image embeddings and the two text embeddings
(caption and empty, for text dropout) are computed once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dvkit.distributed import SINGLE_PROCESS, World
from dvkit.models.components import BaseComponents
from dvkit.models.image_encoder import AppearanceEncoder
from dvkit.models.injection import AdapterInjector
from dvkit.train.data import MotionClips
from dvkit.train.diffusion import diffusion_loss, sample_latents
from dvkit.train.loop import Reporter, Stage, run_stage
from dvkit.train.settings import MotionSettings
from dvkit.train.setup import loop_settings, make_generator, prepare_base, trained_denoisers
from dvkit.train.weights import fresh_weights, kept_tensors, release

ADAPTER_NAME = "motion"


@dataclass
class MotionResult:
    tensors: dict[str, torch.Tensor]
    kept: dict[int, dict[str, torch.Tensor]]
    loss_curves: dict[str, list[tuple[int, float]]]


def train_motion(
    base: BaseComponents,
    clips: MotionClips | torch.Tensor,
    encoder: AppearanceEncoder,
    settings: MotionSettings,
    device: torch.device,
    dtype: torch.dtype,
    folder: Path,
    reporter: Reporter,
    resume: bool = False,
    world: World = SINGLE_PROCESS,
) -> MotionResult:
    """Train motion adapters on `clips`: a `MotionClips` pool of windows, or clips
    (N, F, 3, S, S) in [-1, 1] (one window each, embedded here by `encoder`)."""
    if isinstance(clips, torch.Tensor):
        clips = MotionClips.whole(clips, encoder)
    family, unet = base.family, base.unet
    denoisers = trained_denoisers(base, settings.experts, "motion")
    prepare_base(base, device, dtype, settings, denoisers)
    if family.temporal_vae:  # (W, C, f, h, w): each window through the 3-D VAE
        mean, std = _window_posteriors(base, clips)
    else:  # (M + 1, C, h, w): the kept frames, then zeros
        mean, std = _posteriors(base, clips)
    padded = clips.windows < 0
    windows = clips.windows.masked_fill(padded, len(clips.frames)).to(device)  # (W, F)
    lengths = (~padded).sum(dim=1).to(device)
    first, count = clips.first.to(device), clips.count.to(device)
    embeds = clips.embeds.to(device)
    frames = windows.shape[1]
    several = bool(count.max() > 1)
    with torch.no_grad():
        caption, empty = family.encode_text(base, [settings.caption, ""])
    generator = make_generator(settings.seed, device, world)
    batch = settings.batch_size

    injector = AdapterInjector(unet, base.unet_2, device)
    weights = fresh_weights(
        injector, base, denoisers, "motion", settings, ADAPTER_NAME, embeds.shape[1]
    )

    def motion_loss(gen: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(first), (batch,), generator=gen, device=device)
        window = first[index]
        if several:  # with one window per clip there is nothing to draw
            draw = torch.rand(batch, generator=gen, device=device)
            window = window + (draw * count[index]).long()
        frame = torch.randint(frames, (batch,), generator=gen, device=device)
        frame = frame * lengths[window] // frames  # spread over the window's real frames
        keep_image = torch.rand(batch, generator=gen, device=device) >= settings.image_dropout
        keep_text = torch.rand(batch, generator=gen, device=device) >= settings.text_dropout
        chosen = windows[window]  # (B, F)
        if family.temporal_vae:
            latents = sample_latents(mean[window], std[window], gen)
        else:
            latents = sample_latents(as_video(mean[chosen]), as_video(std[chosen]), gen)
        noisy, target, timesteps = family.add_noise(
            base, latents, gen, settings.offset_noise,
            settings.high_noise_share, settings.high_noise_band, tuple(denoisers),
        )  # fmt: skip
        image = embeds[chosen[torch.arange(batch, device=device), frame]] * keep_image[:, None]
        text = torch.where(keep_text[:, None, None], caption, empty)
        if settings.adapter != "lora":  # a LoRA runs in peft's layers, with no condition
            injector.set_active({ADAPTER_NAME: 1.0}, image_embeds=image)
        prediction = family.predict(base, noisy.to(dtype), timesteps, text)
        return diffusion_loss(prediction, target)

    try:
        result = run_stage(
            Stage("motion", settings.steps, settings.lr, weights.parameters_by_name(),
                  motion_loss, settings.keep_steps),
            loop_settings(settings, device, dtype, world), folder, generator, reporter, resume,
        )  # fmt: skip
        tensors = {name: value.cpu().clone() for name, value in weights.tensors().items()}
    finally:
        release(injector, weights)
    return MotionResult(tensors, kept_tensors(weights, result.kept), {"motion": result.loss_curve})


def _window_posteriors(
    base: BaseComponents, clips: MotionClips
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std (W, C, f, h, w) of every window, each encoded as one video
    (`Family.encode_videos`), zero frames where the window is padded."""
    means, stds = [], []
    for window in clips.windows.tolist():
        frames = [clips.pixels(index, index + 1)[0] if index >= 0 else None for index in window]
        blank = torch.zeros_like(next(frame for frame in frames if frame is not None))
        video = torch.stack([blank if frame is None else frame for frame in frames], dim=1)
        mean, std = base.family.encode_videos(base, video[None])
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def as_video(latents: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) frames-first latents → (B, C, F, h, w) as the denoiser takes them."""
    return latents.permute(0, 2, 1, 3, 4)


def _posteriors(
    base: BaseComponents, clips: MotionClips, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std (M + 1, C, h, w) of the kept frames, a chunk at a time, and
    last of a zero frame (what pads a short clip, as in the official trainer)."""
    encode = base.family.encode_frames
    starts = range(0, len(clips.frames), chunk)
    parts = [encode(base, clips.pixels(start, start + chunk)) for start in starts]
    parts.append(encode(base, torch.zeros(1, *clips.frames.shape[1:])))
    return torch.cat([mean for mean, _ in parts]), torch.cat([std for _, std in parts])
