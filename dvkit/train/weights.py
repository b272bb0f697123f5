"""The weights a training run learns: DreamVideo adapters, or (`settings.adapter` lora) a
MotionDirector-style LoRA (Zhao et al. 2023, "MotionDirector": spatial LoRAs on the spatial
attention layers for appearance, temporal LoRAs on the temporal ones for motion).

Both train through `AdapterInjector`'s hooks, so the base's modules and state dict never change
(peft's module replacement would change the keys dvkit fingerprints); a LoRA starts as peft
starts one (A Kaiming-uniform, B zero) and scales its update by alpha / rank as peft does.
"""

from __future__ import annotations

from typing import Any

import torch

from dvkit.errors import DvkitError
from dvkit.families.base import Family
from dvkit.io.adapter_layout import lora_target
from dvkit.models.adapters import AdapterKind
from dvkit.models.components import BaseComponents
from dvkit.models.injection import (
    AdapterInjector,
    AdapterWeights,
    Denoisers,
    adapter_slots,
    create_adapter_state,
)
from dvkit.models.lora import LoraWeights
from dvkit.train.settings import CommonSettings

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The layers a trained LoRA adapts in each transformer block: the attention projections, as
diffusers' Stable Diffusion LoRA script targets them (`train_text_to_image_lora.py`) and
MotionDirector's spatial and temporal LoRAs do."""


def lora_layers(unet: torch.nn.Module, kind: AdapterKind) -> list[str]:
    """The `unet.<path>` of every `LORA_TARGETS` layer in the transformer blocks that adapters
    of `kind` sit in (`adapter_slots`): spatial attention for subjects, temporal for motions."""
    blocks = dict.fromkeys(slot.block for slot in adapter_slots(unet, kind))
    return [
        f"unet.{block}.{path}"
        for block in blocks
        for path, layer in unet.get_submodule(block).named_modules()
        if isinstance(layer, torch.nn.Linear) and path.endswith(LORA_TARGETS)
    ]


def fresh_weights(
    injector: AdapterInjector,
    base: BaseComponents,
    denoisers: Denoisers,
    kind: AdapterKind,
    settings: CommonSettings,
    name: str,
    cond_dim: int | None = None,
) -> AdapterWeights | LoraWeights:
    """Load fresh (zero-output) weights of `kind` under `name` and make them the only trainable
    part (`AdapterInjector.train_adapter`). DreamVideo adapters go on `denoisers` (block-path
    prefix → denoiser, `dvkit.train.setup.trained_denoisers`), LoRAs on the base's one denoiser;
    `cond_dim` is the image-embedding width of motion adapters (LoRAs take no condition).
    Raises `DvkitError` for a LoRA on a two-expert base."""
    if settings.adapter == "lora":
        if base.unet_2 is not None:
            raise DvkitError(
                f"--adapter lora: base {base.name} has two experts; dvkit trains LoRAs on "
                "one-denoiser bases"
            )
        roots = {"unet": base.unet}
        layers = lora_layers(base.unet, kind)
        alpha = settings.lora_alpha or float(settings.lora_rank)
        lora = LoraWeights.create(kind, roots, layers, settings.lora_rank, alpha, settings.seed)
        weights: AdapterWeights | LoraWeights = injector.load_lora(name, lora)
    else:
        fresh = create_adapter_state(
            denoisers, kind, settings.hidden_ratio, cond_dim=cond_dim, seed=settings.seed
        )
        weights = injector.load(name, kind, fresh, settings.hidden_ratio)
    injector.train_adapter(name)
    return weights


def file_fields(
    kind: AdapterKind,
    settings: CommonSettings,
    tensors: dict[str, torch.Tensor],
    family: Family,
) -> dict[str, Any]:
    """The adapter-file header fields a run's weights determine: method, and the placement of
    DreamVideo adapters (the family's slots for `kind`) or a LoRA's targets, rank and alpha."""
    if settings.adapter != "lora":
        return {"placement": list(family.slots[kind])}
    layers = [
        key.removesuffix(".lora_A.weight") for key in tensors if key.endswith("lora_A.weight")
    ]
    return {
        "method": "lora",
        "rank": settings.lora_rank,
        "alpha": settings.lora_alpha or float(settings.lora_rank),
        "placement": sorted({lora_target(layer) for layer in layers}),
    }
