"""Loading bases: built-in ones by name, others from a Hub id or a local diffusers folder.

Hub loading goes through the Hugging Face cache and respects HF_HUB_OFFLINE=1; a base that
is not available gets one clear message naming what to fetch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dvkit.errors import DvkitError
from dvkit.models.components import BaseComponents

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRETRAINED_ARCHITECTURE = "modelscope-t2v"


class BaseLoadError(DvkitError):
    """A base that cannot be found or loaded."""


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DvkitError(f"device {name!r} asked for, but CUDA is not available here")
        return torch.device(name)
    raise DvkitError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Dtype of the frozen base weights: `auto` is float32 on CPU, bfloat16/float16 on CUDA."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise DvkitError(f"unknown dtype {name!r} (expected auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def load_base(source: str, name: str | None = None) -> BaseComponents:
    """Components of a built-in base (`tiny`, `sprites`) or of a Hub id / local diffusers folder."""
    if source in ("tiny", "builtin:tiny"):
        from dvkit.models.tiny import build_tiny_base

        return build_tiny_base()
    if source in ("sprites", "builtin:sprites"):
        from dvkit.sprites.base import build_sprites_base

        quiet_libraries()
        return build_sprites_base()
    return load_pretrained(source, name or _default_name(source))


def load_pretrained(source: str, name: str) -> BaseComponents:
    """A diffusers `UNet3DConditionModel` text-to-video model (ModelScope T2V, ZeroScope)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    quiet_libraries()
    folder = Path(source).expanduser()
    if folder.exists() and not (folder / "unet" / "config.json").is_file():
        raise BaseLoadError(
            f"{folder} is not a diffusers text-to-video folder (no unet/config.json)"
        )
    location = str(folder) if folder.exists() else source
    try:
        return BaseComponents(
            unet=UNet3DConditionModel.from_pretrained(location, subfolder="unet").eval(),
            vae=AutoencoderKL.from_pretrained(location, subfolder="vae").eval(),
            text_encoder=CLIPTextModel.from_pretrained(location, subfolder="text_encoder").eval(),
            tokenizer=CLIPTokenizer.from_pretrained(location, subfolder="tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(location, subfolder="scheduler"),
            name=name,
            architecture=PRETRAINED_ARCHITECTURE,
        )
    except (OSError, ValueError) as exc:
        raise BaseLoadError(_load_failure(source, folder.exists(), exc)) from None


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' advice (e.g. about accelerate) off the terminal."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")


def _load_failure(source: str, local: bool, exc: Exception) -> str:
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


def _default_name(source: str) -> str:
    tail = source.rstrip("/").rsplit("/", 1)[-1].lower()
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in tail).strip("-_")
    return cleaned[:64] or "base"
