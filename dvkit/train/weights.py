"""The weights a training run learns: DreamVideo adapters, or (`settings.adapter` lora) a
MotionDirector-style LoRA (Zhao et al. 2023, "MotionDirector": spatial LoRAs on the spatial
attention layers for appearance, temporal LoRAs on the temporal ones for motion).

DreamVideo adapters train through `AdapterInjector`'s hooks. A LoRA trains through peft
(`PeftLora`): `peft.inject_adapter_in_model` wraps the target layers of the run's own copy of the
denoiser, peft initialises (A Kaiming-uniform, B zero) and runs the LoRA, and after training
`get_peft_model_state_dict` gives its weights, which dvkit's LoRA names take through the same
conversion as imported diffusers/peft files (`dvkit.io.lora_layouts.convert_lora`); the peft
layers are then removed, so the base's modules and state dict (which dvkit fingerprints) are as
before. Composing later runs the LoRA through dvkit's hooks (`dvkit.models.lora`), which compute
what peft computes.

Targets: the attention projections (`LORA_TARGETS`) of the attentions `Family.lora_attentions`
names in the blocks adapters of the kind sit in. Not every layer peft can wrap runs: AnimateDiff's
motion modules call `proj_in(input=…)`, a keyword peft's `Linear.forward(x)` does not take
(TypeError, checked with peft 0.21), so no target is a `proj_in`; the attention projections
are all called positionally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dvkit.errors import DvkitError
from dvkit.families import family_of_denoiser
from dvkit.families.base import Family
from dvkit.io.adapter_layout import lora_target
from dvkit.io.lora_export import family_pipeline
from dvkit.models.adapters import AdapterKind
from dvkit.models.components import BaseComponents
from dvkit.models.injection import (
    AdapterInjector,
    AdapterWeights,
    Denoisers,
    adapter_slots,
    create_adapter_state,
)
from dvkit.models.lora import TWO_EXPERTS
from dvkit.train.settings import CommonSettings

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The projections a trained LoRA adapts in each of its attentions, as diffusers' Stable
Diffusion LoRA script targets them (`train_text_to_image_lora.py`) and MotionDirector's spatial
and temporal LoRAs do."""

PEFT_ADAPTER = "dvkit_training"
"""The adapter name peft holds a training run's LoRA under."""


def lora_layers(unet: torch.nn.Module, kind: AdapterKind) -> list[str]:
    """The `unet.<path>` of every `LORA_TARGETS` projection of the attentions the family's
    `lora_attentions` names for `kind`, in the blocks adapters of `kind` sit in
    (`adapter_slots`): on UNets spatial blocks for subjects, temporal for motions."""
    attentions = family_of_denoiser(unet).lora_attentions[kind]
    projections = tuple(f"{attn}.{target}" for attn in attentions for target in LORA_TARGETS)
    blocks = dict.fromkeys(slot.block for slot in adapter_slots(unet, kind))
    return [
        f"unet.{block}.{path}"
        for block in blocks
        for path, layer in unet.get_submodule(block).named_modules()
        if isinstance(layer, torch.nn.Linear) and path.endswith(projections)
    ]


class PeftLora:
    """A LoRA of `rank` and `alpha` trained through peft on the layers `layers` (`unet.<path>`)
    of `unet`, a training run's own copy of the denoiser; `pipeline` is the family's diffusers
    pipeline class (`dvkit.io.lora_export.family_pipeline`).

    Per layer A [rank, in] (peft: Kaiming-uniform) and B [out, rank] (zero); the layer's output
    gains (alpha / rank) · B(A(x)). peft draws A from the global torch generator; with a `seed`
    that draw happens in a forked generator seeded with it, so runs with one seed start (and
    end) alike. A and B are cast to float32 after peft makes them in the base's dtype (the
    optimizer steps float32 weights; autocast runs the layers in half precision). Call `remove`
    when done: until then the base's module tree holds peft's layers.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        layers: list[str],
        rank: int,
        alpha: float,
        seed: int | None,
        pipeline: type,
    ) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.unet, self.alpha, self.pipeline = unet, alpha, pipeline
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights=True,
            target_modules=[layer.removeprefix("unet.") for layer in layers],
        )
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            inject_adapter_in_model(config, unet, adapter_name=PEFT_ADAPTER)
        for param in self._parameters().values():
            param.data = param.data.float()

    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        """peft's LoRA parameters by their names in the denoiser."""
        marker = f".{PEFT_ADAPTER}."
        return {name: p for name, p in self.unet.named_parameters() if marker in name}

    def parameters_by_name(self) -> dict[str, torch.nn.Parameter]:
        """A and B of every layer under dvkit's names (`unet.<path>.lora_A.weight`: peft's
        name without the adapter name, as `get_peft_model_state_dict` gives it, under the
        component): what training optimises, checkpoints and resumes by name."""
        marker = f".{PEFT_ADAPTER}."
        return {f"unet.{name.replace(marker, '.')}": p for name, p in self._parameters().items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The LoRA in dvkit's names with each layer's alpha (CPU copies): peft's
        `get_peft_model_state_dict` under the component, through `file_tensors`."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.unet, adapter_name=PEFT_ADAPTER)
        return self.file_tensors({f"unet.{key}": value for key, value in state.items()})

    def file_tensors(self, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A and B under dvkit's names (the final state, or a kept step's snapshot) with each
        layer's alpha, by `convert_lora` as an imported diffusers/peft file (CPU copies)."""
        from dvkit.io.lora_layouts import convert_lora

        copies = {key: value.detach().float().cpu().clone() for key, value in named.items()}
        _, tensors, _ = convert_lora(copies, self.pipeline, {"unet": {"lora_alpha": self.alpha}})
        return tensors

    def remove(self) -> None:
        """Put the base's own layers back in place of peft's and drop peft's config: the
        module tree and state dict are the base's again."""
        from diffusers.utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(self.unet)
        if hasattr(self.unet, "peft_config"):
            del self.unet.peft_config


def fresh_weights(
    injector: AdapterInjector,
    base: BaseComponents,
    denoisers: Denoisers,
    kind: AdapterKind,
    settings: CommonSettings,
    name: str,
    cond_dim: int | None = None,
) -> AdapterWeights | PeftLora:
    """Fresh (zero-output) weights of `kind`, the only trainable part. DreamVideo adapters
    load under `name` in `injector` (`AdapterInjector.train_adapter`) on `denoisers` (block-path
    prefix → denoiser, `dvkit.train.setup.trained_denoisers`); a LoRA goes into the base's one
    denoiser through peft (`PeftLora`; the caller removes it). `cond_dim` is the image-embedding
    width of motion adapters (LoRAs take no condition). Raises `DvkitError` for a LoRA on a
    two-expert base."""
    if settings.adapter == "lora":
        if base.unet_2 is not None:
            raise DvkitError("--adapter lora: " + TWO_EXPERTS.format(base=base.name))
        alpha = settings.lora_alpha or float(settings.lora_rank)
        layers = lora_layers(base.unet, kind)
        return PeftLora(
            base.unet,
            layers,
            settings.lora_rank,
            alpha,
            settings.seed,
            family_pipeline(base.architecture),
        )
    fresh = create_adapter_state(
        denoisers, kind, settings.hidden_ratio, cond_dim=cond_dim, seed=settings.seed
    )
    weights = injector.load(name, kind, fresh, settings.hidden_ratio)
    injector.train_adapter(name)
    return weights


def release(injector: AdapterInjector, weights: AdapterWeights | PeftLora) -> None:
    """Leave the base as it was after training (or an interrupted run): peft's layers removed,
    every adapter hook detached."""
    if isinstance(weights, PeftLora):
        weights.remove()
    injector.detach()


def kept_tensors(
    weights: AdapterWeights | PeftLora, kept: Mapping[int, Mapping[str, torch.Tensor]]
) -> dict[int, dict[str, torch.Tensor]]:
    """The parameter snapshots a stage kept (`StageResult.kept`), by step, as file tensors: a
    LoRA's with each layer's alpha (`PeftLora.file_tensors`), DreamVideo adapters' as kept."""
    if isinstance(weights, PeftLora):
        return {step: weights.file_tensors(tensors) for step, tensors in kept.items()}
    return {step: dict(tensors) for step, tensors in kept.items()}


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
