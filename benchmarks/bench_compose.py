"""Sampling cost of composition: the bare base vs the same base with a subject and a motion
adapter active (appearance guidance on), on a ModelScope-shaped UNet narrowed to run on a CPU.

Both are timed side by side in one run, alternating, with the same prompt, seed and settings;
the JSON gives the median seconds of each and their ratio (goal: composed / bare <= 1.10).

    python benchmarks/bench_compose.py                       # width 1/8, 64x64, 8 frames, 10 steps
    python benchmarks/bench_compose.py --width-scale 1 --size 256 --frames 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_train import Meter

from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.models.components import BaseComponents
from dvkit.models.injection import AdapterInjector, create_adapter_state
from dvkit.models.loading import resolve_device, resolve_dtype
from dvkit.models.random_base import build_modelscope_shaped

GOAL = 1.10
COND_DIM = 1024  # the appearance embedding of the official OpenCLIP ViT-H/14 encoder


def random_adapters(unet: torch.nn.Module, kind: str, cond_dim: int | None, seed: int) -> dict:
    """Adapter tensors of `kind` for every slot of `unet`, drawn N(0, 0.02²) from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    state = create_adapter_state(unet, kind, cond_dim=cond_dim)
    return {name: torch.randn(t.shape, generator=generator) * 0.02 for name, t in state.items()}


def compare_sampling(
    base: BaseComponents,
    settings: SamplerSettings,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    cond_dim: int = COND_DIM,
) -> dict:
    """Median seconds of dvkit's sampler for one video (settings.frames × height × width) on the
    bare `base` and with a random subject and motion adapter active (appearance embedding
    (cond_dim,) at strength 1), alternating after one warm-up of each, same prompt and seed;
    and the peak memory of each (see `bench_train.Meter`)."""
    base.freeze(device, dtype)
    injector = AdapterInjector(base.unet)
    injector.load("subject", "subject", random_adapters(base.unet, "subject", None, 1))
    injector.load("motion", "motion", random_adapters(base.unet, "motion", cond_dim, 2))
    for name in injector.loaded:
        injector.get(name).to(dtype=dtype)
    adapter_parameters = {
        kind: sum(p.numel() for p in injector.get(kind).parameters()) for kind in injector.loaded
    }
    embed = torch.randn(cond_dim, generator=torch.Generator().manual_seed(3))
    rows = {
        "bare": [Row("a dog surfing", seed=0)],
        "composed": [Row("a dog surfing", seed=0, adapters={"subject": 1.0, "motion": 1.0},
                         image_embed=embed)],
    }  # fmt: skip
    times: dict[str, list[float]] = {"bare": [], "composed": []}
    peaks: dict[str, float] = {}

    def timed(kind: str) -> float:
        meter = Meter(device)
        meter.begin(f"sampling {kind}")
        sample(base, rows[kind], settings, injector if kind == "composed" else None)
        meter.finish()
        peaks[kind] = max(peaks.get(kind, 0.0), meter.peak_mb or 0.0)
        return time.perf_counter() - meter.times[0]

    timed("bare")
    timed("composed")  # warm-up
    for _ in range(repeats):
        for kind in times:
            times[kind].append(timed(kind))
    injector.detach()
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {
        "adapter_parameters": adapter_parameters,
        "median_seconds": {kind: round(value, 4) for kind, value in medians.items()},
        "peak_memory_mb": {kind: round(value, 1) for kind, value in peaks.items()},
        "ratio_composed_over_bare": round(medians["composed"] / medians["bare"], 4),
        "meets_goal": medians["composed"] / medians["bare"] <= GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-scale", type=float, default=0.125)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="as dvkit compose: bf16/fp16 on CUDA")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    base = build_modelscope_shaped(args.width_scale, text_layers=args.text_layers)
    settings = SamplerSettings(
        steps=args.steps, frames=args.frames, height=args.size, width=args.size
    )
    result = compare_sampling(base, settings, args.repeats, device, dtype)
    print(
        json.dumps(
            {
                "benchmark": "compose",
                "compared": "sampling one video: bare base vs subject+motion adapters active",
                "device": str(device),
                "dtype": str(dtype).removeprefix("torch."),
                "unet_parameters": sum(p.numel() for p in base.unet.parameters()),
                "adapter_parameters": result["adapter_parameters"],
                "settings": vars(args),
                "median_seconds": result["median_seconds"],
                "ratio_composed_over_bare": result["ratio_composed_over_bare"],
                "goal_ratio": GOAL,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
