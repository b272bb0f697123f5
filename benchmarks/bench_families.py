"""Training and composition cost per base family, on random bases of each family's real shape
(narrowed by `--width-scale` to run on a CPU), in one run; prints JSON.

Per family (`modelscope-t2v`: `build_modelscope_shaped`, ModelScope T2V's UNet3D, SD VAE and
OpenCLIP-H text; `animatediff`: `build_animatediff_shaped`, SD 1.5's UNet with motion adapter
v1-5-3's motion modules, SD VAE and CLIP ViT-L/14 text; `wan`: `build_wan_shaped`, Wan 2.1 T2V
1.3B's transformer, Wan VAE and umt5-xxl text), with a random ViT-H/14-shaped appearance
encoder. A family whose VAE takes only some frame counts (Wan: 4k + 1) gets the nearest count
at or above `--frames`:

- **training**: `bench_train.compare_training`, seconds per step of dvkit's `train_subject` /
  `train_motion` (VAE posteriors, text and image embeddings cached once; only the trained tensors
  require grad) against a naive loop on the same base (re-encodes VAE, text and image every
  step; every UNet, VAE and text-encoder weight requires grad; optimizer over the same trained
  tensors), per stage (textual inversion, identity adapter, motion adapter), same batch,
  resolution, frames and precision. Ratio = dvkit / naive seconds per step; goal ≤ 0.6.
- **sampling**: `bench_compose.compare_sampling`, dvkit's sampler for one video with a random
  subject and motion adapter active (appearance guidance on) against the bare base, alternating
  after a warm-up, same prompt and seed. Ratio = composed / bare median seconds; goal ≤ 1.10.

Peak memory is reported per training stage and loop and per sampling kind (CUDA:
`max_memory_allocated`; CPU: whole-process peak RSS). Absolute times depend on the machine and
its load; the ratios, measured side by side, are the figures to quote.

With `--memory-modes`, it measures instead the training memory modes (`dvkit add-subject /
add-motion --memory`, `dvkit.train.setup.prepare_base`) on the `wan` family: per mode (`none`,
or modes joined by `+`, e.g. `checkpoint+fp8`), in a fresh process each, one motion-adapter
training step after another on Wan 2.1 T2V 1.3B's transformer (`wan_shaped_transformer`,
narrowed by `--width-scale`) with random weights, `--size HxW` pixels (any ratio: the step
runs on latents directly, 8× smaller, so the sampler's square-only sizes do not apply) and
`--frames` (4k + 1): seconds per step and peak memory during the steps, the frozen weights
as the mode stores them included. As in dvkit's training, latents and text embeddings are
cached before the steps (here random tensors of their shapes: 16 channels; 512 text tokens of
UMT5's scaled width), so the VAE and text encoder are not on the device (`PixelCodec` stands
in for both). CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS of the process during the
steps (reset through /proc/self/clear_refs), minus nothing: it includes the interpreter
and libraries (`rss_before_build_mb` says how much).

    python benchmarks/bench_families.py                      # CPU: width 0.1, 64×64, 4 frames
    python benchmarks/bench_families.py --device cuda --dtype bfloat16 --width-scale 1 \\
        --resolution 512 --frames 16 --steps 8 --warmup 2 --sample-steps 25
    python benchmarks/bench_families.py --memory-modes none,checkpoint,fp8,offload,\\
        checkpoint+fp8 --width-scale 0.25 --size 128x128 --frames 17   # CPU
    python benchmarks/bench_families.py --memory-modes none,checkpoint,fp8,offload,\\
        checkpoint+fp8 --device cuda --dtype bfloat16 --width-scale 1 --size 480x832 \\
        --frames 33 --steps 3 --warmup 1                      # the 1.3B shape on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench_train
import torch
from bench_compose import GOAL as COMPOSE_GOAL
from bench_compose import compare_sampling

from dvkit.families import family as dvkit_family
from dvkit.families.base import SizeError
from dvkit.generate.sampler import SamplerSettings
from dvkit.models.components import BaseComponents
from dvkit.models.loading import quiet_libraries, resolve_device, resolve_dtype
from dvkit.models.random_animatediff import build_animatediff_shaped
from dvkit.models.random_base import build_modelscope_shaped
from dvkit.models.random_wan import build_wan_shaped

SHAPED: dict[str, tuple[str, Callable[[float, int | None], BaseComponents]]] = {
    "modelscope-t2v": ("modelscope-shaped", build_modelscope_shaped),
    "animatediff": ("animatediff-shaped", build_animatediff_shaped),
    "wan": ("wan-shaped", build_wan_shaped),
}
"""Family → (bench_train's `--base` name, builder taking width_scale and text_layers)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(SHAPED), help="comma-separated")
    parser.add_argument("--width-scale", type=float, default=0.1)
    parser.add_argument("--text-layers", type=int, default=None, help="default: the full count")
    parser.add_argument("--resolution", type=int, default=64, help="training and sampling size")
    parser.add_argument("--frames", type=int, default=4, help="motion clips and sampled videos")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--subject-batch", type=int, default=4)
    parser.add_argument("--motion-batch", type=int, default=2)
    parser.add_argument("--stages", default=",".join(bench_train.STAGES))
    parser.add_argument("--sample-steps", type=int, default=5, help="DDIM steps per video")
    parser.add_argument("--repeats", type=int, default=3, help="timed videos of each kind")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--memory-modes", default=None, help="measure these training memory modes instead"
    )
    parser.add_argument("--size", default="128x128", help="HxW pixels for --memory-modes")
    parser.add_argument("--one-memory-mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.families = [name for name in args.families.split(",") if name]
    unknown = set(args.families) - set(SHAPED)
    if unknown or not args.families:
        parser.error(f"--families: choose from {', '.join(SHAPED)}")
    return args


def family_frames(family: str, frames: int) -> int:
    """The smallest frame count at or above `frames` that `family`'s VAE takes."""
    while True:
        try:
            return dvkit_family(family).check_frames(frames)
        except SizeError:
            frames += 1


def training_args(args: argparse.Namespace, family: str) -> argparse.Namespace:
    """bench_train's options for `family`'s shaped base at this run's settings."""
    frames = family_frames(family, args.frames)
    argv = ["--base", SHAPED[family][0], "--width-scale", str(args.width_scale)]
    argv += ["--resolution", str(args.resolution), "--frames", str(frames)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--stages", args.stages]
    argv += ["--subject-batch", str(args.subject_batch), "--motion-batch", str(args.motion_batch)]
    argv += ["--device", args.device, "--dtype", args.dtype]
    if args.text_layers is not None:
        argv += ["--text-layers", str(args.text_layers)]
    return bench_train.parse_args(argv)


def measure_family(
    args: argparse.Namespace, family: str, device: torch.device, dtype: torch.dtype
) -> dict:
    """Training and sampling comparisons on a fresh shaped base of `family`."""
    train = training_args(args, family)
    started = time.perf_counter()
    base = bench_train.build_base(train)
    encoder = bench_train.build_encoder(train, device)
    build_s = time.perf_counter() - started
    bench_train.log(f"{family}: built {train.base} and {encoder.spec} in {build_s:.1f} s")
    unet_parameters = sum(p.numel() for p in base.unet.parameters())
    training = bench_train.compare_training(train, base, encoder, device, dtype)
    settings = SamplerSettings(
        steps=args.sample_steps,
        frames=train.frames,
        height=args.resolution,
        width=args.resolution,
    )
    sampling = compare_sampling(base, settings, args.repeats, device, dtype, encoder.embed_dim)
    del base, encoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "base": train.base,
        "unet_parameters": unet_parameters,
        "build_s": round(build_s, 2),
        "training": training,
        "sampling": sampling,
        "summary": {
            "training_ratio_s_per_step": {
                stage: entry.get("ratio_s_per_step") for stage, entry in training.items()
            },
            "sampling_ratio_composed_over_bare": sampling["ratio_composed_over_bare"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def memory_mode_step(
    args: argparse.Namespace, mode: str, device: torch.device, dtype: torch.dtype
) -> dict:
    """Seconds per step and peak memory of motion-adapter training steps under memory `mode`
    (see the module docstring), in this process."""
    from dvkit.models.injection import AdapterInjector, create_adapter_state
    from dvkit.models.pixel_codec import PixelCodec
    from dvkit.models.random_wan import wan_shaped_transformer
    from dvkit.models.tiny_wan import wan_scheduler
    from dvkit.train.diffusion import diffusion_loss
    from dvkit.train.settings import MotionSettings
    from dvkit.train.setup import memory_modes, prepare_base

    rss_before = bench_train._current_rss_mb()
    torch.manual_seed(0)
    transformer = wan_shaped_transformer(args.width_scale)
    parameters = sum(p.numel() for p in transformer.parameters())
    base = BaseComponents(
        unet=transformer, vae=PixelCodec(), text_encoder=PixelCodec(), tokenizer=None,
        scheduler=wan_scheduler(), name="wan-shaped", architecture="wan",
    )  # fmt: skip
    settings = MotionSettings(memory=[] if mode == "none" else mode.split("+"))
    prepare_base(base, device, dtype, settings)
    injector = AdapterInjector(transformer, device=device)
    state = create_adapter_state(transformer, "motion", settings.hidden_ratio, 1024, seed=0)
    injector.load("m", "motion", state, settings.hidden_ratio)
    params = injector.train_adapter("m")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    height, width = (int(side) for side in args.size.lower().split("x"))
    frames = family_frames("wan", args.frames)
    generator = torch.Generator(device).manual_seed(0)
    shape = (args.motion_batch, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    latents = torch.randn(shape, generator=generator, device=device)
    text_dim = transformer.config.text_dim
    text = torch.randn(args.motion_batch, 512, text_dim, generator=generator, device=device)
    embeds = torch.randn(args.motion_batch, 1024, generator=generator, device=device)
    autocast = bench_train.autocast_dtype_of(device, dtype)
    meter = bench_train.Meter(device)
    meter.begin(mode)
    for _ in range(args.warmup + args.steps):
        injector.set_active({"m": 1.0}, embeds)
        with torch.autocast(device.type, dtype=autocast or dtype, enabled=autocast is not None):
            noisy, target, timesteps = base.family.add_noise(base, latents, generator, 0.0)
            loss = diffusion_loss(base.family.predict(base, noisy, timesteps, text), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step(loss.item())
    meter.finish()
    return {
        "modes": memory_modes(settings),
        "transformer_parameters": parameters,
        "latents": list(shape),
        "frames": frames,
        "size": [height, width],
        "rss_before_build_mb": None if rss_before is None else round(rss_before, 1),
        **meter.summary(args.warmup),
    }


def measure_memory_modes(args: argparse.Namespace, argv: list[str]) -> dict:
    """Each of `--memory-modes` measured by `memory_mode_step` in a fresh process."""
    results = {}
    for mode in args.memory_modes.split(","):
        command = [sys.executable, __file__, *argv, "--one-memory-mode", mode]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            results[mode] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            results[mode] = json.loads(done.stdout)
        bench_train.log(f"memory mode {mode}: {results[mode]}")
    return results


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    bench_train.QUIET = args.quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.one_memory_mode:
        result = memory_mode_step(args, args.one_memory_mode, device, dtype)
        print(json.dumps(result))
        return result
    measured = (
        {"memory_modes": measure_memory_modes(args, argv)}
        if args.memory_modes
        else {family: measure_family(args, family, device, dtype) for family in args.families}
    )
    report = {
        "benchmark": "bench_families",
        "compared": (
            "per family, on a random base of its real shape narrowed by width_scale: seconds "
            "per training step of dvkit vs a naive loop (see bench_train) and sampling time of "
            "one video with a subject and a motion adapter active vs the bare base (see "
            "bench_compose)"
        ),
        "goals": {
            "training": f"ratio_s_per_step <= {bench_train.GOAL}",
            "sampling": f"ratio_composed_over_bare <= {COMPOSE_GOAL}",
        },
        "memory_metric": bench_train.memory_metric(device),
        "device": bench_train.device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "settings": {
            key: value
            for key, value in vars(args).items()
            if key not in ("quiet", "output", "families")
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "families" if not args.memory_modes else "wan": measured,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
