"""Motion training draws a window of each clip at every step (DESIGN §1), from the run's seed."""

import pytest
import torch

import dvkit.train.motion as motion
from dvkit.models.image_encoder import load_image_encoder
from dvkit.models.injection import AdapterInjector
from dvkit.models.tiny import build_tiny_base
from dvkit.train.data import MotionClips
from dvkit.train.loop import SilentReporter, TrainingInterrupted
from dvkit.train.settings import QUICK, MotionSettings

CPU = torch.device("cpu")
TINY = load_image_encoder("tiny")


def _pool(windows: list[list[int]], clip_of_window: list[int]) -> MotionClips:
    """A pool over 12 distinct frames (frame k: grey level 20 k) with these windows."""
    frames = torch.arange(12, dtype=torch.uint8)[:, None, None, None].expand(12, 3, 16, 16) * 20
    counts = torch.bincount(torch.tensor(clip_of_window))
    return MotionClips(
        frames=frames.contiguous(),
        embeds=torch.eye(12),  # frame k's embedding: the k-th unit vector
        windows=torch.tensor(windows),
        first=torch.cumsum(counts, 0) - counts,
        count=counts,
    )


def _settings(**extra) -> MotionSettings:
    return MotionSettings(**{**QUICK["motion"], "steps": 4, "checkpoint_every": 2,
                             "image_encoder": "tiny", **extra})  # fmt: skip


def _record(monkeypatch) -> tuple[list, list]:
    """Record the posterior means each step samples from and the image embeddings it feeds."""
    means, images = [], []
    sample = motion.sample_latents
    set_active = AdapterInjector.set_active

    def sample_latents(mean, std, gen):
        means.append(mean.detach().clone())
        return sample(mean, std, gen)

    def record_active(self, scales, image_embeds=None, **kwargs):
        if image_embeds is not None:  # a training step (not the set-up)
            images.append(image_embeds.detach().clone())
        return set_active(self, scales, image_embeds=image_embeds, **kwargs)

    monkeypatch.setattr(motion, "sample_latents", sample_latents)
    monkeypatch.setattr(AdapterInjector, "set_active", record_active)
    return means, images


def _window_of(mean: torch.Tensor, posteriors: torch.Tensor, windows: list[list[int]]) -> int:
    """Which window a sampled mean (1, C, F, h, w) is made of."""
    for index, window in enumerate(windows):
        frames = [len(posteriors) - 1 if i < 0 else i for i in window]
        if torch.equal(mean[0].permute(1, 0, 2, 3), posteriors[frames]):
            return index
    raise AssertionError("not one of the windows")


def test_steps_draw_different_windows(tmp_path, monkeypatch) -> None:
    windows = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    clips = _pool(windows, [0, 0, 0])
    means, images = _record(monkeypatch)
    motion.train_motion(build_tiny_base(), clips, TINY, _settings(image_dropout=0.0), CPU,
                        torch.float32, tmp_path / "a", SilentReporter())  # fmt: skip
    base = build_tiny_base()
    base.freeze(CPU, torch.float32)
    posteriors, _ = motion._posteriors(base, clips)
    drawn = [_window_of(mean, posteriors, windows) for mean in means]
    assert len(drawn) == 4 and len(set(drawn)) > 1  # two steps drew different windows
    for window, image in zip(drawn, images, strict=True):
        assert int(image[0].argmax()) in windows[window]  # the guidance frame is of that window


def test_padded_windows_use_the_zero_frame_and_real_guidance(tmp_path, monkeypatch) -> None:
    windows = [[0, 1, 2, -1, -1, -1]]
    clips = _pool(windows, [0])
    means, images = _record(monkeypatch)
    settings = _settings(frames=6, image_dropout=0.0, steps=2)
    motion.train_motion(build_tiny_base(), clips, TINY, settings, CPU, torch.float32,
                        tmp_path / "run", SilentReporter())  # fmt: skip
    base = build_tiny_base()
    base.freeze(CPU, torch.float32)
    posteriors, _ = motion._posteriors(base, clips)
    zero, _ = base.family.encode_frames(base, torch.zeros(1, 3, 16, 16))
    assert torch.equal(posteriors[-1], zero[0])
    assert all(_window_of(mean, posteriors, windows) == 0 for mean in means)
    assert {int(image[0].argmax()) for image in images} <= {0, 1, 2}  # never a padding frame


def test_resume_with_a_pool_gives_the_same_weights(tmp_path) -> None:
    """The windows come from the run's generator, whose state checkpoints keep."""
    clips = _pool([[0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11, -1, -1]], [0, 0, 1, 1])

    class InterruptAt:
        def __init__(self, after: int) -> None:
            self.left = after

        def start(self, stage, total, completed):
            pass

        def step(self, loss):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

        def end(self):
            pass

    settings = _settings(steps=3)
    straight = motion.train_motion(build_tiny_base(), clips, TINY, settings, CPU, torch.float32,
                                   tmp_path / "a", SilentReporter())  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        motion.train_motion(build_tiny_base(), clips, TINY, settings, CPU, torch.float32,
                            tmp_path / "b", InterruptAt(2))  # fmt: skip
    resumed = motion.train_motion(build_tiny_base(), clips, TINY, settings, CPU, torch.float32,
                                  tmp_path / "b", SilentReporter(), resume=True)  # fmt: skip
    assert all(torch.equal(straight.tensors[k], resumed.tensors[k]) for k in straight.tensors)
    assert straight.loss_curves == resumed.loss_curves


def test_one_window_per_clip_trains_as_whole_clips_did(tmp_path) -> None:
    """Clips of exactly one window (the sprites demo's) draw no window: same random stream."""
    clips = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    settings = _settings(steps=2)
    whole = motion.train_motion(build_tiny_base(), clips, TINY, settings, CPU, torch.float32,
                                tmp_path / "a", SilentReporter())  # fmt: skip
    pool = MotionClips.whole(clips, TINY)
    assert pool.windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    again = motion.train_motion(build_tiny_base(), pool, TINY, settings, CPU, torch.float32,
                                tmp_path / "b", SilentReporter())  # fmt: skip
    assert all(torch.equal(whole.tensors[k], again.tensors[k]) for k in whole.tensors)
