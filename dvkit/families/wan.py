"""The `wan` family: Wan 2.1 / 2.2 text-to-video (diffusers `WanTransformer3DModel`, the 3D
causal `AutoencoderKLWan`, a UMT5 text encoder), sampled as `WanPipeline` does.

Adapters (DESIGN §7). A `WanTransformerBlock` computes, with adaLN terms from the timestep,
`h += gate_msa·attn1(norm1(h)·(1+scale_msa)+shift_msa)`; `h += attn2(norm2(h), text)`;
`h += gate_ff·ffn(norm3(h)·(1+scale_ff)+shift_ff)`. Every block gets:

- an identity adapter beside `attn2` (the text cross-attention), reading the block's input
  `h` (recorded by a pre-hook on `norm2`, which is `nn.Identity` when `cross_attn_norm` is off
  but still runs on `h`): `h + attn2(norm2(h)) + A(h)`, ungated as on the UNets;
- motion adapters beside `attn1` (space-time self-attention, the only layer where frames meet)
  and `ffn` (slot `ff` in adapter files), reading `h` as `norm1` / `norm3` see it. Their output
  is added *outside* the adaLN gate: the block becomes `h + gate·attn1(…) + A(h)`, the
  DreamVideo form `h + layer(norm(h)) + A(h)` of the UNets and of `attn2` here (the hook adds
  `A(h) / gate` to the layer's output, in float32; `dvkit.models.injection`). Why outside:
  inside, `gate·A(h)`, the adapter's every update is scaled by the base's per-timestep,
  per-channel gate (|gate| ≈ 0.1–0.2 on `tiny-wan`), so with Adam it learns as if at a
  fraction of the preset learning rates tuned on the UNets, and the effective step varies with
  the noise level and from expert to expert on Wan 2.2. Measured on `tiny-wan`
  (`benchmarks/bench_wan_gate.py`: a motion adapter trained 300 steps at lr 1e-3 on the same
  clips, noise and timesteps both ways, 3 seeds): mean loss of the last 30 steps 1.663 inside
  vs 1.607 outside (−3.3 %, lower for every seed); inside at 3× the learning rate, 1.649,
  still behind.
  The appearance condition of a motion adapter is one vector per video, broadcast over every
  token of that video (its frames × height × width patches).

Experts (Wan 2.2 A14B): `transformer` denoises timesteps ≥ `boundary_ratio` ×
`num_train_timesteps`, `transformer_2` those below (`WanPipeline`); `BaseComponents.unet` and
`unet_2` hold them. Text: UMT5 (`UMT5EncoderModel`, up to the tokenizer's `model_max_length`,
512 on the real bases) with the prompt cleaned, padded and its padding zeroed as `WanPipeline`
(`_get_t5_prompt_embeds`); a learned token takes a row of UMT5's shared input embedding.
Latents: `AutoencoderKLWan`, 8× in space and 4× in time (videos of 4k + 1 frames), normalised
per channel as `(z − latents_mean) / latents_std` (`WanPipeline` undoes it before decoding).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.families.base import (
    BaseLoadError,
    Family,
    FamilyDefaults,
    SizeError,
    config_class,
    load_failure,
)
from dvkit.families.modelscope import SPRITES_DEFAULTS
from dvkit.models.weight_files import component_files, hub_snapshot

if TYPE_CHECKING:
    import torch
    from diffusers import SchedulerMixin
    from torch import nn

    from dvkit.models.components import BaseComponents

_MODEL = "diffusers.models.transformers.transformer_wan:WanTransformer3DModel"
_WEIGHTED = ("transformer", "transformer_2", "vae", "text_encoder")
TEMPORAL_FACTOR = 4
"""Frames per latent frame of the Wan VAE after the first (`scale_factor_temporal`)."""
_HUB_ID = re.compile(r"(?i)^(wan-ai/|[^/]+/wan2\.)")


class WanFamily(Family):
    name = "wan"
    description = "Wan 2.1 / 2.2 text-to-video (diffusers WanTransformer3DModel, UMT5, Wan VAE)"
    reference_pipeline = "WanPipeline"
    denoiser_class = "WanTransformer3DModel"
    sites = {"subject": (_MODEL,), "motion": (_MODEL,)}
    block = "diffusers.models.transformers.transformer_wan:WanTransformerBlock"
    slots = {"subject": ("attn2",), "motion": ("attn1", "ff")}
    slot_modules = {
        "attn1": ("norm1", "attn1"),
        "attn2": ("norm2", "attn2"),
        "ff": ("norm3", "ffn"),
    }
    gated_slots = frozenset({"attn1", "ff"})
    lora_attentions = {"subject": ("attn2",), "motion": ("attn1",)}
    """A DiT block has no spatial/temporal split, so a trained LoRA's kind picks the attention:
    a subject's LoRA the cross-attention (`attn2`, where the prompt and its learned token enter,
    like DreamVideo's identity adapter), a motion's the space-time self-attention (`attn1`,
    the one layer where frames see each other)."""
    temporal_vae = True
    # WanPipeline's own defaults (81 frames, 50 steps, guidance 5.0; videos written at 16 fps
    # in its documentation). It samples 480×832; dvkit's videos are square, so the default size
    # is 480, the short side (the 1.3B model's 480p). Training clips are the sampled length; no
    # offset noise (flow matching starts from plain Gaussian noise).
    defaults = FamilyDefaults(
        frames=81, fps=16, size=480, train_frames=81, steps=50, guidance=5.0, offset_noise=0.0
    )

    def detect(self, folder: Path) -> bool:
        return config_class(folder / "model_index.json") == self.reference_pipeline

    def claims_hub_id(self, source: str) -> bool:
        """Hub ids of `Wan-AI` and repositories named `Wan2.…` (e.g. `Wan-AI/Wan2.1-T2V-1.3B-
        Diffusers`)."""
        return bool(_HUB_ID.match(source))

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        """A diffusers Wan folder or Hub id: model_index.json naming `WanPipeline`, with
        transformer/ (and transformer_2/ on 2.2 A14B), vae/, text_encoder/, tokenizer/ and
        scheduler/. Raises `BaseLoadError` in one line, also for Wan 2.2 TI2V-5B
        (`expand_timesteps`: one timestep per token, not sampled here)."""
        import diffusers
        from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        from dvkit.models.components import BaseComponents
        from dvkit.models.loading import quiet_libraries

        quiet_libraries()
        folder = Path(source).expanduser()
        if folder.exists() and not self.detect(folder):
            raise BaseLoadError(f"{folder} is not a diffusers Wan folder (no model_index.json "
                                "naming WanPipeline)")  # fmt: skip
        location = str(folder) if folder.exists() else source
        try:
            index = WanPipeline.load_config(location)
            if index.get("expand_timesteps"):
                raise BaseLoadError(
                    f"{source} samples with per-token timesteps (Wan 2.2 TI2V, "
                    "expand_timesteps), which dvkit's wan family does not reproduce"
                )
            experts = [
                WanTransformer3DModel.from_pretrained(location, subfolder=sub).eval()
                for sub in ("transformer", "transformer_2")
                if (index.get(sub) or [None])[0] is not None
            ]
            scheduler_config = diffusers.UniPCMultistepScheduler.load_config(
                location, subfolder="scheduler"
            )  # any scheduler class reads the config; its _class_name says which to build
            scheduler_class = getattr(diffusers, scheduler_config["_class_name"])
            components = BaseComponents(
                unet=experts[0],
                unet_2=experts[1] if len(experts) > 1 else None,
                boundary_ratio=index.get("boundary_ratio"),
                vae=AutoencoderKLWan.from_pretrained(location, subfolder="vae").eval(),
                text_encoder=UMT5EncoderModel.from_pretrained(
                    location, subfolder="text_encoder"
                ).eval(),
                tokenizer=AutoTokenizer.from_pretrained(location, subfolder="tokenizer"),
                scheduler=scheduler_class.from_config(scheduler_config),
                name=name,
                architecture=self.name,
            )
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise BaseLoadError(load_failure(source, folder.exists(), exc)) from None
        snapshot = folder if folder.exists() else hub_snapshot(source)
        if snapshot is not None:
            components.weight_files = component_files(snapshot, _WEIGHTED)
        return components

    def record_config(self, components: BaseComponents) -> dict[str, Any]:
        config = components.unet.config
        return {
            "width": config.num_attention_heads * config.attention_head_dim,
            "num_layers": config.num_layers,
            "patch_size": list(config.patch_size),
            "text_dim": config.text_dim,
            "experts": 1 if components.unet_2 is None else 2,
            "boundary_ratio": components.boundary_ratio,
            "vocab_size": components.text_encoder.config.vocab_size,
        }

    def block_width(self, block: nn.Module) -> int:
        """The width of a `WanTransformerBlock` (its adaLN table is (1, 6, width))."""
        return block.scale_shift_table.shape[-1]

    def slot_gate(
        self, block: nn.Module, slot: str, args: tuple, kwargs: Mapping[str, Any]
    ) -> torch.Tensor:
        """`gate_msa` (slot `attn1`) or `c_gate_msa` (slot `ff`) of a `WanTransformerBlock`
        called as `block(hidden_states, encoder_hidden_states, temb, rotary_emb)`: the 3rd and
        6th of the six chunks of `scale_shift_table + temb`, (B, 1, C) from temb (B, 6, C), or
        (B, L, C) from per-token temb (B, L, 6, C) (Wan 2.2 TI2V), in float32
        (`transformer_wan.py`, `WanTransformerBlock.forward`)."""
        temb = kwargs["temb"] if "temb" in kwargs else args[2]
        index = 2 if slot == "attn1" else 5
        if temb.ndim == 4:
            table = block.scale_shift_table.unsqueeze(0) + temb.float()
            return table[:, :, index]
        return (block.scale_shift_table + temb.float())[:, index : index + 1]

    # Text

    def tokenize(self, components: BaseComponents, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, L) of the prompts cleaned as `WanPipeline` cleans them (`prompt_clean`:
        HTML entities, runs of whitespace), padded and cut to L = `model_max_length`."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        from dvkit.models.text import tokenize

        return tokenize(components.tokenizer, [prompt_clean(prompt) for prompt in prompts])

    def embed_ids(self, components: BaseComponents, ids: torch.Tensor) -> torch.Tensor:
        """UMT5's last hidden states (N, L, D) with padding masked out of attention and zeroed,
        as `WanPipeline._get_t5_prompt_embeds`. Only the first n positions, n the longest
        prompt's tokens, go through UMT5 and zeros fill the rest: with the padding masked out
        of attention (UMT5 has relative positions only) the real tokens' states are the same,
        and the pipeline zeroes the others, at a fraction of the cost of all L = 512 (the
        transformer still reads all L, zeros included)."""
        import torch.nn.functional as F

        encoder = components.text_encoder
        ids = ids.to(encoder.device)
        mask = ids != components.tokenizer.pad_token_id
        length = max(int(mask.sum(dim=1).max()), 1)
        used = mask[:, :length]
        hidden = encoder(ids[:, :length], attention_mask=used).last_hidden_state
        hidden = hidden * used[..., None].to(hidden.dtype)
        return F.pad(hidden, (0, 0, 0, ids.shape[1] - length))

    def encode_text(self, components: BaseComponents, prompts: Sequence[str]) -> torch.Tensor:
        return self.embed_ids(components, self.tokenize(components, prompts))

    # Latents

    def scale_factor(self, components: BaseComponents) -> int:
        return components.vae.config.scale_factor_spatial

    def size_multiple(self, components: BaseComponents) -> int:
        """The VAE's factor times the transformer's patch (8 × 2 = 16 on the real bases, as
        `WanPipeline.check_inputs` requires)."""
        return self.scale_factor(components) * components.unet.config.patch_size[1]

    def native_size(self, components: BaseComponents) -> int:
        """The family's default size (the transformer records none)."""
        return self.defaults.size

    def check_frames(self, frames: int, what: str = "frames") -> int:
        """`frames` if it is 4k + 1 (the Wan VAE keeps the first frame and compresses each 4
        after it into one latent frame), else a `SizeError` naming the nearest such counts."""
        if frames % TEMPORAL_FACTOR == 1:
            return frames
        low = (frames - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
        nearest = " or ".join(str(n) for n in (low, low + TEMPORAL_FACTOR) if n >= 1)
        raise SizeError(
            f"{what} {frames} is not a count the Wan VAE takes (4k + 1 frames): use {nearest}"
        )

    def frames_at_most(self, frames: int) -> int:
        """The largest 4k + 1 ≤ `frames` (1 at least)."""
        return max(1, (frames - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1)

    def frames_at_least(self, frames: int) -> int:
        """The smallest 4k + 1 ≥ `frames`."""
        return self.frames_at_most(frames + TEMPORAL_FACTOR - 1)

    def latent_frames(self, frames: int) -> int:
        """(F − 1) / 4 + 1 latent frames for F = 4k + 1 frames."""
        return (frames - 1) // TEMPORAL_FACTOR + 1

    def encode_frames(
        self, components: BaseComponents, pixels: torch.Tensor, batch_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised posterior mean and std of frames (..., 3, H, W) in [-1, 1] → (..., C, h,
        w) each: every frame is encoded as a 1-frame video (an image, as Wan's VAE encodes a
        video's first frame)."""
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:]).unsqueeze(2)
        mean, std = self.encode_videos(components, flat, batch_size)
        mean, std = (t.squeeze(2) for t in (mean, std))
        return mean.reshape(*lead, *mean.shape[1:]), std.reshape(*lead, *std.shape[1:])

    def encode_videos(
        self, components: BaseComponents, videos: torch.Tensor, batch_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised posterior mean and std (N, C, f, h, w) of videos (N, 3, F, H, W) in
        [-1, 1], F = 4k + 1, through the 3D VAE `batch_size` videos at a time: `(μ − mean) /
        std` and `σ / std` with the VAE config's per-channel `latents_mean` / `latents_std`."""
        import torch

        vae = components.vae
        means, stds = [], []
        with torch.no_grad():
            for chunk in videos.split(batch_size):
                posterior = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
        shift, scale = latent_stats(vae, torch.device("cpu"))
        mean, std = torch.cat(means).cpu(), torch.cat(stds).cpu()
        return (mean - shift) / scale, std / scale

    def decode(
        self, components: BaseComponents, latents: torch.Tensor, batch_size: int = 16
    ) -> torch.Tensor:
        """(B, C, f, h, w) normalised latents → (B, F, H, W, 3) frames in [0, 1] on the CPU, as
        `WanPipeline` decodes: `z · latents_std + latents_mean`, the 3D VAE over whole videos
        (about `batch_size` frames per call, at least one video)."""
        import torch

        vae = components.vae
        shift, scale = latent_stats(vae, vae.device)
        latents = latents.to(vae.device, vae.dtype) * scale.to(vae.dtype) + shift.to(vae.dtype)
        frames = (latents.shape[2] - 1) * TEMPORAL_FACTOR + 1
        per_call = max(1, batch_size // frames)
        videos = torch.cat([vae.decode(chunk).sample for chunk in latents.split(per_call)])
        return (videos.float().permute(0, 2, 3, 4, 1) / 2 + 0.5).clamp(0, 1).cpu()

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
        """Flow matching (Wan §3, rectified flow): `x_t = (1 − σ)·x0 + σ·ε`, target the
        velocity `ε − x0`, timesteps `σ · num_train_timesteps` (B,).

        σ is drawn as diffusers' flow-matching trainers do (`training_utils.
        compute_density_for_timestep_sampling`, scheme "none": u ~ U(0, 1)) and shifted with
        the base's flow shift s (scheduler `flow_shift` or `shift`): σ = s·u / (1 + (s − 1)·u),
        the shift `FlowMatchEulerDiscreteScheduler` and `UniPCMultistepScheduler` apply when
        sampling. The loss is then unweighted (`compute_loss_weighting_for_sd3`, "none"). A share
        `high_noise_share` of the videos draws σ uniformly from `high_noise_band` instead;
        `offset_noise` adds `offset_noise`·randn(B, C, F, 1, 1) to ε.

        On a two-expert base every step's batch stays in one expert's range (`predict` runs
        one transformer per call): σ ≥ `boundary_ratio` for the high-noise expert (`experts`
        holding ""), below it for the low-noise one (`SECOND_EXPERT`). Training one expert, σ
        is drawn from the shifted distribution restricted to its range (u uniform over the
        matching range of u); training both, each step first picks an expert with the
        probability the shifted distribution gives its range, so over the run each video's σ
        follows the unrestricted distribution. High-noise draws map linearly into the range."""
        import torch
        from diffusers.training_utils import compute_density_for_timestep_sampling

        from dvkit.train.diffusion import draw_noise

        batch, device = latents.shape[0], latents.device
        noise = draw_noise(latents, generator, offset_noise)
        u = compute_density_for_timestep_sampling("none", batch, device=device, generator=generator)
        shift = flow_shift(components.scheduler)
        band = _expert_band(components, experts, shift, generator)
        u_low, u_high = (value / (shift - (shift - 1) * value) for value in band)  # σ → u
        u = u_low + (u_high - u_low) * u
        sigma = shift * u / (1 + (shift - 1) * u)
        if high_noise_share:
            low, high = high_noise_band
            noisier = low + (high - low) * torch.rand(batch, generator=generator, device=device)
            noisier = band[0] + (band[1] - band[0]) * noisier
            chosen = torch.rand(batch, generator=generator, device=device) < high_noise_share
            sigma = torch.where(chosen, noisier, sigma)
        sigmas = sigma.view(-1, *(1,) * (latents.ndim - 1))
        noisy = (1 - sigmas) * latents + sigmas * noise
        steps = components.scheduler.config.num_train_timesteps
        return noisy, noise - latents, sigma * steps

    def predict(
        self,
        components: BaseComponents,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """The velocity (B, C, f, h, w) of the expert whose range holds the timesteps (one
        timestep, or (B,) all in one expert's range): `transformer(hidden_states, timestep,
        encoder_hidden_states)` as `WanPipeline` calls it."""
        model = expert_for(components, timesteps)
        timesteps = timesteps.expand(noisy.shape[0]) if timesteps.ndim == 0 else timesteps
        return model(
            hidden_states=noisy.to(model.dtype),
            timestep=timesteps,
            encoder_hidden_states=text.to(model.dtype),
            return_dict=False,
        )[0]

    def sampling_scheduler(self, components: BaseComponents) -> SchedulerMixin:
        """A fresh copy of the base's own scheduler (UniPC with flow prediction and `flow_shift`
        on the Wan-AI bases), as `WanPipeline` is given it."""
        return type(components.scheduler).from_config(components.scheduler.config)


def _expert_band(
    components: BaseComponents, experts: Sequence[str], shift: float, generator: torch.Generator
) -> tuple[float, float]:
    """The σ range of this step's batch: (0, 1) with one transformer; the trained expert's
    range, or with both trained one of them drawn with its share of the shifted σ
    distribution (P(σ ≥ b) = 1 − u(b), u(σ) = σ / (s − (s − 1)·σ))."""
    import torch

    from dvkit.models.injection import SECOND_EXPERT

    boundary = components.boundary_ratio
    if components.unet_2 is None or boundary is None:
        return 0.0, 1.0
    high = "" in experts
    if high and SECOND_EXPERT in experts:
        low_share = boundary / (shift - (shift - 1) * boundary)
        high = bool(torch.rand(1, generator=generator, device=generator.device) >= low_share)
    return (boundary, 1.0) if high else (0.0, boundary)


def expert_for(components: BaseComponents, timesteps: torch.Tensor) -> nn.Module:
    """The transformer that denoises `timesteps` (one, or (B,) all on one side of the boundary):
    `transformer` at or above `boundary_ratio` × `num_train_timesteps`, `transformer_2` below
    (`WanPipeline`); `transformer` on bases with one. `ValueError` for a batch across the
    boundary."""
    if components.unet_2 is None or components.boundary_ratio is None:
        return components.unet
    boundary = components.boundary_ratio * components.scheduler.config.num_train_timesteps
    high = timesteps >= boundary
    if bool(high.all()):
        return components.unet
    if not bool(high.any()):
        return components.unet_2
    raise ValueError("a batch of timesteps on both sides of the experts' boundary")


def flow_shift(scheduler: SchedulerMixin) -> float:
    """The static flow shift of a flow-matching scheduler: UniPC's `flow_shift`, the Euler
    scheduler's `shift` (1: none)."""
    config = scheduler.config
    return float(config.get("flow_shift") or config.get("shift") or 1.0)


def latent_stats(vae: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A Wan VAE's per-channel `latents_mean` and `latents_std`, shaped (1, C, 1, 1, 1): its
    latents are normalised as `(z − mean) / std`."""
    import torch

    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, device=device).view(shape)
    return mean, std


class SpritesWanFamily(WanFamily):
    """The built-in `sprites-wan` base: a Wan transformer in pixel space (`PixelCodec`, no VAE:
    latents are the 16×16 frames, any frame count, one latent frame per frame), the sprites
    CLIP text encoder and tokenizer (text as on the UNet families), Wan's flow-matching
    objective and sampler. Adapter sites are `wan`'s (`WanTransformerBlock`)."""

    name = "sprites-pixel-wan"
    description = "pixel-space Wan transformer of the sprites world (built-in)"
    temporal_vae = False
    defaults = SPRITES_DEFAULTS
    tokenize = Family.tokenize
    embed_ids = Family.embed_ids
    encode_text = Family.encode_text
    scale_factor = Family.scale_factor
    check_frames = Family.check_frames
    frames_at_most = Family.frames_at_most
    frames_at_least = Family.frames_at_least
    latent_frames = Family.latent_frames
    encode_frames = Family.encode_frames
    encode_videos = Family.encode_videos
    decode = Family.decode

    def detect(self, folder: Path) -> bool:
        return False

    def claims_hub_id(self, source: str) -> bool:
        return False

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        raise BaseLoadError("sprites bases are built in: use the base named 'sprites-wan'")


WAN = WanFamily()
SPRITES_WAN = SpritesWanFamily()
