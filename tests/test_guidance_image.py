"""A guidance image given to compose (or bench) is embedded exactly as motion training embeds
the same picture as a frame of a clip: one path (`dvkit.train.data.prepare_frame`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.generate.compose import guidance_embedding
from dvkit.models import image_encoder as encoders
from dvkit.train.data import load_videos


def _open_clip_encoder() -> encoders.ImageEncoder:
    """An OpenCLIP encoder with open_clip's own preprocessing, on tiny seeded weights."""
    tiny = encoders.load_image_encoder("tiny")
    return encoders.ImageEncoder(model=tiny.model, spec="test", image_size=32, embed_dim=32)


@pytest.mark.parametrize("make", [_open_clip_encoder, lambda: encoders.load_image_encoder("tiny")])
def test_a_guidance_image_embeds_as_the_same_training_frame(tmp_path, monkeypatch, make) -> None:
    encoder = make()
    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((30, 44, 3)) * 255).astype("uint8"))  # not square
    clip = tmp_path / "clip"
    clip.mkdir()
    for index in range(2):
        picture.save(clip / f"{index:03d}.png")
    image = tmp_path / "guide.png"
    picture.save(image)

    clips, _ = load_videos([clip], frames=2, size=16, fps=None, encoder=encoder)
    monkeypatch.setattr(encoders, "load_image_encoder", lambda spec, device="cpu": encoder)
    motion = SimpleNamespace(record=SimpleNamespace(training={"image_encoder": "x",
                                                              "resolution": 16}))  # fmt: skip
    given = guidance_embedding(motion, None, image, 64, torch.device("cpu"))
    assert torch.equal(given, clips.embeds[0])
