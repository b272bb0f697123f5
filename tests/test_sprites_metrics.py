"""The sprites ground-truth metrics on true generated clips and on broken ones."""

import numpy as np
import pytest

from dvkit.sprites import metrics, world
from dvkit.sprites.metrics import (
    colour_right,
    describe,
    ground_truth,
    motion_fidelity,
    motion_named,
    read_frame,
    shape_right,
    subject_fidelity,
    temporal_consistency,
)
from dvkit.sprites.world import MOTIONS, Sprite, examples_of, render_clip, render_frame

# a few objects of every kind: seen and held-out, plain and striped
OBJECTS = [
    Sprite("red", "circle"),
    Sprite("green", "square", "striped"),
    Sprite("blue", "triangle"),
    Sprite("white", "cross", "striped"),
    Sprite("orange", "triangle"),
    Sprite("purple", "ring", "striped"),
]


@pytest.fixture
def centroids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the (slow) shape matching: motion fidelity reads only the objects' centroids."""
    monkeypatch.setattr(metrics, "_best_shape", lambda level, centre, size: "circle")


def test_read_frame() -> None:
    found = read_frame(render_frame(Sprite("yellow", "cross"), (5.0, 9.5)))
    assert (found.colour, found.shape) == ("yellow", "cross")
    assert found.centre == pytest.approx((5.0, 9.5), abs=0.05)
    empty = read_frame(np.zeros((16, 16, 3)))
    assert empty.colour is empty.shape is empty.centre is None


def test_colour_and_shape_right_on_true_clips() -> None:
    motions = list(MOTIONS)
    for index, sprite in enumerate(OBJECTS):
        clip = examples_of(sprite, motions[index % len(motions)], 1, index)[0].clip
        assert colour_right(clip, sprite.colour) == 1.0, sprite
        assert shape_right(clip, sprite.shape) == 1.0, sprite


def test_colour_and_shape_read_right_for_every_object() -> None:
    """One frame of every object of the world (seen and held-out, plain and striped) at a
    random point of a random motion."""
    rng = np.random.default_rng(0)
    everything = world.sprites() + world.sprites(held_out=True)
    colours, shapes = [], []
    for index, sprite in enumerate(everything):
        example = examples_of(sprite, list(MOTIONS)[index % len(MOTIONS)], 1, index)[0]
        found = read_frame(example.clip[rng.integers(world.FRAMES)])
        colours.append(found.colour == sprite.colour)
        shapes.append(found.shape == sprite.shape)
    assert len(everything) == 90
    assert np.mean(colours) >= 0.97 and np.mean(shapes) >= 0.97


def test_subject_fidelity_of_a_wrong_target_is_zero() -> None:
    for index, sprite in enumerate((OBJECTS[1], OBJECTS[5])):
        clip = examples_of(sprite, "right", 1, index)[0].clip
        other_colour = "cyan" if sprite.colour != "cyan" else "red"
        other_shape = "ring" if sprite.shape != "ring" else "circle"
        assert colour_right(clip, other_colour) == 0.0
        assert shape_right(clip, other_shape) == 0.0
        assert subject_fidelity(clip, other_colour, sprite.shape) == 0.0
        assert subject_fidelity(clip, sprite.colour, other_shape) == 0.0
    # a clip of black frames shows nothing at all
    assert subject_fidelity(np.zeros((8, 16, 16, 3)), "red", "circle") == 0.0


def test_shape_reading_tells_shapes_apart() -> None:
    """The easily confused pairs: ring/circle and square/cross."""
    for shape, other in (("ring", "circle"), ("circle", "ring"), ("square", "cross")):
        clip = examples_of(Sprite("white", shape), "down", 1, 3)[0].clip
        assert shape_right(clip, shape) == 1.0 and shape_right(clip, other) == 0.0


def test_motion_fidelity_of_each_motion_on_its_own_clips() -> None:
    for index, motion in enumerate(MOTIONS):
        clip = examples_of(None, motion, 1, index)[0].clip
        assert motion_fidelity(clip, motion) >= 0.9, motion


def test_motion_fidelity_against_other_motions(centroids_only) -> None:
    scores = {}
    for index, motion in enumerate(MOTIONS):
        for example in examples_of(None, motion, 2, 10 + index):
            assert motion_fidelity(example.clip, motion) >= 0.9, motion
            for other in MOTIONS:
                if other != motion:
                    scores.setdefault((motion, other), []).append(
                        motion_fidelity(example.clip, other)
                    )
    means = {pair: float(np.mean(values)) for pair, values in scores.items()}
    assert np.mean(list(means.values())) < 0.1
    assert max(means.values()) < 0.6, max(means, key=means.get)
    # opposite directions do not match at all
    for motion, opposite in (("left", "right"), ("up", "down"), ("right", "left")):
        assert means[(motion, opposite)] == 0.0


def test_motion_fidelity_of_an_object_standing_still(centroids_only) -> None:
    still = np.stack([render_frame(Sprite("red", "circle"), (7.3, 8.6))] * 8)
    for motion in MOTIONS:
        assert motion_fidelity(still, motion) == 0.0, motion
    # fewer than two frames with an object: nothing to follow
    empty = np.zeros((8, 16, 16, 3))
    assert motion_fidelity(empty, "left") == 0.0
    one = empty.copy()
    one[0] = render_frame(Sprite("red", "circle"), (8.0, 8.0))
    assert motion_fidelity(one, "left") == 0.0


def test_motion_fidelity_ignores_where_the_motion_starts(centroids_only) -> None:
    sprite = Sprite("green", "square")
    near, far = (render_clip(sprite, "down", start) for start in ((4.0, 4.0), (11.0, 5.5)))
    assert motion_fidelity(near, "down") == pytest.approx(motion_fidelity(far, "down"), abs=0.02)
    assert motion_fidelity(near, "down") >= 0.95
    # half the speed is half way
    slow = np.stack([render_frame(sprite, (8.0, 4.0 + 0.4 * t)) for t in range(world.FRAMES)])
    assert 0.3 < motion_fidelity(slow, "down") < 0.7


def test_temporal_consistency_of_true_clips() -> None:
    clips = [e.clip for e in world.training_batch(8, 2)]
    clips += [e.clip for m in world.motions(held_out=True) for e in examples_of(None, m, 2, 2)]
    scores = [temporal_consistency(clip) for clip in clips]
    assert np.mean(scores) >= 0.85 and min(scores) >= 0.8
    still = np.stack([render_frame(Sprite("red", "ring", "striped"), (8.2, 7.7))] * 8)
    assert temporal_consistency(still) == pytest.approx(1.0)


def test_temporal_consistency_of_broken_clips() -> None:
    rng = np.random.default_rng(0)
    seen = world.sprites()
    jumbled = [
        np.stack(
            [
                render_frame(seen[rng.integers(len(seen))], world.random_start("left", rng))
                for _ in range(world.FRAMES)
            ]
        )
        for _ in range(5)
    ]
    noise = [rng.random((world.FRAMES, 16, 16, 3)) for _ in range(3)]
    jumbled_scores = [temporal_consistency(clip) for clip in jumbled]
    noise_scores = [temporal_consistency(clip) for clip in noise]
    assert np.mean(jumbled_scores) < 0.6 and np.mean(noise_scores) < 0.6
    # an object that vanishes half way scores 0 on the pairs it is missing from
    vanishing = examples_of(None, "left", 1, 0)[0].clip.copy()
    vanishing[4:] = 0.0
    assert temporal_consistency(vanishing) < 0.45  # 3 of 7 pairs: 3 × 0.94 / 7


def test_describe_stills() -> None:
    for sprite in (Sprite("orange", "triangle"), Sprite("purple", "ring", "striped")):
        assert describe(np.stack(world.still_images(sprite, 4, 0))) == (sprite.colour, sprite.shape)
    with pytest.raises(ValueError, match="no object"):
        describe(np.zeros((2, 16, 16, 3)))


def test_motion_named() -> None:
    assert motion_named("zigzag") == "zigzag"
    assert motion_named("", "zigzagging") == "zigzag"
    assert motion_named("my-orbit") == "orbit"
    assert motion_named("a dog", "a red circle moving left") == "left"
    assert motion_named("Bouncing_Ball") == "bounce"
    assert motion_named("a cat playing the piano") is None
    assert motion_named("cat", "", "dancing") is None
    assert motion_named() is None


def test_ground_truth_reports_what_applies() -> None:
    clip = examples_of(Sprite("orange", "triangle"), "zigzag", 1, 0)[0].clip
    assert set(ground_truth(clip, None, None)) == {"gt_t_cons"}
    assert set(ground_truth(clip, None, "dancing")) == {"gt_t_cons"}
    both = ground_truth(clip, ("orange", "triangle"), "zigzag")
    assert set(both) == {"gt_t_cons", "gt_subject", "gt_colour", "gt_motion"}
    assert (
        both["gt_subject"] == both["gt_colour"] == 1.0
        and both["gt_motion"] >= 0.9
        and both["gt_t_cons"] >= 0.8
    )
    assert both["gt_t_cons"] == temporal_consistency(clip)
    wrong = ground_truth(clip, ("red", "triangle"), None)
    assert set(wrong) == {"gt_t_cons", "gt_subject", "gt_colour"}
    assert wrong["gt_subject"] == wrong["gt_colour"] == 0.0
    assert set(ground_truth(clip, None, "left")) == {"gt_t_cons", "gt_motion"}
    assert all(isinstance(v, float) for v in both.values())
