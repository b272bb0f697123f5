"""The components of a text-to-video base model and their fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from dvkit.families.base import Family

# Config entries that record how or by which library version a model was loaded, not what it is.
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "architectures", "dtype", "torch_dtype"})


@dataclass
class BaseComponents:
    """A base model: UNet, VAE, text encoder, tokenizer and noise scheduler, with its name.

    `unet` is the denoiser (a UNet in the UNet families, a transformer on Wan; on Wan 2.2 A14B
    the high-noise expert, with `unet_2` the low-noise one). `architecture` names the model family
    (e.g. "modelscope-t2v"); `family` is that family's object.
    """

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    name: str
    architecture: str
    weight_files: dict[str, list[Path]] = field(default_factory=dict)
    """The files the weights were loaded from, per component (empty for built-in bases)."""
    unet_2: Any = None
    """A second denoiser (Wan 2.2 A14B's low-noise expert `transformer_2`), or None."""
    boundary_ratio: float | None = None
    """Where denoising passes from `unet` to `unet_2`, as a fraction of the schedule."""

    @property
    def denoisers(self) -> dict[str, Any]:
        """The denoisers by label: `unet`, and `unet_2` when the base has two experts."""
        return {"unet": self.unet, **({"unet_2": self.unet_2} if self.unet_2 is not None else {})}

    @property
    def family(self) -> Family:
        """The base's family (see `dvkit.families`)."""
        from dvkit.families import family

        return family(self.architecture)

    def freeze(
        self,
        device: torch.device,
        dtype: torch.dtype,
        denoiser_device: torch.device | None = None,
        idle: Sequence[Any] = (),
    ) -> None:
        """Move the denoisers (to `denoiser_device` when given; those in `idle` to the CPU), VAE
        and text encoder to `device` in `dtype`, frozen in eval mode."""
        denoisers = list(self.denoisers.values())
        for model in (*denoisers, self.vae, self.text_encoder):
            if any(model is other for other in idle):
                model.to(device=torch.device("cpu"))
            else:
                model.to(device=denoiser_device or device if model in denoisers else device)
            if model.dtype != dtype:
                model.to(dtype=dtype)
            model.requires_grad_(False).eval()

    def fingerprint(self) -> str:
        """sha256 hex digest over the denoisers', VAE and text-encoder configs and their weights.

        Configs enter as sorted-key JSON (without private or version-stamp entries). A base
        loaded from disk (`weight_files` set by its family) adds each weight file's name and
        content digest (`dvkit.models.weight_files`: free for Hub-cached files); otherwise every
        tensor of each state dict enters sorted by name, with its dtype, shape and raw bytes.
        Either way the result does not depend on the dtype the base was loaded in, and any
        weight change before loading (or, for built-ins, added token rows) changes it.
        """
        from dvkit.models.weight_files import file_digest

        digest = hashlib.sha256()
        models = {**self.denoisers, "vae": self.vae, "text_encoder": self.text_encoder}
        for label, model in models.items():
            config = _config_dict(model)
            digest.update(f"{label}.config\n".encode())
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            if self.weight_files:
                continue
            state = model.state_dict()
            for key in sorted(state):
                tensor = state[key]
                digest.update(f"\n{label}.{key} {tensor.dtype} {list(tensor.shape)}\n".encode())
                digest.update(_tensor_bytes(tensor))
        for label in sorted(self.weight_files):
            for path in self.weight_files[label]:
                digest.update(f"\n{label}/{path.name} {file_digest(path)}\n".encode())
        return digest.hexdigest()


def dreamvideo_scheduler() -> DDIMScheduler:
    """The DDIM noise schedule of ModelScope T2V (betas 0.00085 → 0.012, scaled linear), used
    for training and sampling by DreamVideo and by dvkit's built-in bases."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _config_dict(model: Any) -> dict[str, Any]:
    """The model's config as a plain dict, without private keys and load-time stamps."""
    config = model.config
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {
        key: value
        for key, value in raw.items()
        if not key.startswith("_") and key not in _VOLATILE_CONFIG_KEYS
    }


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, any device) in C order."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()
