"""The sprites appearance encoder: the object's look, whatever its position."""

import numpy as np
import pytest
import torch

from dvkit.models.image_encoder import load_image_encoder
from dvkit.sprites.appearance import SpritesAppearanceEncoder
from dvkit.sprites.world import COLOURS, Sprite, render_frame
from dvkit.train.settings import default_image_encoder


def _pixels(*frames: np.ndarray) -> torch.Tensor:
    """Frames (H, W, 3) in [0, 1] as the encoder's input (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(frames)).float().permute(0, 3, 1, 2) * 2 - 1


@pytest.fixture(scope="module")
def encoder() -> SpritesAppearanceEncoder:
    return SpritesAppearanceEncoder()


def test_position_does_not_change_the_embedding(encoder) -> None:
    sprite = Sprite("orange", "triangle")
    here, there = encoder.encode(
        _pixels(render_frame(sprite, (5, 6)), render_frame(sprite, (10, 9)))
    )
    assert here.shape == (67,) and encoder.embed_dim == 67
    assert (here - there).abs().max().item() <= 1e-5


def test_colour_and_shape_are_read(encoder) -> None:
    at = (8, 8)
    frames = [render_frame(Sprite(c, s), at) for c, s in
              (("orange", "triangle"), ("blue", "triangle"), ("orange", "square"))]  # fmt: skip
    orange, blue, square = encoder.encode(_pixels(*frames))
    for embedding, colour in ((orange, "orange"), (blue, "blue")):
        hue = embedding[:3] / embedding[:3].max()  # soft edges darken the mean, not its hue
        assert torch.allclose(hue, torch.tensor(COLOURS[colour]).float(), atol=0.02)
    same_shape = (orange[3:] / orange[3:].norm() - blue[3:] / blue[3:].norm()).abs().max()
    assert same_shape.item() <= 1e-5  # the mask part is the shape alone
    assert (orange[3:] - square[3:]).norm() > 0.2 * orange[3:].norm()


def test_larger_images_are_resized_to_the_sprites_frame(encoder) -> None:
    sprite = Sprite("purple", "ring")
    small = encoder.encode(_pixels(render_frame(sprite, (8, 8))))
    large = encoder.encode(_pixels(render_frame(sprite, (16, 16), size=32, radius=6.6)))
    assert torch.nn.functional.cosine_similarity(small, large).item() > 0.95


def test_it_is_the_sprites_base_default_and_loads_by_spec() -> None:
    assert default_image_encoder("sprites") == "sprites"
    assert default_image_encoder("tiny") == "tiny"
    assert default_image_encoder("modelscope") == "ViT-H-14:laion2b_s32b_b79k"
    loaded = load_image_encoder("sprites")
    assert isinstance(loaded, SpritesAppearanceEncoder) and loaded.spec == "sprites"
