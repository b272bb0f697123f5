"""Training speed: dvkit's training loop against a naive loop on the same base, in one run.

Compared, stage by stage (textual inversion, identity adapter, motion adapter), with the same
batch size, resolution, frame count, optimizer (AdamW over the same trainable tensors) and
precision:

- **dvkit**: the real `train_subject` / `train_motion`. VAE posteriors, text embeddings and
  image embeddings are computed once before the steps; only the trained tensors (token rows,
  adapters) require grad, so backward never computes weight gradients of the frozen base.
- **naive**: what a straightforward implementation does, written out below: every step
  re-encodes its images / clips with the VAE, re-tokenises and re-runs the text encoder,
  re-encodes the guidance frames with the image encoder, and every UNet, VAE and text-encoder
  parameter has requires_grad=True (the optimizer still only holds the trained tensors; for
  textual inversion that is the whole input-embedding matrix with the other rows restored after
  each step, as in diffusers' textual-inversion example).

Reported per stage and loop: the median seconds per step over `--steps` steps after `--warmup`
discarded steps (a step is loss, backward, optimizer step, read the loss), the peak memory during
the stage's steps (`torch.cuda.max_memory_allocated()` on CUDA, weights included; on CPU the peak
RSS from `resource.getrusage`, reset at each stage start through /proc/self/clear_refs where the
kernel allows it), and ratio = dvkit / naive seconds per step (goal: at most 0.6). dvkit's
one-time caching before a stage's first step is reported as `setup_s`.

    python benchmarks/bench_train.py                       # tiny base, CPU: a minute or two
    python benchmarks/bench_train.py --base modelscope-shaped --width-scale 0.1 --resolution 64
    python benchmarks/bench_train.py --base modelscope-shaped --device cuda --frames 16
    python benchmarks/bench_train.py --base animatediff-shaped --width-scale 0.1 --resolution 64
    python benchmarks/bench_train.py --base wan-shaped --width-scale 0.1 --resolution 64 --frames 5
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from dvkit.models.components import BaseComponents
from dvkit.models.image_encoder import ImageEncoder, load_image_encoder
from dvkit.models.injection import AdapterInjector, create_adapter_state
from dvkit.models.loading import quiet_libraries, resolve_device, resolve_dtype
from dvkit.models.textual_inversion import add_placeholder_tokens, expand_placeholder
from dvkit.train.diffusion import diffusion_loss
from dvkit.train.motion import train_motion
from dvkit.train.settings import CommonSettings, MotionSettings, SubjectSettings
from dvkit.train.setup import prepare_base
from dvkit.train.subject import train_subject

STAGES = ("inversion", "identity", "motion")
BASES = ("tiny", "modelscope-shaped", "animatediff-shaped", "wan-shaped")
LOOPS = ("dvkit", "naive")
GOAL = 0.6
MB = 2**20
QUIET = False


# ---------------------------------------------------------------- measuring


class Meter:
    """Step timestamps and peak memory of one stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.losses: list[float] = []
        self.peak_mb: float | None = None
        self.start_mb: float | None = None

    def begin(self, label: str = "") -> None:
        log(f"{label}: stage start")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / MB
        else:
            _reset_peak_rss()
            self.start_mb = _current_rss_mb()
        self.times = [time.perf_counter()]

    def step(self, loss: float) -> None:
        self.times.append(time.perf_counter())
        self.losses.append(loss)
        log(f"  step {len(self.losses)}: {self.times[-1] - self.times[-2]:.3f} s, loss {loss:.4f}")

    def finish(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / MB
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def summary(self, warmup: int) -> dict:
        durations = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        timed = durations[warmup:]
        return {
            "s_per_step": round(statistics.median(timed), 5) if timed else None,
            "s_per_step_min": round(min(timed), 5) if timed else None,
            "steps_timed": len(timed),
            "warmup_steps_discarded": min(warmup, len(durations)),
            "peak_memory_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "memory_at_stage_start_mb": None if self.start_mb is None else round(self.start_mb, 1),
            "last_loss": round(self.losses[-1], 5) if self.losses else None,
        }


class TimingReporter:
    """A dvkit `Reporter` that times every step of every stage it is told about."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.meters: dict[str, Meter] = {}
        self.setup_s: dict[str, float] = {}
        self._mark = time.perf_counter()

    def mark(self) -> None:
        self._mark = time.perf_counter()

    def start(self, stage: str, total: int, completed: int) -> None:
        self.setup_s[stage] = time.perf_counter() - self._mark
        self.meters[stage] = meter = Meter(self.device)
        meter.begin(f"dvkit {stage} (setup {self.setup_s[stage]:.2f} s)")

    def step(self, loss: float) -> None:
        self.meters[list(self.meters)[-1]].step(loss)

    def end(self) -> None:
        self.meters[list(self.meters)[-1]].finish()
        self._mark = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, unless `QUIET`."""
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0); silently nothing elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / MB


def autocast_dtype_of(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dvkit's loop uses (`dvkit.train.setup.loop_settings`): the base's half
    precision on CUDA, none elsewhere."""
    return dtype if device.type == "cuda" and dtype != torch.float32 else None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ---------------------------------------------------------------- dvkit's loop


def run_dvkit(args, base, encoder, pixels, clips, device, dtype, stages, folder) -> dict:
    reporter = TimingReporter(device)
    total = args.warmup + args.steps
    out: dict[str, dict] = {}
    if "inversion" in stages or "identity" in stages:
        settings = SubjectSettings(
            resolution=args.resolution,
            batch_size=args.subject_batch,
            token="<sks>",
            initializer="cat",
            inversion_steps=total if "inversion" in stages else 0,
            identity_steps=total if "identity" in stages else 0,
            checkpoint_every=10**9,
        )
        reporter.mark()
        train_subject(base, pixels, None, settings, device, dtype, folder / "subject", reporter)
    if "motion" in stages:
        settings = MotionSettings(
            resolution=args.resolution,
            batch_size=args.motion_batch,
            frames=args.frames,
            steps=total,
            caption="a cat running",
            checkpoint_every=10**9,
        )
        reporter.mark()
        train_motion(base, clips, encoder, settings, device, dtype, folder / "motion", reporter)
    for stage, meter in reporter.meters.items():
        if stage in stages:
            out[stage] = meter.summary(args.warmup) | {"setup_s": round(reporter.setup_s[stage], 3)}
    return out


# ---------------------------------------------------------------- the naive loop


def run_naive(args, base, encoder, pixels, clips, device, dtype, stages) -> dict:
    """The straightforward loop for each stage; see the module docstring."""
    prepare_base(base, device, dtype, CommonSettings())
    autocast_dtype = autocast_dtype_of(device, dtype)
    token = "<naive>"
    token_ids = add_placeholder_tokens(base.tokenizer, base.text_encoder, token, "cat")
    prompt = expand_placeholder(f"a {token}", token, 1)
    generator = torch.Generator(device=device).manual_seed(0)
    out = {}
    for stage in stages:
        step_fn, params, after_step, cleanup = _NAIVE_STAGES[stage](
            args, base, encoder, pixels, clips, device, dtype, prompt, token_ids
        )
        # Everything trainable, as in a loop that never thought about freezing.
        for model in (base.unet, base.vae, base.text_encoder):
            model.requires_grad_(True)
        meter = Meter(device)
        try:
            out[stage] = _naive_steps(
                args,
                f"naive {stage}",
                step_fn,
                params,
                after_step,
                meter,
                device,
                autocast_dtype,
                generator,
            )
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            out[stage] = {"error": "out of memory", "detail": " ".join(str(exc).split())[:300]}
        finally:
            cleanup()
            for model in (base.unet, base.vae, base.text_encoder):
                model.requires_grad_(False)
                model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def _naive_steps(
    args, label, step_fn, params, after_step, meter, device, autocast_dtype, generator
):
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    scaler = torch.amp.GradScaler(
        enabled=autocast_dtype == torch.float16 and all(p.dtype == torch.float32 for p in params)
    )
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    meter.begin(label)
    for _ in range(args.warmup + args.steps):
        with autocast:
            loss = step_fn(generator)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        after_step()
        meter.step(float(loss.detach()))
    meter.finish()
    return meter.summary(args.warmup)


def _vae_sample(base: BaseComponents, video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Latents (B, C, f, h, w) of videos (B, F, 3, H, W), encoded now with autograd through the
    VAE (not `family.encode_frames` / `encode_videos`, which encode without it, as dvkit caches
    posteriors): whole videos through a 3-D VAE (Wan, normalised per channel), else frame by
    frame (× `scaling_factor`)."""
    vae = base.vae
    if base.family.temporal_vae:
        from dvkit.families.wan import latent_stats

        posterior = vae.encode(video.transpose(1, 2).to(vae.device, vae.dtype)).latent_dist
        mean, std = latent_stats(vae, vae.device)
        return (posterior.sample(gen) - mean) / std
    batch, frames = video.shape[:2]
    flat = video.reshape(batch * frames, *video.shape[2:]).to(vae.device, vae.dtype)
    latents = vae.encode(flat).latent_dist.sample(gen) * vae.config.scaling_factor
    return latents.reshape(batch, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)


def _naive_inversion(args, base, encoder, pixels, clips, device, dtype, prompt, token_ids):
    embedding = base.text_encoder.get_input_embeddings().weight
    frozen = torch.ones(embedding.shape[0], dtype=torch.bool, device=device)
    frozen[token_ids] = False
    original = embedding.detach().clone()
    batch = args.subject_batch

    def loss(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pixels), (batch,), generator=g, device=device).cpu()
        latents = _vae_sample(base, pixels[index].unsqueeze(1), g)  # (B, C, 1, h, w)
        noisy, target, timesteps = base.family.add_noise(base, latents, g, 0.1)
        ids = base.family.tokenize(base, [prompt] * batch).to(device)
        text = base.family.embed_ids(base, ids)
        prediction = base.family.predict(base, noisy.to(dtype), timesteps, text)
        return diffusion_loss(prediction, target)

    def restore() -> None:
        with torch.no_grad():
            embedding[frozen] = original[frozen]

    return loss, [embedding], restore, lambda: None


def _naive_identity(args, base, encoder, pixels, clips, device, dtype, prompt, token_ids):
    injector = AdapterInjector(base.unet)
    fresh = create_adapter_state(base.unet, "subject", seed=0)
    injector.load("identity", "subject", fresh)
    params = injector.train_adapter("identity")
    batch = args.subject_batch

    def loss(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pixels), (batch,), generator=g, device=device).cpu()
        latents = _vae_sample(base, pixels[index].unsqueeze(1), g)
        noisy, target, timesteps = base.family.add_noise(base, latents, g, 0.1)
        ids = base.family.tokenize(base, [prompt] * batch).to(device)
        text = base.family.embed_ids(base, ids)
        prediction = base.family.predict(base, noisy.to(dtype), timesteps, text)
        return diffusion_loss(prediction, target)

    return loss, params, lambda: None, injector.detach


def _naive_motion(args, base, encoder, pixels, clips, device, dtype, prompt, token_ids):
    injector = AdapterInjector(base.unet)
    fresh = create_adapter_state(base.unet, "motion", cond_dim=encoder.embed_dim, seed=0)
    injector.load("motion", "motion", fresh)
    params = injector.train_adapter("motion")
    batch, (count, frames) = args.motion_batch, clips.shape[:2]

    def loss(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(count, (batch,), generator=g, device=device).cpu()
        frame = torch.randint(frames, (batch,), generator=g, device=device).cpu()
        keep_text = (torch.rand(batch, generator=g, device=device) >= 0.5).tolist()
        video = clips[index]  # (B, F, 3, H, W)
        latents = _vae_sample(base, video, g)
        noisy, target, timesteps = base.family.add_noise(base, latents, g, 0.1)
        image = encoder.encode(video[torch.arange(batch), frame])
        prompts = ["a cat running" if keep else "" for keep in keep_text]
        text = base.family.encode_text(base, prompts)
        injector.set_active({"motion": 1.0}, image_embeds=image)
        prediction = base.family.predict(base, noisy.to(dtype), timesteps, text)
        return diffusion_loss(prediction, target)

    return loss, params, lambda: None, injector.detach


_NAIVE_STAGES: dict[str, Callable] = {
    "inversion": _naive_inversion,
    "identity": _naive_identity,
    "motion": _naive_motion,
}


# ---------------------------------------------------------------- setup and report


def build_base(args) -> BaseComponents:
    """The base `--base` names: built-in `tiny`, or a random real-shaped one at `--width-scale`."""
    if args.base == "tiny":
        from dvkit.models.tiny import build_tiny_base

        return build_tiny_base()
    if args.base == "animatediff-shaped":
        from dvkit.models.random_animatediff import build_animatediff_shaped

        return build_animatediff_shaped(args.width_scale, args.text_layers)
    if args.base == "wan-shaped":
        from dvkit.models.random_wan import build_wan_shaped

        return build_wan_shaped(args.width_scale, args.text_layers)
    from dvkit.models.random_base import build_modelscope_shaped

    return build_modelscope_shaped(args.width_scale, args.text_layers)


def build_encoder(args, device: torch.device) -> ImageEncoder:
    kind = args.image_encoder
    if kind == "auto":
        kind = "tiny" if args.base == "tiny" else "vit-h-shaped"
    if kind == "tiny":
        return load_image_encoder("tiny", device)
    from dvkit.models.random_base import build_vit_h_shaped_encoder

    return build_vit_h_shaped_encoder(args.width_scale, device=device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=BASES, default="tiny")
    parser.add_argument("--width-scale", type=float, default=1.0, help="shaped bases only")
    parser.add_argument("--text-layers", type=int, default=None, help="shaped bases only")
    parser.add_argument(
        "--image-encoder",
        choices=("auto", "tiny", "vit-h-shaped"),
        default="auto",
        help="auto: tiny for the tiny base, a random ViT-H/14-shaped one otherwise",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per stage and loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--resolution", type=int, default=None, help="tiny: 32, otherwise 256")
    parser.add_argument("--frames", type=int, default=None, help="tiny: 8, otherwise 16")
    parser.add_argument("--subject-batch", type=int, default=4)
    parser.add_argument("--motion-batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="subject images")
    parser.add_argument("--clips", type=int, default=2, help="motion clips")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.resolution = args.resolution or (32 if args.base == "tiny" else 256)
    args.frames = args.frames or (8 if args.base == "tiny" else 16)
    for name, allowed in (("stages", STAGES), ("loops", LOOPS)):
        chosen = [item for item in getattr(args, name).split(",") if item]
        unknown = set(chosen) - set(allowed)
        if unknown or not chosen:
            parser.error(f"--{name}: choose from {', '.join(allowed)}")
        setattr(args, name, [item for item in allowed if item in chosen])
    return args


def compare_training(
    args: argparse.Namespace,
    base: BaseComponents,
    encoder: ImageEncoder,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, dict]:
    """Per stage of `args.stages`: each loop of `args.loops` on `base` (random images
    (`--images`, 3, R, R) and clips (`--clips`, F, 3, R, R) in [-1, 1]) and, with both loops,
    `ratio_s_per_step` = dvkit / naive, `meets_goal` and `ratio_peak_memory`."""
    data = torch.Generator().manual_seed(0)
    size = args.resolution
    pixels = torch.rand(args.images, 3, size, size, generator=data) * 2 - 1
    clips = torch.rand(args.clips, args.frames, 3, size, size, generator=data) * 2 - 1
    loops: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dvkit-bench-train-") as folder:
        if "dvkit" in args.loops:
            loops["dvkit"] = run_dvkit(
                args, base, encoder, pixels, clips, device, dtype, args.stages, Path(folder)
            )
    if "naive" in args.loops:
        loops["naive"] = run_naive(args, base, encoder, pixels, clips, device, dtype, args.stages)
    stages = {}
    for stage in args.stages:
        entry = {loop: loops[loop].get(stage) for loop in args.loops}
        fast, slow = (loops.get(loop, {}).get(stage) or {} for loop in LOOPS)
        if fast.get("s_per_step") and slow.get("s_per_step"):
            entry["ratio_s_per_step"] = round(fast["s_per_step"] / slow["s_per_step"], 3)
            entry["meets_goal"] = entry["ratio_s_per_step"] <= GOAL
        if fast.get("peak_memory_mb") and slow.get("peak_memory_mb"):
            entry["ratio_peak_memory"] = round(fast["peak_memory_mb"] / slow["peak_memory_mb"], 3)
        stages[stage] = entry
    return stages


def memory_metric(device: torch.device) -> str:
    """What `Meter`'s peak memory is on `device`."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the stage's steps (weights included)"
    return (
        "peak RSS (resource.getrusage ru_maxrss) during the stage's steps, reset at stage start "
        "via /proc/self/clear_refs; whole process, weights included"
    )


def main(argv: list[str] | None = None) -> dict:
    global QUIET
    args = parse_args(argv)
    QUIET = args.quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    base = build_base(args)
    encoder = build_encoder(args, device)
    build_s = time.perf_counter() - started
    log(f"built {args.base} and image encoder {encoder.spec} in {build_s:.1f} s")
    stages = compare_training(args, base, encoder, device, dtype)
    unet_params = sum(p.numel() for p in base.unet.parameters())
    report = {
        "benchmark": "bench_train",
        "compared": (
            "seconds per training step of dvkit's train_subject/train_motion (VAE posteriors, "
            "text and image embeddings cached once; only trained tensors require grad) vs a "
            "naive loop on the same base (re-encodes VAE, text and image every step; all "
            "UNet/VAE/text-encoder parameters require grad; optimizer over the same trained "
            "tensors), same batch, resolution, frames and precision; ratio = dvkit / naive"
        ),
        "goal": f"ratio_s_per_step <= {GOAL}",
        "memory_metric": memory_metric(device),
        "base": args.base,
        "width_scale": args.width_scale if args.base != "tiny" else None,
        "unet_parameters": unet_params,
        "image_encoder": encoder.spec,
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "autocast": str(autocast_dtype_of(device, dtype)),
        "settings": {
            "resolution": args.resolution,
            "subject_batch": args.subject_batch,
            "subject_frames": 1,
            "motion_batch": args.motion_batch,
            "motion_frames": args.frames,
            "images": args.images,
            "clips": args.clips,
            "steps_timed": args.steps,
            "warmup_steps": args.warmup,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "build_s": round(build_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "stages": stages,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return report


def device_name(device: torch.device) -> str:
    """The device as the report names it (GPU model, or CPU threads and machine)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


if __name__ == "__main__":
    main(sys.argv[1:])
