"""The `animatediff` family: a Stable Diffusion 1.5 UNet with AnimateDiff motion modules
(diffusers `UNetMotionModel`, built with `UNetMotionModel.from_unet2d` from a
`UNet2DConditionModel` and a `MotionAdapter`).

Identity adapters sit beside `attn2` of each `Transformer2DModel` block (the SD 1.5 text
cross-attention); motion adapters beside `attn1`, `attn2` and `ff` of each
`AnimateDiffTransformer3D` block in `motion_modules` (both attentions are temporal
self-attention; the block adds sinusoidal frame positions to their input, and the adapters read
that input with the positions added, DESIGN §7). Text: CLIP ViT-L/14 (77 tokens, 768 wide);
latents: the SD VAE per frame. Sampling reproduces `AnimateDiffPipeline` with the scheduler its
documentation gives it: DDIM on linear betas 0.00085 → 0.012, `steps_offset` 1, no sample
clipping, `linspace` spacing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.families.base import BaseLoadError, Family, FamilyDefaults, config_class, load_failure
from dvkit.models.weight_files import component_files, hub_snapshot

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMScheduler

    from dvkit.models.components import BaseComponents

_SPATIAL = "diffusers.models.transformers.transformer_2d:Transformer2DModel"
_TEMPORAL = "diffusers.models.unets.unet_motion_model:AnimateDiffTransformer3D"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


class AnimateDiffFamily(Family):
    name = "animatediff"
    description = "Stable Diffusion 1.5 + AnimateDiff motion modules (diffusers UNetMotionModel)"
    reference_pipeline = "AnimateDiffPipeline"
    denoiser_class = "UNetMotionModel"
    sites = {"subject": (_SPATIAL,), "motion": (_TEMPORAL,)}
    # AnimateDiffPipeline's own defaults (16 frames, 50 steps, guidance 7.5) at SD 1.5's 512×512;
    # AnimateDiff samples from plain Gaussian noise, and its motion modules learn from 16-frame
    # clips.
    defaults = FamilyDefaults(
        frames=16, fps=8, size=512, train_frames=16, steps=50, guidance=7.5, offset_noise=0.0
    )

    def detect(self, folder: Path) -> bool:
        return config_class(folder / "unet" / "config.json") == self.denoiser_class

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        """A saved AnimateDiff folder (its unet/ a `UNetMotionModel`), or an SD 1.5 Hub id,
        diffusers folder or single checkpoint file with `options["motion_adapter"]`: a Hub id,
        folder or file of a diffusers `MotionAdapter`."""
        from diffusers import UNet2DConditionModel, UNetMotionModel

        from dvkit.models.components import BaseComponents
        from dvkit.models.loading import quiet_libraries

        quiet_libraries()
        path = Path(source).expanduser()
        adapter = options.get("motion_adapter")
        try:
            if path.is_dir() and self.detect(path):
                parts = _sd_components(str(path), UNetMotionModel)
                unet = parts["unet"]
                adapter = None
            else:
                if not adapter:
                    raise BaseLoadError(
                        f"{source} is not an AnimateDiff folder; give the motion adapter to add "
                        "with --motion-adapter (e.g. guoyww/animatediff-motion-adapter-v1-5-3)"
                    )
                parts = _sd_components(source, UNet2DConditionModel)
                unet = UNetMotionModel.from_unet2d(parts["unet"], _motion_adapter(adapter))
        except (OSError, ValueError) as exc:
            raise BaseLoadError(load_failure(source, path.exists(), exc)) from None
        return BaseComponents(
            weight_files=_weight_files(source, adapter),
            unet=unet.eval(),
            vae=parts["vae"].eval(),
            text_encoder=parts["text_encoder"].eval(),
            tokenizer=parts["tokenizer"],
            scheduler=animatediff_scheduler(parts["scheduler"].config),
            name=name,
            architecture=self.name,
        )

    def predict(
        self,
        components: BaseComponents,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """`UNetMotionModel` folds frames into the batch and takes one text (B·F, L, D) per frame,
        repeated as `AnimateDiffPipeline` repeats it."""
        frames = noisy.shape[2]
        per_frame = text.repeat_interleave(frames, dim=0)
        return components.unet(noisy, timesteps, encoder_hidden_states=per_frame).sample


def animatediff_scheduler(config: Mapping[str, Any] | None = None) -> DDIMScheduler:
    """DDIM as AnimateDiff's documentation configures it for `AnimateDiffPipeline`, over a base's
    scheduler config (its betas and timestep count): linear betas, `linspace` spacing,
    `steps_offset` 1, no sample clipping."""
    from diffusers import DDIMScheduler

    settings = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    if config is not None:
        settings.update({key: config[key] for key in settings if key in config})
    return DDIMScheduler(
        **settings,
        beta_schedule="linear",
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=1,
        prediction_type="epsilon",
    )


def _sd_components(source: str, unet_class: type) -> dict[str, Any]:
    """UNet (of `unet_class`), VAE, text encoder, tokenizer and scheduler of an SD 1.5 model: a
    diffusers folder, a Hub id, or a single checkpoint file
    (`StableDiffusionPipeline.from_single_file`, whose UNet is a `UNet2DConditionModel`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(source).expanduser()
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return StableDiffusionPipeline.from_single_file(str(path), safety_checker=None).components
    location = str(path) if path.exists() else source
    return {
        "unet": unet_class.from_pretrained(location, subfolder="unet"),
        "vae": AutoencoderKL.from_pretrained(location, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(location, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(location, subfolder="tokenizer"),
        "scheduler": DDIMScheduler.from_pretrained(location, subfolder="scheduler"),
    }


def _weight_files(source: str, adapter: str | None) -> dict[str, list[Path]]:
    """The files of the SD 1.5 model (a checkpoint file, or its unet, vae and text encoder) and
    of the motion adapter; {} when some are not on disk (the tensors are hashed instead)."""
    files: dict[str, list[Path]] = {}
    for label, where in (("base", source), ("motion_adapter", adapter)):
        if where is None:
            continue
        path = Path(where).expanduser()
        if path.is_file():
            files[label] = [path]
            continue
        folder = path if path.is_dir() else hub_snapshot(where)
        if folder is None:
            return {}
        subfolders = ("unet", "vae", "text_encoder") if label == "base" else ("",)
        found = component_files(folder, subfolders)
        if not found:
            return {}
        files.update({f"{label}/{sub}".rstrip("/"): paths for sub, paths in found.items()})
    return files


def _motion_adapter(source: str) -> Any:
    """A diffusers `MotionAdapter` from a Hub id, a folder, or a single file of original
    AnimateDiff motion-module weights (`MotionAdapter.from_single_file`)."""
    from diffusers import MotionAdapter

    path = Path(source).expanduser()
    if path.is_file():
        return MotionAdapter.from_single_file(str(path))
    return MotionAdapter.from_pretrained(str(path) if path.exists() else source)


ANIMATEDIFF = AnimateDiffFamily()
