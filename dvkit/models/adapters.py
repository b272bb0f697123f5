"""The DreamVideo adapter: a zero-initialised bottleneck in parallel with a transformer layer."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

AdapterKind = Literal["subject", "motion"]
ADAPTER_KINDS: tuple[AdapterKind, ...] = ("subject", "motion")
DEFAULT_HIDDEN_RATIO = 0.5
DEFAULT_COND_DIM = 1024  # OpenCLIP ViT-H/14 pooled image embedding, as in the official code


def hidden_width(channels: int, hidden_ratio: float) -> int:
    """The bottleneck width of an adapter over `channels` channels."""
    return int(channels * hidden_ratio)


class Adapter(nn.Module):
    """`A(h) = up(GELU(down(h)))`, or with a condition `up(GELU(down(h + λ·cond(e))))`.

    `up` (weight and bias) starts at zero, so a fresh adapter adds exactly nothing. Identity
    (subject) adapters have no `cond`; motion adapters own `cond` (image-embedding dim → channels).
    """

    def __init__(
        self, channels: int, hidden_ratio: float = DEFAULT_HIDDEN_RATIO, cond_dim: int | None = None
    ) -> None:
        super().__init__()
        hidden = hidden_width(channels, hidden_ratio)
        self.down = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.cond = nn.Linear(cond_dim, channels) if cond_dim is not None else None

    def condition_shift(
        self, cond: torch.Tensor, cond_scale: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """`λ·W_down·cond(e)` per video (B, hidden): since `down` is linear,
        `down(h + λ·cond(e)) = down(h) + λ·W_down·cond(e)`, so the condition enters in the narrow
        hidden space, and the shift can be reused while `e` and λ stay the same."""
        if self.cond is None:
            raise ValueError("an identity adapter takes no condition")
        projected = self.cond(cond.to(self.cond.weight.dtype))
        if isinstance(cond_scale, torch.Tensor):
            projected = projected * cond_scale.to(projected)[:, None]
        else:
            projected = projected * cond_scale
        return projected @ self.down.weight.T.to(projected.dtype)

    def forward(
        self,
        h: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_scale: float | torch.Tensor = 1.0,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adapter output for hidden states `h` shaped (N, L, C).

        `cond` holds one embedding per video, shaped (B, cond_dim); `cond_scale` is λ, a number or
        one value per video (B,); or `shift` gives `condition_shift(cond, cond_scale)` already
        computed. The N rows of `h` are B videos, video-major (N = B·F for spatial layers, B·H·W
        for temporal ones), so each video's condition is repeated over its N // B rows and
        broadcast over the L positions. A motion adapter given neither sees the zero embedding,
        as when training drops the image (it still adds λ·W_down·bias of `cond`). The result
        has `h`'s dtype.
        """
        autocast = torch.is_autocast_enabled(h.device.type)
        hidden = self.down(h if autocast else h.to(self.down.weight.dtype))
        if shift is None and self.cond is not None:
            if cond is None:
                cond = self.cond.weight.new_zeros(1, self.cond.in_features)
            shift = self.condition_shift(cond, cond_scale)
        if shift is not None:
            videos, rows = shift.shape[0], hidden.shape[0]
            if rows % videos:
                raise ValueError(f"{rows} hidden-state rows cannot be split over {videos} videos")
            per_video = hidden.reshape(videos, rows // videos, *hidden.shape[1:])
            hidden = (per_video + shift[:, None, None, :].to(hidden.dtype)).reshape(hidden.shape)
        return self.up(self.act(hidden)).to(h.dtype)
