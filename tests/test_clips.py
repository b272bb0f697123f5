"""Clips are sampled in time, decoded lazily and shown upright; windows are planned in time."""

import numpy as np
import pytest
from media_files import LITTER, ffmpeg, frame_index, write_clip, write_frames, write_gif
from PIL import Image

from dvkit.io.clips import Timeline, open_video, read_video
from dvkit.io.folders import DataError
from dvkit.train.windows import plan_windows

VFR = [k / 30 for k in range(30)] + [1 + k / 5 for k in range(10)]  # 30 fps for 1 s, then 5 fps


def _chosen(source, plan, window: int = 0) -> list[int]:
    """The clip frames one window of the plan shows, read back from their pixels."""
    decoded = {index: frame_index(image) for index, image in source.frames(plan.frames.tolist())}
    return [decoded[plan.frames[p]] for p in plan.windows[window]]


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path) -> None:
    source = open_video(write_clip(tmp_path / "vfr.mp4", VFR))
    assert source.timeline.times[:2].tolist() == pytest.approx([0, 1 / 30], abs=1e-3)
    assert source.timeline.times[30:32].tolist() == pytest.approx([1.0, 1.2], abs=1e-3)
    plan = plan_windows(source.timeline, frames=8, fps=8.0, count=1)
    chosen = _chosen(source, plan)
    assert chosen == [0, 3, 7, 11, 15, 18, 22, 26]  # on screen at 0, 0.125, …, 0.875 s
    shown = np.asarray(VFR)[chosen]
    wanted = np.arange(8) / 8
    assert np.all(shown <= wanted + 1e-3) and np.all(wanted - shown < 1 / 30)
    assert shown[-1] - shown[0] > 0.85  # not 0.23 s, as every fourth frame by index gave


def test_windows_spread_their_starts_over_the_clip(tmp_path) -> None:
    source = open_video(write_clip(tmp_path / "vfr.mp4", VFR))  # ends at ≈2.83 s
    plan = plan_windows(source.timeline, frames=8, fps=8.0, count=4)
    assert plan.windows.shape == (4, 8) and plan.real_frames == 8
    starts = np.asarray(VFR)[plan.frames[plan.windows[:, 0]]]
    assert starts.tolist() == pytest.approx([0, 0.6, 1.2, 1.8], abs=0.04)
    last = _chosen(source, plan, window=3)
    assert last[:3] == [34, 34, 35] and last[-1] == 38  # the slow part repeats frames
    assert len(plan.frames) == len(set(plan.frames.tolist()))  # each frame kept once


def test_a_short_clip_is_one_padded_window() -> None:
    timeline = Timeline(np.arange(5) / 10, 0.5)  # 5 frames at 10 fps
    plan = plan_windows(timeline, frames=8, fps=10.0, count=8)
    assert plan.windows.tolist() == [[0, 1, 2, 3, 4, -1, -1, -1]] and plan.real_frames == 5
    at_four = plan_windows(timeline, frames=8, fps=4.0, count=8)  # 0, .25 (2 real)
    assert at_four.frames.tolist() == [0, 2] and at_four.real_frames == 2


def test_frames_without_a_clock_are_windowed_by_index() -> None:
    timeline = Timeline(np.arange(10, dtype=float), 10.0, timed=False)
    plan = plan_windows(timeline, frames=4, fps=8.0, count=3)  # fps means nothing here
    assert (plan.frames[plan.windows]).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    same = plan_windows(timeline, frames=10, fps=None, count=3)
    assert same.windows.shape == (1, 10)  # identical windows kept once


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_display_rotation_is_applied_as_players_do(tmp_path, rotation) -> None:
    plain = write_clip(tmp_path / "plain.mp4", [k / 10 for k in range(3)], size=(32, 16))
    turned = tmp_path / "turned.mp4"
    ffmpeg("-display_rotation", str(rotation), "-i", plain, "-c", "copy", turned)
    player = tmp_path / "player.png"
    ffmpeg("-i", turned, "-frames:v", "1", player)  # the ffmpeg CLI applies rotation itself
    expected = np.asarray(Image.open(player).convert("RGB")).astype(int)
    frame = read_video(turned)[0].astype(int)
    assert frame.shape == expected.shape == ((32, 16, 3) if rotation % 180 else (16, 32, 3))
    assert np.abs(frame - expected).mean() < 2


def test_a_legacy_rotate_tag_is_honoured(tmp_path) -> None:
    """Older phones and muxers wrote `rotate` (clockwise degrees) as a stream tag."""
    plain = write_clip(tmp_path / "plain.mp4", [0, 0.1], size=(32, 16))
    tagged = tmp_path / "tagged.mkv"
    ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v:0", "rotate=90", tagged)
    frame = read_video(tagged)[0]
    assert frame.shape == (32, 16, 3)  # portrait
    green = frame[..., 1].astype(int)
    assert green[:8].mean() > 150 and green[-8:].mean() < 50  # clockwise: the left half on top


def test_gif_delays_are_timestamps(tmp_path) -> None:
    source = open_video(write_gif(tmp_path / "slow.gif", [100, 300, 100, 500]))
    assert source.timeline.times.tolist() == pytest.approx([0, 0.1, 0.4, 0.5])
    assert source.timeline.end == pytest.approx(1.0)
    plan = plan_windows(source.timeline, frames=8, fps=10.0, count=1)
    assert _chosen(source, plan) == [0, 1, 1, 1, 2, 3, 3, 3]


def test_gif_frames_without_delay_last_100_ms(tmp_path) -> None:
    path = write_gif(tmp_path / "fast.gif", [0, 0, 0])
    assert open_video(path).timeline.times.tolist() == pytest.approx([0, 0.1, 0.2])


def test_frame_folders_skip_litter_and_read_only_what_is_asked(tmp_path) -> None:
    folder = write_frames(tmp_path / "frames", 5)
    source = open_video(folder)
    assert len(source.timeline) == 5 and not source.timeline.timed
    assert [(i, frame_index(image)) for i, image in source.frames([1, 3])] == [(1, 1), (3, 3)]
    assert read_video(folder).shape == (5, 32, 32, 3)
    assert set(LITTER) <= {p.name for p in folder.iterdir()}


def test_frames_of_different_sizes_are_refused(tmp_path) -> None:
    folder = write_frames(tmp_path / "frames", 2)
    Image.new("RGB", (8, 8)).save(folder / "002.png")
    with pytest.raises(DataError, match="frames differ in size"):
        read_video(folder)


def test_decoding_stops_after_the_last_frame_needed(tmp_path, monkeypatch) -> None:
    import av

    source = open_video(write_clip(tmp_path / "long.mp4", [k / 30 for k in range(90)]))
    opened = av.open
    decoded = []

    class Counting:
        def __init__(self, *args, **kwargs) -> None:
            self.container = opened(*args, **kwargs)
            self.streams = self.container.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.container.close()

        def decode(self, stream):
            for frame in self.container.decode(stream):
                decoded.append(frame.pts)
                yield frame

    monkeypatch.setattr(av, "open", Counting)
    assert [index for index, _ in source.frames([2, 5])] == [2, 5]
    assert len(decoded) == 6  # frames 0-5 of 90


def test_broken_and_empty_videos_are_one_error(tmp_path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    with pytest.raises(DataError, match="broken.mp4: not a readable video"):
        open_video(broken)
    audio = tmp_path / "sound.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", audio)
    with pytest.raises(DataError, match="sound.mp4: not a readable video \\(no video stream\\)"):
        open_video(audio)
    gif = tmp_path / "broken.gif"
    gif.write_bytes(b"GIF89a broken")
    with pytest.raises(DataError, match="broken.gif: not a readable video"):
        open_video(gif)
