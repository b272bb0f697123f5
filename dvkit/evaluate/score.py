"""Scoring any video against a prompt and reference images: `score(...)` and `Scorer`.

A metric that does not apply to a video is None: T. Cons. of a 1-frame video (no consecutive
pair of frames)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dvkit.errors import DvkitError
from dvkit.evaluate import metrics
from dvkit.evaluate.encoders import DEFAULT_CLIP, DEFAULT_DINO, ClipScorer, ImageTower

VideoInput = str | Path | np.ndarray | torch.Tensor
ReferenceInput = str | Path | Sequence[str | Path] | np.ndarray | torch.Tensor
REFERENCE_SIDE = 224
"""The metric encoders' input size (CLIP ViT-B/32, DINO ViT-S/16): the least a reference keeps."""


class Scorer:
    """Loads the CLIP and DINO encoders once and scores many videos with them."""

    def __init__(
        self, clip: str = DEFAULT_CLIP, dino: str = DEFAULT_DINO, device: str = "auto"
    ) -> None:
        from dvkit.models.loading import resolve_device

        self.clip_spec, self.dino_spec = clip, dino
        self.device = resolve_device(device)
        self._clip: ClipScorer | None = None
        self._dino: ImageTower | None = None

    @property
    def clip(self) -> ClipScorer:
        if self._clip is None:
            from dvkit.evaluate.encoders import load_clip

            self._clip = load_clip(self.clip_spec, self.device)
        return self._clip

    @property
    def dino(self) -> ImageTower:
        if self._dino is None:
            from dvkit.evaluate.encoders import load_dino

            self._dino = load_dino(self.dino_spec, self.device)
        return self._dino

    def score(
        self, video: VideoInput, prompt: str | None = None, references: ReferenceInput | None = None
    ) -> dict[str, float | None]:
        """CLIP-T (with a prompt), CLIP-I and DINO-I (with references) and T. Cons. of a video
        (None for a single frame)."""
        frames = read_frames(video)
        clip_frames = self.clip.images(frames)
        result: dict[str, float | None] = {"t_cons": metrics.temporal_consistency(clip_frames)}
        if prompt is not None:
            result["clip_t"] = metrics.text_alignment(self.clip.texts([prompt])[0], clip_frames)
        if references is not None:
            images = read_references(references)
            clip_refs = torch.cat([self.clip.images(image[None]) for image in images])
            dino_refs = torch.cat([self.dino.images(image[None]) for image in images])
            result["clip_i"] = metrics.image_similarity(clip_refs, clip_frames)
            result["dino_i"] = metrics.image_similarity(dino_refs, self.dino.images(frames))
        return result


def score(
    video: VideoInput,
    prompt: str | None = None,
    references: ReferenceInput | None = None,
    *,
    clip: str = DEFAULT_CLIP,
    dino: str = DEFAULT_DINO,
    device: str = "auto",
) -> dict[str, float | None]:
    """Score one video (a file, a frame folder, or frames (F, H, W, 3)); see `Scorer.score`."""
    return Scorer(clip, dino, device).score(video, prompt, references)


def read_frames(video: VideoInput) -> torch.Tensor:
    """Frames (F, H, W, 3): uint8 from files, as given for arrays (uint8 or floats in [0, 1])."""
    if isinstance(video, (str, Path)):
        from dvkit.io.clips import read_video

        path = Path(video)
        if not path.exists():
            raise DvkitError(f"{path}: no such video")
        return torch.from_numpy(read_video(path))
    frames = torch.as_tensor(video)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DvkitError(f"frames must be shaped (F, H, W, 3), not {tuple(frames.shape)}")
    return frames


def read_references(references: ReferenceInput) -> list[torch.Tensor]:
    """Reference images, each (H, W, 3), from a folder (litter skipped), files or an array
    (R, H, W, 3); files are read as a viewer shows them (`dvkit.io.images`), JPEGs at reduced
    size when they are much larger than the encoders' input."""
    if isinstance(references, (np.ndarray, torch.Tensor)):
        return list(read_frames(references))
    from dvkit.io.folders import collect_files
    from dvkit.io.images import IMAGE_EXTENSIONS, read_image

    items = [references] if isinstance(references, (str, Path)) else list(references)
    found = collect_files(items, IMAGE_EXTENSIONS, "reference images")
    return [torch.from_numpy(np.array(read_image(p, REFERENCE_SIDE))) for p in found.paths]
