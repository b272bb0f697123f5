"""Motion learning with appearance guidance.

Each step trains the motion adapters on whole clips; one random frame of each clip, encoded by
the image encoder, is fed to every motion adapter so they need not memorise appearance. The
clips' VAE posteriors, every frame's image embedding and the two text embeddings (caption and
empty, for text dropout) are computed once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dvkit.models.components import BaseComponents
from dvkit.models.image_encoder import AppearanceEncoder
from dvkit.models.injection import AdapterInjector, create_adapter_state
from dvkit.train.diffusion import add_noise, diffusion_loss, sample_latents
from dvkit.train.distributed import SINGLE_PROCESS, World
from dvkit.train.encode import as_video, encode_frames, encode_text
from dvkit.train.loop import Reporter, Stage, run_stage
from dvkit.train.settings import MotionSettings
from dvkit.train.setup import loop_settings, make_generator, prepare_base

ADAPTER_NAME = "motion"


@dataclass
class MotionResult:
    tensors: dict[str, torch.Tensor]
    kept: dict[int, dict[str, torch.Tensor]]
    loss_curves: dict[str, list[tuple[int, float]]]


def train_motion(
    base: BaseComponents,
    clips: torch.Tensor,
    encoder: AppearanceEncoder,
    settings: MotionSettings,
    device: torch.device,
    dtype: torch.dtype,
    folder: Path,
    reporter: Reporter,
    resume: bool = False,
    world: World = SINGLE_PROCESS,
) -> MotionResult:
    """Train motion adapters on `clips` (N, F, 3, S, S) in [-1, 1]."""
    prepare_base(base, device, dtype, settings.gradient_checkpointing)
    unet = base.unet
    count, frames = clips.shape[:2]
    mean, std = encode_frames(base.vae, clips)  # (N, F, C, h, w)
    mean, std = as_video(mean), as_video(std)  # (N, C, F, h, w)
    embeds = encoder.encode(clips.reshape(-1, *clips.shape[2:])).to(device)
    embeds = embeds.reshape(count, frames, -1)
    with torch.no_grad():
        caption, empty = encode_text(base.tokenizer, base.text_encoder, [settings.caption, ""])
    generator = make_generator(settings.seed, device, world)
    batch = settings.batch_size

    injector = AdapterInjector(unet)
    fresh = create_adapter_state(
        unet, "motion", settings.hidden_ratio, cond_dim=encoder.embed_dim, seed=settings.seed
    )
    weights = injector.load(ADAPTER_NAME, "motion", fresh, settings.hidden_ratio)
    injector.train_adapter(ADAPTER_NAME)

    def motion_loss(gen: torch.Generator) -> torch.Tensor:
        index = torch.randint(count, (batch,), generator=gen, device=device)
        frame = torch.randint(frames, (batch,), generator=gen, device=device)
        keep_image = torch.rand(batch, generator=gen, device=device) >= settings.image_dropout
        keep_text = torch.rand(batch, generator=gen, device=device) >= settings.text_dropout
        latents = sample_latents(mean[index], std[index], gen)
        noisy, target, timesteps = add_noise(
            base.scheduler, latents, gen, settings.offset_noise,
            settings.high_noise_share, settings.high_noise_band,
        )  # fmt: skip
        image = embeds[index, frame] * keep_image[:, None]
        text = torch.where(keep_text[:, None, None], caption, empty)
        injector.set_active({ADAPTER_NAME: 1.0}, image_embeds=image)
        prediction = unet(noisy.to(dtype), timesteps, encoder_hidden_states=text).sample
        return diffusion_loss(prediction, target)

    result = run_stage(
        Stage("motion", settings.steps, settings.lr, weights.parameters_by_name(), motion_loss,
              settings.keep_steps),
        loop_settings(settings, device, dtype, world), folder, generator, reporter, resume,
    )  # fmt: skip
    tensors = {name: value.cpu().clone() for name, value in weights.tensors().items()}
    injector.detach()
    return MotionResult(tensors, result.kept, {"motion": result.loss_curve})
