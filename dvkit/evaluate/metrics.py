"""The DreamVideo metrics on L2-normalised embeddings: raw cosines, no ×100, no clamping.

CLIP-T: mean over frames of cos(text, frame). CLIP-I / DINO-I: mean over reference images ×
frames of cos(reference, frame). T. Cons.: mean over consecutive frame pairs of cos(f, f+1);
a 1-frame video has no pair, so its T. Cons. is None (not applicable, not a number). Each is
computed per video; grids average them over the videos that have them.
"""

from __future__ import annotations

import torch


def normalise(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def text_alignment(text: torch.Tensor, frames: torch.Tensor) -> float:
    """CLIP-T of one video: text (D,), frames (F, D), both normalised."""
    return float((frames @ text).mean())


def image_similarity(references: torch.Tensor, frames: torch.Tensor) -> float:
    """CLIP-I or DINO-I of one video: references (R, D), frames (F, D), both normalised."""
    return float((references @ frames.T).mean())


def temporal_consistency(frames: torch.Tensor) -> float | None:
    """T. Cons. of one video: frames (F, D) normalised; None when F < 2 (no consecutive pair)."""
    if frames.shape[0] < 2:
        return None
    return float((frames[:-1] * frames[1:]).sum(dim=-1).mean())
