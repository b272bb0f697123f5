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

from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.models.injection import AdapterInjector, create_adapter_state
from dvkit.models.loading import resolve_device, resolve_dtype
from dvkit.models.random_base import build_modelscope_shaped


def random_adapters(unet: torch.nn.Module, kind: str, cond_dim: int | None, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = create_adapter_state(unet, kind, cond_dim=cond_dim)
    return {name: torch.randn(t.shape, generator=generator) * 0.02 for name, t in state.items()}


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
    for model in (base.unet, base.vae, base.text_encoder):
        model.to(device=device, dtype=dtype).requires_grad_(False).eval()
    cond_dim = 1024
    injector = AdapterInjector(base.unet)
    injector.load("subject", "subject", random_adapters(base.unet, "subject", None, 1))
    injector.load("motion", "motion", random_adapters(base.unet, "motion", cond_dim, 2))
    for name in injector.loaded:
        injector.get(name).to(dtype=dtype)
    settings = SamplerSettings(
        steps=args.steps, frames=args.frames, height=args.size, width=args.size
    )
    embed = torch.randn(cond_dim, generator=torch.Generator().manual_seed(3))
    bare = [Row("a dog surfing", seed=0)]
    composed = [Row("a dog surfing", seed=0, adapters={"subject": 1.0, "motion": 1.0},
                    image_embed=embed)]  # fmt: skip

    def timed(rows: list[Row], with_adapters: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(base, rows, settings, injector if with_adapters else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(bare, False)
    timed(composed, True)  # warm-up
    bare_times, composed_times = [], []
    for _ in range(args.repeats):
        bare_times.append(timed(bare, False))
        composed_times.append(timed(composed, True))
    bare_median = statistics.median(bare_times)
    composed_median = statistics.median(composed_times)
    print(
        json.dumps(
            {
                "benchmark": "compose",
                "compared": "sampling one video: bare base vs subject+motion adapters active",
                "device": str(device),
                "dtype": str(dtype).removeprefix("torch."),
                "unet_parameters": sum(p.numel() for p in base.unet.parameters()),
                "adapter_parameters": {
                    kind: sum(p.numel() for p in injector.get(kind).parameters())
                    for kind in ("subject", "motion")
                },
                "settings": vars(args),
                "median_seconds": {
                    "bare": round(bare_median, 4),
                    "composed": round(composed_median, 4),
                },
                "ratio_composed_over_bare": round(composed_median / bare_median, 4),
                "goal_ratio": 1.10,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
