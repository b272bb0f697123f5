"""Placing a frozen base on a device for training, and the per-run random generator."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from dvkit.distributed import World
from dvkit.models.components import BaseComponents
from dvkit.train.loop import LoopSettings
from dvkit.train.settings import CommonSettings


def prepare_base(
    base: BaseComponents, device: torch.device, dtype: torch.dtype, gradient_checkpointing: bool
) -> None:
    """Move the base to `device` in `dtype`, frozen (no gradients for any of its weights)."""
    base.freeze(device, dtype)
    if gradient_checkpointing:
        checkpoint_blocks(base.unet)


def checkpoint_blocks(unet: torch.nn.Module) -> None:
    """Recompute each UNet block's activations during the backward pass instead of keeping
    them (diffusers' UNet3DConditionModel has no switch for this). Adapter hooks run again in
    the recomputation, so their gradients are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:

        def forward(*args: Any, _original: Any = block.forward, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward


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
