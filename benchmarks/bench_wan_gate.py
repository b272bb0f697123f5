"""Wan motion adapters inside or outside the adaLN gate, on `tiny-wan`; prints JSON.

`dvkit.families.wan` puts the motion adapters beside `attn1` and `ffn` outside the block's
gate (the block adds `A(h)`); inside it the block would add `gate·A(h)`. This trains the same
motion adapter both ways — same clips (a square moving right, 9 frames at 32×32), seeds,
noise and timesteps — and reports the mean training loss of the first 10 and last 30 steps per
seed. Inside is what the injector does for a family without gated slots, so the inside run is
the wan family with `gated_slots` emptied.

    python benchmarks/bench_wan_gate.py              # 300 steps, lr 1e-3, seeds 0-2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from dvkit.families.wan import WanFamily
from dvkit.models.image_encoder import load_image_encoder
from dvkit.models.tiny_wan import build_tiny_wan_base
from dvkit.train.data import MotionClips
from dvkit.train.loop import SilentReporter
from dvkit.train.motion import train_motion
from dvkit.train.settings import QUICK, MotionSettings


def moving_squares(seed: int, encoder) -> MotionClips:
    """6 clips (9 frames, 32×32) of an 8×8 square of a random colour moving 3 pixels a frame."""
    generator = torch.Generator().manual_seed(seed)
    clips = torch.full((6, 9, 3, 32, 32), -1.0)
    for clip in clips:
        colour = torch.rand(3, generator=generator) * 2 - 1
        top = int(torch.randint(4, 20, (1,), generator=generator))
        for frame in range(9):
            left = 2 + 3 * frame
            clip[frame, :, top : top + 8, left : left + 8] = colour[:, None, None]
    return MotionClips.whole(clips, encoder)


def train(seed: int, steps: int, lr: float, inside: bool) -> list[float]:
    """The loss curve of one motion adapter trained on `tiny-wan`."""
    encoder = load_image_encoder("tiny")
    settings = MotionSettings(**{
        **QUICK["motion"], "steps": steps, "lr": lr, "seed": seed, "frames": 9,
        "batch_size": 2, "text_dropout": 0.0, "caption": "a square moving",
        "image_encoder": "tiny", "checkpoint_every": 10**6,
    })  # fmt: skip
    gated = WanFamily.gated_slots
    WanFamily.gated_slots = frozenset() if inside else gated
    try:
        with tempfile.TemporaryDirectory() as folder:
            result = train_motion(
                build_tiny_wan_base(), moving_squares(seed, encoder), encoder, settings,
                torch.device("cpu"), torch.float32, Path(folder), SilentReporter(),
            )  # fmt: skip
    finally:
        WanFamily.gated_slots = gated
    return [loss for _, loss in result.loss_curves["motion"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs: dict[str, list[dict]] = {"inside": [], "outside": []}
    for seed in range(args.seeds):
        for placement in runs:
            curve = train(seed, args.steps, args.lr, inside=placement == "inside")
            runs[placement].append({
                "seed": seed,
                "first_10": round(sum(curve[:10]) / 10, 4),
                "last_30": round(sum(curve[-30:]) / 30, 4),
            })  # fmt: skip
    report = {
        "benchmark": "bench_wan_gate",
        "settings": vars(args),
        "runs": runs,
        "mean_last_30": {
            placement: round(sum(run["last_30"] for run in rows) / len(rows), 4)
            for placement, rows in runs.items()
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
