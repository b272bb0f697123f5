"""What the sprites world shows, measured from pixels: prints JSON.

`--base` picks the sprites base: `sprites` (3D UNet, the default) or `sprites-wan` (Wan
transformer, flow matching); the objective, sampler and text encoding are its family's.

`base`: the built-in sprites base sampled for seen captions (seen objects doing seen motions):
how often each frame's object has the caption's colour and shape, how well it follows the
caption's motion, and its temporal consistency.

`adapters`: the `dvkit demo` pipeline (one held-out subject and one held-out motion trained with
the demo's settings) on a grid with more seeds, and the ground-truth means per role: subject
fidelity of the subject's cells against the base prompted with the initializer word, motion
fidelity of the motion's cells against the base, and both together. It also measures whether the
motion adapter learnt the motion's direction, without sampling: the base's training loss
(v-prediction on `sprites`, flow matching on `sprites-wan`) on the band of timesteps the demo
trains its motion on (`MOTION_TRAINING`, where sampling picks a path) on fresh clips of the
motion played forwards and backwards, for the base and with the adapter. A base that has not
learnt the motion scores both alike; an adapter that has learnt it scores the reversed clips
clearly worse than the forward ones.

    python benchmarks/bench_sprites.py base --clips 64
    python benchmarks/bench_sprites.py adapters --seeds 8
    python benchmarks/bench_sprites.py all --base sprites-wan --clips 32 --seeds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build(name: str, weights: Path | None = None):
    """Sprites base `name` with its shipped weights, or with `weights`."""
    from dvkit.sprites.train_base import BASES

    builder, shipped = BASES[name]
    return builder(weights or shipped)


def bench_base(name: str, clips: int, batch: int, weights: Path | None, seed: int) -> dict:
    import torch

    from dvkit.generate.sampler import Row, SamplerSettings, sample
    from dvkit.models.builtin import sampling_default
    from dvkit.sprites import metrics
    from dvkit.sprites.world import training_batch

    base = build(name, weights)

    def default(key: str) -> float:
        return sampling_default(name, key)

    size = int(default("size"))
    settings = SamplerSettings(
        steps=int(default("steps")),
        guidance_scale=default("guidance"),
        frames=int(default("frames")),
        height=size,
        width=size,
    )
    examples = training_batch(clips, seed=10_000 + seed)
    scores: dict[str, list[float]] = {"colour": [], "shape": [], "motion": [], "t_cons": []}
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, clips, batch):
            chunk = examples[start : start + batch]
            rows = [Row(e.caption, seed=seed * 100_000 + start + i) for i, e in enumerate(chunk)]
            videos = sample(base, rows, settings).numpy()
            for example, video in zip(chunk, videos, strict=True):
                seen = metrics.read_clip(video)
                scores["colour"].append(metrics.colour_right(video, example.sprite.colour, seen))
                scores["shape"].append(metrics.shape_right(video, example.sprite.shape, seen))
                scores["motion"].append(metrics.motion_fidelity(video, example.motion, seen))
                scores["t_cons"].append(metrics.temporal_consistency(video, seen))
    return {
        "base": name,
        "what": "sprites base on seen captions (seen object × seen motion), scored from pixels",
        "clips": clips,
        "sampler": {"steps": settings.steps, "guidance": settings.guidance_scale},
        "colour_right": round(float(np.mean(scores["colour"])), 3),
        "shape_right": round(float(np.mean(scores["shape"])), 3),
        "motion_fidelity": round(float(np.mean(scores["motion"])), 3),
        "gt_t_cons": round(float(np.mean(scores["t_cons"])), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }


def bench_adapters(name: str, folder: Path, subject: str, motion: str, seeds: int) -> dict:
    from dvkit.sprites.demo import run_demo

    started = time.perf_counter()
    result = run_demo(folder, subject=subject, motion=motion, seeds=seeds, base=name)
    return {
        "base": name,
        "what": "dvkit demo pipeline: held-out subject and motion, grid with baselines",
        "subject": subject,
        "motion": motion,
        "seeds": seeds,
        "training": result.training,
        "roles": result.roles,
        "direction": direction_losses(name, folder, result.motion, motion),
        "seconds": round(time.perf_counter() - started, 1),
    }


def direction_losses(
    name: str, folder: Path, ref: str, motion: str, clips: int = 8, draws: int = 16
) -> dict:
    """The training loss in the demo's motion band on fresh clips of `motion` forwards and
    reversed, base `name` vs adapter."""
    import torch

    from dvkit.catalog import Catalog
    from dvkit.generate.compose import load_adapter
    from dvkit.models.injection import AdapterInjector
    from dvkit.sprites.demo import MOTION_TRAINING
    from dvkit.sprites.train_base import video_tensor
    from dvkit.sprites.world import MOTION_PHRASES, examples_of
    from dvkit.train.diffusion import diffusion_loss

    base, band = build(name), MOTION_TRAINING["high_noise_band"]
    family = base.family
    with Catalog.open(folder / "registry") as catalog:
        adapter = load_adapter(catalog, ref, None, "motion")
    injector = AdapterInjector(base.unet)
    injector.load("motion", "motion", adapter.tensors.adapters, adapter.record.hidden_ratio)
    # The demo trains on seed 0's clips.
    video = video_tensor(np.stack([e.clip for e in examples_of(None, motion, clips, seed=1)]))
    with torch.no_grad():
        (text,) = family.encode_text(base, [MOTION_PHRASES[motion]])
        text = text.expand(clips, -1, -1)

        def loss(clip: torch.Tensor) -> float:
            """Mean over `draws` noise draws, the same for every clip order and role."""
            total = 0.0
            for draw in range(draws):
                generator = torch.Generator().manual_seed(draw)
                noisy, target, timesteps = family.add_noise(base, clip, generator, 0.0, 1.0, band)
                prediction = family.predict(base, noisy, timesteps, text)
                total += float(diffusion_loss(prediction, target))
            return round(total / draws, 4)

        result = {}
        for role, scales in (("base", {}), ("motion adapter", {"motion": 1.0})):
            injector.set_active(scales)
            result[role] = {"forwards": loss(video), "reversed": loss(video.flip(2))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["base", "adapters", "all"])
    parser.add_argument("--base", choices=["sprites", "sprites-wan"], default="sprites")
    parser.add_argument("--clips", type=int, default=64, help="base: clips sampled")
    parser.add_argument("--batch", type=int, default=16, help="base: clips per UNet batch")
    parser.add_argument("--weights", type=Path, help="base: another weights file to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--folder", type=Path, help="adapters: the demo's folder (default: a new temporary one; "
        "a folder with a finished demo is measured as it is, without training again)",
    )  # fmt: skip
    parser.add_argument("--subject", default="orange triangle")
    parser.add_argument("--motion", default="zigzag")
    parser.add_argument("--seeds", type=int, default=8, help="adapters: seeds per grid cell")
    args = parser.parse_args()
    results = {}
    if args.part in ("base", "all"):
        results["base"] = bench_base(args.base, args.clips, args.batch, args.weights, args.seed)
    if args.part in ("adapters", "all"):
        folder = args.folder or Path(tempfile.mkdtemp(prefix="dvkit-sprites-bench-"))
        results["adapters"] = bench_adapters(
            args.base, folder, args.subject, args.motion, args.seeds
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
