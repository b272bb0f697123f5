"""What every base family answers, and the behaviour shared by the UNet families.

A family is a `Family` object; shared machinery (training, the sampler, injection, import and
export) asks it instead of assuming one architecture. The default methods here serve the
latent-diffusion UNet families (`modelscope-t2v`, `animatediff`): a per-frame `AutoencoderKL`,
a CLIP text encoder, a DDPM-style noise schedule with ε or v targets, a UNet called as
`unet(latents (B, C, F, h, w), t, encoder_hidden_states=text)`. A family that differs
overrides the method concerned.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dvkit.errors import DvkitError

if TYPE_CHECKING:
    import torch
    from diffusers import SchedulerMixin
    from torch import nn

    from dvkit.models.adapters import AdapterKind
    from dvkit.models.components import BaseComponents


@dataclass(frozen=True)
class FamilyDefaults:
    """A family's sampling and data defaults (a base may override some, see
    `dvkit.models.builtin`)."""

    frames: int
    """Frames per video."""
    fps: int
    """Frames per second of training clips and written videos."""
    size: int
    """Video height and width in pixels (sampling and training)."""
    train_frames: int
    """Frames per training clip of a motion (sampling uses the motion's own)."""
    steps: int
    """Sampling steps."""
    guidance: float
    """Classifier-free guidance scale."""
    motion_until: float = 0.0
    """Fraction of the schedule below which motion adapters stop acting (0: never)."""
    offset_noise: float = 0.1
    """Offset-noise strength of the sampler's starting latents."""

    def get(self, key: str) -> float:
        """One default by name (`frames`, `steps`, …)."""
        return getattr(self, key)


class BaseLoadError(DvkitError):
    """A base that cannot be found or loaded."""


def load_failure(source: str, local: bool, exc: Exception) -> str:
    """One line on why `source` (a local path when `local`, else a Hub id) did not load."""
    if local:
        return f"cannot load base from {source}: {' '.join(str(exc).split())[:200]}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return (
            f"base {source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"fetch it first with: hf download {source}  (or give a local diffusers folder)"
        )
    return (
        f"cannot load base {source!r} from the Hugging Face Hub or its cache "
        f"({exc.__class__.__name__}); check the id, or fetch it with: hf download {source}"
    )


class SizeError(DvkitError):
    """A video size or frame count that a base cannot take."""


class Family:
    """One architecture of text-to-video base model.

    Subclasses set the class attributes and override what differs from the UNet default.
    """

    name: ClassVar[str]
    """The family's name, as recorded in `architecture` on bases and adapter files."""
    description: ClassVar[str]
    reference_pipeline: ClassVar[str]
    """The diffusers pipeline dvkit's sampler reproduces with no adapters."""
    denoiser_class: ClassVar[str]
    """Class name of the denoiser (`BaseComponents.unet`)."""
    sites: ClassVar[Mapping[AdapterKind, tuple[str, ...]]]
    """Per adapter kind, the `module:Class` of the containers whose `block`s get adapters."""
    block: ClassVar[str] = "diffusers.models.attention:BasicTransformerBlock"
    """`module:Class` of the transformer blocks adapters sit in."""
    slots: ClassVar[Mapping[AdapterKind, tuple[str, ...]]] = {
        "subject": ("attn2",),
        "motion": ("attn1", "attn2", "ff"),
    }
    """Per adapter kind, the slots (`attn1`, `attn2`, `ff`: the names in adapter files) each
    block gets an adapter in."""
    slot_modules: ClassVar[Mapping[str, tuple[str, str]]] = {
        "attn1": ("norm1", "attn1"),
        "attn2": ("norm2", "attn2"),
        "ff": ("norm3", "ff"),
    }
    """Per slot, the block's submodule whose input is the block's hidden states `h` (the norm
    feeding the layer) and the layer the adapter's output is added to."""
    lora_attentions: ClassVar[Mapping[AdapterKind, tuple[str, ...]]] = {
        "subject": ("attn1", "attn2"),
        "motion": ("attn1", "attn2"),
    }
    """Per kind, the attention layers of each block whose projections a trained LoRA adapts
    (`dvkit.train.weights.lora_layers`): in a UNet's blocks every attention, as MotionDirector's
    spatial (subject) and temporal (motion) LoRAs adapt them."""
    gated_slots: ClassVar[frozenset[str]] = frozenset()
    """Slots whose layer output the block multiplies by a gate (see `slot_gate`)."""
    defaults: ClassVar[FamilyDefaults]
    temporal_vae: ClassVar[bool] = False
    """Whether the VAE compresses time, so that training clips are encoded whole
    (`encode_videos`) instead of frame by frame."""
    layouts: ClassVar[tuple[str, ...]] = ()
    """Foreign key layouts `dvkit import` can read for this family (e.g. `vgen`)."""

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        """The components of a base of this family from a Hub id, a local folder or a file.

        `options` holds family-specific sources (e.g. AnimateDiff's motion adapter). Raises
        `BaseLoadError` with one line naming what to fetch.
        """
        raise NotImplementedError

    def detect(self, folder: Path) -> bool:
        """Whether a local diffusers folder holds a base of this family."""
        return False

    def claims_hub_id(self, source: str) -> bool:
        """Whether a Hub id names a base of this family by its owner or name (loading then
        needs no `--family`)."""
        return False

    def record_config(self, components: BaseComponents) -> dict[str, Any]:
        """What the catalog records of a base's shape (widths, sizes, vocabulary)."""
        unet = components.unet.config
        return {
            "block_out_channels": list(unet.block_out_channels),
            "cross_attention_dim": unet.cross_attention_dim,
            "sample_size": unet.sample_size,
            "vocab_size": components.text_encoder.config.vocab_size,
        }

    # Adapter sites

    def containers(self, kind: AdapterKind) -> tuple[type[nn.Module], ...]:
        """The container classes holding the blocks adapters of `kind` sit in."""
        return tuple(_import(path) for path in self.sites[kind])

    def block_width(self, block: nn.Module) -> int:
        """The channel width of one of the family's blocks."""
        return block.dim

    def block_class(self) -> type[nn.Module]:
        """The class of the blocks adapters sit in (`block`)."""
        return _import(self.block)

    def slot_gate(
        self, block: nn.Module, slot: str, args: tuple, kwargs: Mapping[str, Any]
    ) -> torch.Tensor:
        """The gate (N, 1 or L, C), float32, by which `block`, called with `args` and `kwargs`,
        multiplies the output of the layer in `slot` (one of `gated_slots`)."""
        raise NotImplementedError(f"{self.name} blocks have no gated slots")

    # Text

    def tokenize(self, components: BaseComponents, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, L) of the prompts, checked and cut as `dvkit.models.text.tokenize`."""
        from dvkit.models.text import tokenize

        return tokenize(components.tokenizer, prompts)

    def embed_ids(self, components: BaseComponents, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's last hidden states (N, L, D) for token ids (N, L)."""
        encoder = components.text_encoder
        return encoder(ids.to(encoder.device))[0]

    def encode_text(self, components: BaseComponents, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (N, L, D) of the prompts, with gradients if enabled."""
        from dvkit.models.text import encode_text

        return encode_text(components.tokenizer, components.text_encoder, prompts)

    # Latents

    def scale_factor(self, components: BaseComponents) -> int:
        """Pixels per latent pixel along each side."""
        return 2 ** (len(components.vae.config.block_out_channels) - 1)

    def native_size(self, components: BaseComponents) -> int:
        """The video size in pixels the denoiser was configured for."""
        return components.unet.config.sample_size * self.scale_factor(components)

    def check_frames(self, frames: int, what: str = "frames") -> int:
        """`frames` if the family's VAE takes videos of that many frames (any count here), else
        a `SizeError` naming the nearest counts it takes."""
        return frames

    def frames_at_most(self, frames: int) -> int:
        """The largest frame count ≤ `frames` (≥ 1) the family's VAE takes (`frames` here)."""
        return frames

    def frames_at_least(self, frames: int) -> int:
        """The smallest frame count ≥ `frames` the family's VAE takes (`frames` here)."""
        return frames

    def size_multiple(self, components: BaseComponents) -> int:
        """What a video's height and width must be multiples of, in pixels."""
        return self.scale_factor(components)

    def latent_shape(
        self, components: BaseComponents, frames: int, height: int, width: int
    ) -> tuple[int, int, int, int]:
        """(C, f, h, w) of a video's latents; `SizeError` for sizes and frame counts the VAE
        (and the denoiser's patches) cannot take."""
        multiple = self.size_multiple(components)
        for value in (height, width):
            if value % multiple:
                low = value // multiple * multiple
                nearest = " or ".join(str(n) for n in (low, low + multiple) if n >= multiple)
                raise SizeError(
                    f"size {value} is not a multiple of {multiple}, as base {components.name} "
                    f"needs: use {nearest}"
                )
        self.check_frames(frames)
        factor = self.scale_factor(components)
        channels = components.unet.config.in_channels
        return channels, self.latent_frames(frames), height // factor, width // factor

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a video of `frames` frames (one each on per-frame VAEs)."""
        return frames

    def encode_frames(
        self, components: BaseComponents, pixels: torch.Tensor, batch_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled VAE posterior mean and std of frames (..., 3, H, W) in [-1, 1] → (..., C, h, w)
        each, one frame at a time through the 2-D VAE."""
        import torch

        vae = components.vae
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        means, stds = [], []
        with torch.no_grad():
            for chunk in flat.split(batch_size):
                posterior = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
        scale = vae.config.scaling_factor
        mean, std = torch.cat(means) * scale, torch.cat(stds) * scale
        return mean.reshape(*lead, *mean.shape[1:]), std.reshape(*lead, *std.shape[1:])

    def encode_videos(
        self, components: BaseComponents, videos: torch.Tensor, batch_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled VAE posterior mean and std (N, C, f, h, w) of videos (N, 3, F, H, W) in
        [-1, 1]; here frame by frame (`encode_frames`), f = F."""
        mean, std = self.encode_frames(components, videos.transpose(1, 2), batch_size)
        return mean.transpose(1, 2), std.transpose(1, 2)

    def decode(
        self, components: BaseComponents, latents: torch.Tensor, batch_size: int = 16
    ) -> torch.Tensor:
        """(B, C, F, h, w) latents → (B, F, H, W, 3) frames in [0, 1] on the CPU."""
        import torch

        vae = components.vae
        batch, channels, frames, height, width = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        flat = flat / vae.config.scaling_factor
        images = torch.cat([vae.decode(chunk).sample for chunk in flat.split(batch_size)]).float()
        video = images.reshape(batch, frames, *images.shape[1:]).permute(0, 1, 3, 4, 2)
        return (video / 2 + 0.5).clamp(0, 1).cpu()

    # Objective and sampler

    def add_noise(
        self,
        components: BaseComponents,
        latents: torch.Tensor,
        generator: torch.Generator,
        offset_noise: float,
        high_noise_share: float = 0.0,
        high_noise_band: tuple[float, float] = (0.5, 1.0),
        experts: Sequence[str] = ("",),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents (B, C, F, h, w), the training target and the timesteps (B,): the DDPM
        objective on the base's noise schedule (ε or v, see `dvkit.train.diffusion.add_noise`).
        `experts` names the denoisers being trained (`dvkit.train.setup.trained_denoisers`);
        only on a base with two experts do the timesteps depend on it."""
        from dvkit.train import diffusion

        return diffusion.add_noise(
            components.scheduler, latents, generator, offset_noise, high_noise_share,
            high_noise_band,
        )  # fmt: skip

    def predict(
        self,
        components: BaseComponents,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """The denoiser's output (B, C, F, h, w) for noisy latents, timesteps and text (B, L, D)."""
        return components.unet(noisy, timesteps, encoder_hidden_states=text).sample

    def sampling_scheduler(self, components: BaseComponents) -> SchedulerMixin:
        """A fresh scheduler for the sampler: DDIM on the base's noise schedule, as the
        reference pipeline is given."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(components.scheduler.config)

    def noise_fraction(self, components: BaseComponents, timestep: torch.Tensor | float) -> float:
        """A sampler timestep as a fraction of the schedule (1: pure noise)."""
        return float(timestep) / components.scheduler.config.num_train_timesteps


def _import(path: str) -> Any:
    """The object a `module:attribute` path names."""
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def config_class(path: Path) -> str | None:
    """The `_class_name` a diffusers JSON config (model_index.json, config.json) records, or None
    when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
