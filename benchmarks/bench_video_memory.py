"""Memory of loading training clips: peak RSS must not grow with a clip's length.

Writes 720p H.264 clips (30 fps, a moving gradient) of 2 s, 20 s and 120 s, then loads each
the way `dvkit add-motion` does (`dvkit.train.data.load_videos`: by default the official 32
frames at 8 fps, 256×256, 8 windows per clip, the offline `tiny` appearance encoder), each in a
fresh subprocess, and reports that process's peak RSS beside its RSS before loading (imports
done, encoder built) and the load's wall time. The figure to quote: the longest clip's peak over
the shortest's (goal: at most 1.2). `--naive` also measures reading every frame into memory
with imageio, as dvkit 0.1 did, for clips of 20 s or less.

    python benchmarks/bench_video_memory.py
    python benchmarks/bench_video_memory.py --seconds 2 20 --naive --folder /tmp/clips
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, RATE = 1280, 720, 30
NAIVE_LIMIT_S = 20

MEASURE = """
import json, resource, sys, time
from pathlib import Path


def rss_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


path, frames, size, fps, windows, naive = sys.argv[1:]
if naive == "1":
    import imageio.v3 as iio

    before = rss_mb()
    start = time.perf_counter()
    kept = iio.imread(path, plugin="FFMPEG").shape[0]
else:
    from dvkit.models.image_encoder import load_image_encoder
    from dvkit.train.data import load_videos

    encoder = load_image_encoder("tiny")
    before = rss_mb()
    start = time.perf_counter()
    clips, _ = load_videos([Path(path)], int(frames), int(size), float(fps), encoder,
                           int(windows), notify=lambda line: None)
    kept = len(clips.frames)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"before_mb": round(before, 1), "peak_mb": round(peak, 1),
                  "load_s": round(seconds, 2), "frames_kept": kept}))
"""


def write_clip(path: Path, seconds: float) -> None:
    """A 720p H.264 clip at 30 fps: a colour gradient sliding one pixel column per frame."""
    import av

    if path.exists():
        return
    frames = round(seconds * RATE)
    x = np.linspace(0, 255, WIDTH + frames, dtype=np.float32)
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None]
    strip = np.stack(
        [np.broadcast_to(x, (HEIGHT, len(x))), np.broadcast_to(y, (HEIGHT, len(x))),
         (x[None, :] + y) % 256], axis=-1,
    ).astype(np.uint8)  # fmt: skip
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(RATE))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for index in range(frames):
            pixels = np.ascontiguousarray(strip[:, index : index + WIDTH])
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)


def measure(path: Path, args: argparse.Namespace, naive: bool) -> dict:
    command = [sys.executable, "-c", MEASURE, str(path), str(args.frames), str(args.size),
               str(args.fps), str(args.clip_windows), "1" if naive else "0"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2, 20, 120])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--clip-windows", type=int, default=8)
    parser.add_argument("--naive", action="store_true", help="also read every frame (imageio)")
    parser.add_argument("--folder", type=Path, help="where the clips are written (kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.folder or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for seconds in args.seconds:
            path = folder / f"clip-{seconds:g}s-720p.mp4"
            start = time.perf_counter()
            write_clip(path, seconds)
            row = {"seconds": seconds, "file_mb": round(path.stat().st_size / 2**20, 1),
                   "write_s": round(time.perf_counter() - start, 1),
                   "dvkit": measure(path, args, naive=False)}  # fmt: skip
            if args.naive and seconds <= NAIVE_LIMIT_S:
                row["naive"] = measure(path, args, naive=True)
            rows.append(row)
    peaks = [row["dvkit"]["peak_mb"] for row in rows]
    print(json.dumps({
        "compared": (
            "peak RSS (MB) of a fresh process loading one 720p 30 fps clip with dvkit's "
            "load_videos, by clip length; 'naive' reads every frame with imageio as dvkit 0.1 did"
        ),
        "settings": {"frames": args.frames, "fps": args.fps, "size": args.size,
                     "clip_windows": args.clip_windows, "encoder": "tiny"},
        "clips": rows,
        "longest_over_shortest_peak": round(peaks[-1] / peaks[0], 3),
        "goal": "at most 1.2",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
