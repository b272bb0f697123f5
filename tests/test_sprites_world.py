"""The sprites world generator: determinism, held-out splits, captions, rendering, parsing."""

import numpy as np
import pytest

from dvkit.sprites import world
from dvkit.sprites.world import (
    COLOURS,
    FRAMES,
    HELD_OUT_COLOURS,
    HELD_OUT_MOTIONS,
    HELD_OUT_SHAPES,
    MOTIONS,
    SHAPES,
    SIZE,
    TEXTURES,
    VOCABULARY,
    Sprite,
    caption,
    examples_of,
    motion_path,
    render_clip,
    render_frame,
    still_images,
    training_batch,
)


def _clips(examples):
    return np.stack([example.clip for example in examples])


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again, other = training_batch(12, 3), training_batch(12, 3), training_batch(12, 4)
    assert [(e.sprite, e.motion, e.start) for e in first] == [
        (e.sprite, e.motion, e.start) for e in again
    ]
    assert np.array_equal(_clips(first), _clips(again))
    assert not np.array_equal(_clips(first), _clips(other))

    ring = Sprite("purple", "ring")
    assert np.array_equal(
        _clips(examples_of(ring, "orbit", 4, 1)), _clips(examples_of(ring, "orbit", 4, 1))
    )
    assert not np.array_equal(
        _clips(examples_of(ring, "orbit", 4, 1)), _clips(examples_of(ring, "orbit", 4, 2))
    )
    assert np.array_equal(np.stack(still_images(ring, 3, 5)), np.stack(still_images(ring, 3, 5)))
    assert not np.array_equal(
        np.stack(still_images(ring, 3, 5)), np.stack(still_images(ring, 3, 6))
    )


def test_splits_cover_the_world_without_overlap() -> None:
    seen, held = world.sprites(), world.sprites(held_out=True)
    assert len(seen) + len(held) == len(COLOURS) * len(SHAPES) * len(TEXTURES)
    assert not set(seen) & set(held)
    assert all(not s.held_out for s in seen) and all(s.held_out for s in held)
    assert world.motions() == [m for m in MOTIONS if m not in HELD_OUT_MOTIONS]
    assert world.motions(held_out=True) == list(HELD_OUT_MOTIONS)
    assert Sprite("orange", "circle").held_out and Sprite("red", "ring", "striped").held_out
    assert not Sprite("red", "circle", "striped").held_out


def test_training_batch_never_shows_held_out_things() -> None:
    batch = training_batch(200, 0)
    assert len(batch) == 200
    assert not {e.sprite.colour for e in batch} & set(HELD_OUT_COLOURS)
    assert not {e.sprite.shape for e in batch} & set(HELD_OUT_SHAPES)
    assert not {e.motion for e in batch} & set(HELD_OUT_MOTIONS)
    # ... while it does cover every seen colour, shape, texture and motion
    assert {e.sprite.colour for e in batch} == set(COLOURS) - set(HELD_OUT_COLOURS)
    assert {e.sprite.shape for e in batch} == set(SHAPES) - set(HELD_OUT_SHAPES)
    assert {e.sprite.texture for e in batch} == set(TEXTURES)
    assert {e.motion for e in batch} == set(world.motions())


def test_held_out_things_can_be_made_on_request() -> None:
    orange = Sprite("orange", "triangle")
    made = examples_of(orange, "zigzag", 3, 0)
    assert [(e.sprite, e.motion) for e in made] == [(orange, "zigzag")] * 3
    assert made[0].caption == "an orange triangle zigzagging"
    varied = examples_of(None, "bounce", 20, 0, world.sprites(held_out=True))
    assert all(e.sprite.held_out and e.motion == "bounce" for e in varied)
    default = examples_of(None, "orbit", 20, 0)  # random seen objects by default
    assert all(not e.sprite.held_out for e in default)
    stills = still_images(Sprite("purple", "ring", "striped"), 4, 0)
    assert len(stills) == 4 and all(s.shape == (SIZE, SIZE, 3) for s in stills)
    for still in stills:  # purple (0.55, 0.1, 1.0): blue brightest, green lowest
        lit = still[still.max(axis=-1) > 0.3]
        assert len(lit) > 10
        assert np.allclose(lit / lit[:, 2:], COLOURS["purple"])


def test_captions() -> None:
    assert caption(Sprite("red", "circle"), "left") == "a red circle moving left"
    assert caption(Sprite("red", "circle", "striped"), None) == "a red striped circle"
    assert caption(Sprite("blue", "cross"), "orbit") == "a blue cross orbiting"
    vocabulary = set(VOCABULARY)
    every = [
        caption(sprite, motion)
        for sprite in world.sprites() + world.sprites(held_out=True)
        for motion in [None, *MOTIONS]
    ]
    assert len(set(every)) == len(every)  # every object and motion has its own caption
    for text in every:
        article = "an" if text.split()[1][0] in "aeiou" else "a"
        assert text.split()[0] == article and set(text.split()) <= vocabulary, text
    assert all(e.caption == caption(e.sprite, e.motion) for e in training_batch(5, 0))


def test_render_clip_shape_and_range() -> None:
    clip = render_clip(Sprite("yellow", "square"), "right", (5.0, 8.0))
    assert clip.shape == (FRAMES, SIZE, SIZE, 3) == (8, 16, 16, 3)
    assert clip.dtype == np.float64
    assert clip.min() >= 0.0 and clip.max() <= 1.0
    assert clip[..., 0].max() == pytest.approx(1.0)  # fully covered pixels: the full colour
    assert (clip.max(axis=-1) == 0).mean() > 0.6  # background black
    for example in training_batch(30, 7) + examples_of(None, "orbit", 10, 7):
        assert example.clip.shape == (8, 16, 16, 3)
        assert 0.0 <= example.clip.min() and example.clip.max() <= 1.0


def test_object_moves_along_its_path() -> None:
    sprite = Sprite("white", "circle")
    for motion in MOTIONS:
        clip = render_clip(sprite, motion, (8.0, 8.0))
        for frame, (dx, dy) in zip(clip, motion_path(motion), strict=True):
            brightness = frame[..., 0]
            ys, xs = np.indices(brightness.shape)
            centre = ((xs * brightness).sum(), (ys * brightness).sum()) / brightness.sum()
            # where the frame stays inside, the circle's centroid is where the path says
            if 3.5 <= 8 + dx <= 11.5 and 3.5 <= 8 + dy <= 11.5:
                assert centre == pytest.approx((8 + dx, 8 + dy), abs=0.05), motion


def _unclipped(sprite: Sprite, frame: np.ndarray, centre: tuple[float, float]) -> bool:
    """The frame shows all of the object: drawing it on a larger canvas (same sampling
    grid, shifted by whole pixels) adds nothing."""
    larger = render_frame(sprite, (centre[0] + 8, centre[1] + 8), size=SIZE + 16)
    return frame.sum() == pytest.approx(larger.sum(), abs=1e-9)


def test_object_stays_wholly_inside_the_frame() -> None:
    examples = training_batch(120, 1) + [
        e for motion in HELD_OUT_MOTIONS for e in examples_of(None, motion, 15, 1)
    ]
    for example in examples:
        path = motion_path(example.motion) + np.asarray(example.start)
        for frame, centre in zip(example.clip, path, strict=True):
            assert _unclipped(example.sprite, frame, centre), (example.sprite, example.motion)
        # the frame's corners stay black
        assert example.clip[:, [0, 0, -1, -1], [0, -1, 0, -1]].max() == 0.0
    # the extreme starts too, for every shape (the triangle is the widest)
    for motion in MOTIONS:
        for corner in world.start_range(motion):
            for shape in SHAPES:
                sprite = Sprite("white", shape)
                clip = render_clip(sprite, motion, tuple(corner))
                path = motion_path(motion) + corner
                assert all(_unclipped(sprite, f, c) for f, c in zip(clip, path, strict=True)), (
                    motion,
                    shape,
                    corner,
                )


def test_motion_paths_start_at_the_origin() -> None:
    for motion in MOTIONS:
        path = motion_path(motion)
        assert path.shape == (FRAMES, 2)
        assert tuple(path[0]) == (0.0, 0.0), motion
        assert np.abs(path).max() > 1.0, motion  # and they do move
    assert motion_path("zigzag", 3).shape == (3, 2)
    assert motion_path("left")[-1] == pytest.approx((-0.8 * 7, 0.0))
    assert motion_path("down")[-1] == pytest.approx((0.0, 0.8 * 7))  # y points down
    with pytest.raises(ValueError, match="unknown motion 'wobble'"):
        motion_path("wobble")


def test_sprite_parse() -> None:
    assert Sprite.parse("orange triangle") == Sprite("orange", "triangle", "plain")
    assert Sprite.parse("red striped circle") == Sprite("red", "circle", "striped")
    assert Sprite.parse("  red   striped circle ").words == "red striped circle"
    assert Sprite.parse(Sprite("blue", "ring", "striped").words) == Sprite(
        "blue", "ring", "striped"
    )
    for text, message in (
        ("pink circle", "unknown colour 'pink'"),
        ("red blob", "unknown shape 'blob'"),
        ("red dotted circle", "unknown texture 'dotted'"),
        ("striped red circle", "unknown colour 'striped'"),
        ("red", "COLOUR \\[TEXTURE\\] SHAPE"),
        ("", "COLOUR \\[TEXTURE\\] SHAPE"),
        ("a red striped circle", "COLOUR \\[TEXTURE\\] SHAPE"),
    ):
        with pytest.raises(ValueError, match=message):
            Sprite.parse(text)
    with pytest.raises(ValueError, match="unknown shape"):
        Sprite("red", "Circle")


def test_stripes_dim_alternate_rows() -> None:
    sprite = Sprite("white", "square", "striped")
    frame = render_frame(sprite, (8.0, 8.5))  # stripe edges on pixel edges
    column = frame[7:11, 8, 0]  # rows wholly inside the square
    assert column.tolist() in ([0.5, 1.0, 0.5, 1.0], [1.0, 0.5, 1.0, 0.5])
    plain = render_frame(Sprite("white", "square"), (8.0, 8.5))
    assert np.array_equal(frame > 0, plain > 0)  # same outline
