"""The components of a text-to-video base model and their fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# Config entries that record how or by which library version a model was loaded, not what it is.
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "architectures", "dtype", "torch_dtype"})


@dataclass
class BaseComponents:
    """A base model: UNet, VAE, text encoder, tokenizer and noise scheduler, with its name.

    `architecture` names the model family (e.g. "modelscope-t2v").
    """

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    name: str
    architecture: str

    def freeze(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the UNet, VAE and text encoder to `device` in `dtype`, frozen in eval mode."""
        for model in (self.unet, self.vae, self.text_encoder):
            model.to(device=device)
            if model.dtype != dtype:
                model.to(dtype=dtype)
            model.requires_grad_(False).eval()

    def fingerprint(self) -> str:
        """sha256 hex digest over the UNet, VAE and text-encoder configs and all their weights.

        Configs enter as sorted-key JSON (without private or version-stamp entries); every tensor
        of each state dict enters sorted by name, with its dtype, shape and raw bytes. Any weight
        change (including added token rows) changes the result.
        """
        digest = hashlib.sha256()
        models = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        for label, model in models.items():
            config = _config_dict(model)
            digest.update(f"{label}.config\n".encode())
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            state = model.state_dict()
            for key in sorted(state):
                tensor = state[key]
                digest.update(f"\n{label}.{key} {tensor.dtype} {list(tensor.shape)}\n".encode())
                digest.update(_tensor_bytes(tensor))
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
