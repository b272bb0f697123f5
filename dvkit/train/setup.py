"""Placing a frozen base on a device for training, which of its denoisers adapters train on,
and the per-run random generator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from dvkit.distributed import World
from dvkit.errors import DvkitError
from dvkit.models.adapters import AdapterKind
from dvkit.models.components import BaseComponents
from dvkit.models.injection import SECOND_EXPERT
from dvkit.train.loop import LoopSettings
from dvkit.train.settings import MEMORY_MODES, CommonSettings


def prepare_base(
    base: BaseComponents,
    device: torch.device,
    dtype: torch.dtype,
    settings: CommonSettings,
    trained: Mapping[str, torch.nn.Module] | None = None,
) -> None:
    """Move the base to `device` in `dtype`, frozen (no gradients for any of its weights), the
    denoisers adapters train on (`trained`, see `trained_denoisers`; None: all) set up for the
    run's memory modes (`memory_modes`); an expert no adapter trains on (Wan 2.2 A14B's
    low-noise one for a motion by default) never runs in training and stays in CPU memory:

    - `checkpoint`: each block's activations are recomputed in the backward pass
      (`checkpoint_blocks`);
    - `fp8`: the denoisers' weights are stored in `float8_e4m3fn` and each layer is cast to
      `dtype` just for its forward pass (diffusers `ModelMixin.enable_layerwise_casting`, which
      leaves norms, patch and position embeddings and `_keep_in_fp32_modules` in `dtype`);
      cast on the CPU before moving, so a base is never on the device whole in `dtype`;
    - `offload`: the denoisers stay on the CPU and each block is moved to `device` for its
      forward pass only (diffusers `apply_group_offloading`, `block_level`, one block per
      group). Frozen weights a layer saved for the backward pass would stay on the device until
      then, so `offload` always runs with `checkpoint`: blocks are recomputed (and moved again)
      in the backward pass. On a CPU run it changes nothing.

    Adapters are hooks on the blocks' layers (`dvkit.models.injection`): they run in the
    recomputation and on the cast or moved layers alike, so their gradients are those of a run
    without the modes (`fp8`: to the float8 rounding of the base's weights).
    `DvkitError` when the installed torch or diffusers cannot do a mode."""
    modes = memory_modes(settings)
    on_cpu = "fp8" in modes or "offload" in modes
    used = [
        d
        for d in base.denoisers.values()
        if trained is None or any(d is t for t in trained.values())
    ]
    idle = [d for d in base.denoisers.values() if not any(d is u for u in used)]
    base.freeze(device, dtype, torch.device("cpu") if on_cpu else device, idle=idle)
    for denoiser in used:
        if "checkpoint" in modes:
            checkpoint_blocks(denoiser)
        if "fp8" in modes:
            _layerwise_fp8(denoiser, dtype)
        if "offload" in modes:
            from diffusers.hooks import apply_group_offloading

            apply_group_offloading(
                denoiser, onload_device=device, offload_device=torch.device("cpu"),
                offload_type="block_level", num_blocks_per_group=1,
            )  # fmt: skip
        elif on_cpu:
            denoiser.to(device)


def memory_modes(settings: CommonSettings) -> list[str]:
    """The run's memory modes: `settings.memory`, with `checkpoint` added by
    `gradient_checkpointing` or by `offload`."""
    modes = set(settings.memory)
    if settings.gradient_checkpointing or "offload" in modes:
        modes.add("checkpoint")
    return [mode for mode in MEMORY_MODES if mode in modes]


def _layerwise_fp8(denoiser: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store `denoiser`'s weights in float8 (e4m3), computed in `dtype` (see `prepare_base`)."""
    import diffusers

    if not hasattr(torch, "float8_e4m3fn"):
        raise DvkitError(f"--memory fp8 needs float8 tensors: torch {torch.__version__} has none")
    if not hasattr(denoiser, "enable_layerwise_casting"):
        raise DvkitError(
            f"--memory fp8 needs diffusers ≥ 0.33 (layerwise casting); {diffusers.__version__} "
            "is installed"
        )
    denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)


def checkpoint_blocks(unet: torch.nn.Module) -> None:
    """Recompute each UNet block's activations during the backward pass instead of keeping
    them (diffusers' UNet3DConditionModel has no switch for this; a denoiser without UNet
    blocks, such as Wan's transformer, uses diffusers' own `enable_gradient_checkpointing`).
    Adapter hooks run again in the recomputation, so their gradients are unchanged."""
    from torch.utils.checkpoint import checkpoint

    if not hasattr(unet, "down_blocks"):
        unet.enable_gradient_checkpointing()
        return

    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:

        def forward(*args: Any, _original: Any = block.forward, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward


DEFAULT_EXPERTS = {"subject": "both", "motion": "high"}
"""Which experts of a two-expert base (Wan 2.2 A14B) adapters train on by default: a subject's
look is drawn through the whole schedule, so on both; a motion is laid out in the noisy steps
(DESIGN §1; on Wan 2.2 the high-noise expert lays out a video's layout and motion), so on the
high-noise expert."""


def trained_denoisers(
    base: BaseComponents, choice: str | None, kind: AdapterKind
) -> dict[str, torch.nn.Module]:
    """The denoisers adapters of `kind` train on, by block-path prefix (see
    `dvkit.models.injection.SECOND_EXPERT`): `choice` "high", "low" or "both" on a two-expert
    base, its kind's `DEFAULT_EXPERTS` when None; the one denoiser of other bases, where a
    given choice is a `DvkitError`."""
    if base.unet_2 is None:
        if choice:
            raise DvkitError(
                f"--experts {choice}: base {base.name} has one transformer; --experts is for "
                "bases with a high- and a low-noise expert (Wan 2.2 A14B)"
            )
        return {"": base.unet}
    choice = choice or DEFAULT_EXPERTS[kind]
    experts = {"high": {"": base.unet}, "low": {SECOND_EXPERT: base.unet_2}}
    return experts[choice] if choice in experts else {**experts["high"], **experts["low"]}


def loop_settings(
    settings: CommonSettings, device: torch.device, dtype: torch.dtype, world: World
) -> LoopSettings:
    """Autocast in the base's half precision on CUDA; full precision elsewhere."""
    autocast = dtype if device.type == "cuda" and dtype != torch.float32 else None
    return LoopSettings(
        warmup_steps=settings.warmup_steps,
        checkpoint_every=settings.checkpoint_every,
        device=device,
        autocast_dtype=autocast,
        world=world,
    )


def make_generator(seed: int, device: torch.device, world: World) -> torch.Generator:
    """The run's only source of randomness; each process of a data-parallel run gets its own."""
    return torch.Generator(device=device).manual_seed(seed + world.rank)


def run_key(parts: dict[str, Any]) -> str:
    """A short stable key of a run's inputs (settings, data and base fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
