"""Base families: one module per architecture of base model, registered by name.

A *family* says everything that differs between architectures (loading, text, latents, the
objective, the sampler's scheduler, where adapters sit, its defaults); a *base* is one set of
weights of a family. The name of a family is the `architecture` recorded on bases and adapter
files. Family modules import torch and diffusers only inside their methods, so `family(name)`
is cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from dvkit.errors import NotFoundError

if TYPE_CHECKING:
    from dvkit.families.base import Family

FAMILIES: dict[str, str] = {
    "modelscope-t2v": "dvkit.families.modelscope:MODELSCOPE",
    "sprites-pixel-t2v": "dvkit.families.modelscope:SPRITES",
    "animatediff": "dvkit.families.animatediff:ANIMATEDIFF",
    "wan": "dvkit.families.wan:WAN",
    "sprites-pixel-wan": "dvkit.families.wan:SPRITES_WAN",
}
"""Family name → `module:attribute` of its `Family` object."""


def family(name: str) -> Family:
    """The family named `name`; `NotFoundError` listing the known ones otherwise."""
    if name not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise NotFoundError(f"unknown base family {name!r} (known: {known})")
    module, attribute = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def detect_family(folder: Path) -> Family | None:
    """The family whose `detect` recognises a local diffusers folder, or None."""
    for name in FAMILIES:
        candidate = family(name)
        if candidate.detect(folder):
            return candidate
    return None


def family_of_denoiser(denoiser: object) -> Family:
    """The first family whose denoiser class is `denoiser`'s (families sharing a denoiser class
    share its adapter sites); `NotFoundError` for a denoiser of no known family."""
    cls = type(denoiser).__name__
    for name in FAMILIES:
        candidate = family(name)
        if candidate.denoiser_class == cls:
            return candidate
    raise NotFoundError(f"no base family has a {cls} denoiser")
