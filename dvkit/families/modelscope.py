"""The `modelscope-t2v` family: diffusers' `UNet3DConditionModel` text-to-video models
(ModelScope T2V, ZeroScope, the built-in `tiny`), and its pixel-space variant `sprites-pixel-t2v`
(the built-in `sprites`).

Identity adapters sit beside `attn2` of each spatial `Transformer2DModel` block, motion adapters
beside `attn1`, `attn2` and `ff` of each `TransformerTemporalModel` block, `transformer_in`
included (DESIGN §1, VGen `unet_dreamvideo.py`). Sampling reproduces `TextToVideoSDPipeline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.families.base import BaseLoadError, Family, FamilyDefaults, config_class, load_failure
from dvkit.models.weight_files import component_files, hub_snapshot

if TYPE_CHECKING:
    from dvkit.models.components import BaseComponents

_SPATIAL = "diffusers.models.transformers.transformer_2d:Transformer2DModel"
_TEMPORAL = "diffusers.models.transformers.transformer_temporal:TransformerTemporalModel"
_WEIGHTED = ("unet", "vae", "text_encoder")


class ModelScopeFamily(Family):
    name = "modelscope-t2v"
    description = "diffusers UNet3DConditionModel text-to-video (ModelScope T2V, ZeroScope)"
    reference_pipeline = "TextToVideoSDPipeline"
    denoiser_class = "UNet3DConditionModel"
    sites = {"subject": (_SPATIAL,), "motion": (_TEMPORAL,)}
    # The official DreamVideo settings (VGen inference_dreamvideo_entrance.py and the
    # motionLearning configs): 256×256 at 8 fps, 32-frame training clips, 50 DDIM steps,
    # guidance 9, offset noise 0.1; 16 frames when sampling without a motion.
    defaults = FamilyDefaults(
        frames=16, fps=8, size=256, train_frames=32, steps=50, guidance=9.0, offset_noise=0.1
    )
    layouts = ("vgen",)

    def detect(self, folder: Path) -> bool:
        return config_class(folder / "unet" / "config.json") == self.denoiser_class

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        """A diffusers folder or Hub id with unet/ (UNet3DConditionModel), vae/, text_encoder/,
        tokenizer/ and scheduler/."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from dvkit.models.components import BaseComponents
        from dvkit.models.loading import quiet_libraries

        quiet_libraries()
        folder = Path(source).expanduser()
        if folder.exists() and not (folder / "unet" / "config.json").is_file():
            raise BaseLoadError(
                f"{folder} is not a diffusers text-to-video folder (no unet/config.json)"
            )
        location = str(folder) if folder.exists() else source
        try:
            components = BaseComponents(
                unet=UNet3DConditionModel.from_pretrained(location, subfolder="unet").eval(),
                vae=AutoencoderKL.from_pretrained(location, subfolder="vae").eval(),
                text_encoder=CLIPTextModel.from_pretrained(
                    location, subfolder="text_encoder"
                ).eval(),
                tokenizer=CLIPTokenizer.from_pretrained(location, subfolder="tokenizer"),
                scheduler=DDIMScheduler.from_pretrained(location, subfolder="scheduler"),
                name=name,
                architecture=self.name,
            )
        except (OSError, ValueError) as exc:
            raise BaseLoadError(load_failure(source, folder.exists(), exc)) from None
        snapshot = folder if folder.exists() else hub_snapshot(source)
        if snapshot is not None:
            components.weight_files = component_files(snapshot, _WEIGHTED)
        return components


SPRITES_DEFAULTS = FamilyDefaults(
    frames=8,
    fps=8,
    size=16,
    train_frames=8,
    steps=25,
    guidance=2.0,
    motion_until=0.4,
    offset_noise=0.0,
)
"""The sprites world's defaults (16×16 clips of 8 frames at 8 fps; the sampler settings
`bench_sprites.py` measured), shared by its UNet and Wan-shaped bases."""


class SpritesFamily(ModelScopeFamily):
    """The built-in `sprites` base: a pixel-space 3D UNet (no VAE) whose temporal blocks carry
    sinusoidal frame positions, v-prediction, 16×16 videos."""

    name = "sprites-pixel-t2v"
    description = "pixel-space 3D UNet of the sprites world (built-in)"
    defaults = SPRITES_DEFAULTS
    layouts = ()

    def detect(self, folder: Path) -> bool:
        return False

    def load(self, source: str, name: str, options: Mapping[str, Any]) -> BaseComponents:
        raise BaseLoadError("sprites bases are built in: use the base named 'sprites'")


MODELSCOPE = ModelScopeFamily()
SPRITES = SpritesFamily()
