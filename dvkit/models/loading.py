"""Loading bases: built-in ones by name, others through their family from a Hub id, a local
diffusers folder or a checkpoint file.

Hub loading goes through the Hugging Face cache and respects HF_HUB_OFFLINE=1; a base that
is not available gets one clear message naming what to fetch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dvkit.errors import DvkitError
from dvkit.families import FAMILIES, detect_family, family
from dvkit.families.base import BaseLoadError, Family
from dvkit.models.builtin import BUILTINS, build_builtin
from dvkit.models.components import BaseComponents

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def load_base(
    source: str,
    name: str | None = None,
    architecture: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> BaseComponents:
    """Components of a built-in base (`tiny`, `sprites`, or `builtin:NAME`) or of a Hub id,
    local folder or checkpoint file of family `architecture` (found with `choose_family` when
    not given). `options` holds family-specific sources such as AnimateDiff's motion adapter."""
    builtin = source.removeprefix("builtin:")
    if builtin in BUILTINS:
        quiet_libraries()
        return build_builtin(builtin)
    options = dict(options or {})
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
        raise BaseLoadError(f"no such file or folder: {source}")
    chosen = family(architecture) if architecture else choose_family(source, options)
    return chosen.load(source, name or _default_name(source), options)


def choose_family(source: str, options: Mapping[str, Any]) -> Family:
    """The family of a base to add: AnimateDiff when a motion adapter is given, else the family
    a local folder's configs name, else the family whose Hub ids the id looks like
    (`Family.claims_hub_id`: Wan's), else `modelscope-t2v` (ModelScope and ZeroScope)."""
    if options.get("motion_adapter"):
        return family("animatediff")
    folder = Path(source).expanduser()
    if folder.is_dir():
        found = detect_family(folder)
        if found is None:
            raise BaseLoadError(
                f"{folder} is not a diffusers text-to-video folder of a known family (no "
                "unet/config.json naming UNet3DConditionModel or UNetMotionModel, no "
                "model_index.json naming WanPipeline; for Stable "
                "Diffusion 1.5 give --motion-adapter)"
            )
        return found
    for name in FAMILIES:
        if family(name).claims_hub_id(source):
            return family(name)
    return family("modelscope-t2v")


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' advice (e.g. about accelerate) and their loading bars
    off the terminal."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")


def _default_name(source: str) -> str:
    tail = source.rstrip("/").rsplit("/", 1)[-1].lower()
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in tail).strip("-_")
    return cleaned[:64] or "base"
