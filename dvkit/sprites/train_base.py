"""Train a sprites base from generated clips: `python -m dvkit.sprites.train_base [--base
sprites-wan]`.

`--base` picks the architecture: `sprites` (3D UNet, DDPM v-prediction, the default) or
`sprites-wan` (Wan transformer, flow matching); each step's loss is the base family's objective
(`Family.add_noise`, `Family.predict`), so one loop trains both. Each step trains the denoiser
and the text encoder on a batch of seen clips (8 frames) and a batch
of seen still images (1 frame, captions without motion), with 10 % empty captions for
classifier-free guidance and, with `--attribute-dropout P`, the colour word left out of a share
P of the captions (so that "a triangle" alone still draws a clean triangle). The weights
written are an exponential moving average. The run stops after `--steps` or `--minutes`,
writes the weights file every `--save-every` steps and can be resumed with `--resume` from its
state file, or started from a weights file with `--init` (e.g. the shipped one, to train it
further). Runs on a laptop CPU; a GPU is used when present.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from dvkit.models.components import BaseComponents
from dvkit.sprites.base import (
    SPRITES_NAME,
    SPRITES_WAN_NAME,
    WAN_WEIGHTS_FILE,
    WEIGHTS_FILE,
    build_sprites_base,
    build_sprites_wan_base,
    load_weights,
)
from dvkit.sprites.world import caption, training_batch
from dvkit.train.diffusion import diffusion_loss

STEPS_KEY = "dvkit.sprites.steps"
BASES = {
    SPRITES_NAME: (build_sprites_base, WEIGHTS_FILE),
    SPRITES_WAN_NAME: (build_sprites_wan_base, WAN_WEIGHTS_FILE),
}
"""Each trainable sprites base: its builder and the weights file it ships."""


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    build, shipped = BASES[args.base]
    args.out = args.out or shipped
    base = build(weights=None, seed=args.seed)
    models = torch.nn.ModuleDict({"unet": base.unet, "text_encoder": base.text_encoder})
    models.to(device).train()
    ema = {k: v.detach().clone() for k, v in models.state_dict().items()}
    optimizer = torch.optim.AdamW(models.parameters(), lr=args.lr, weight_decay=0.0)
    state_file = args.out.with_suffix(".state.pt")
    step = prior = 0
    if args.init is not None:
        models.load_state_dict(load_weights(args.init, expected_sha256=""))
        prior = trained_steps(args.init)
        ema = {k: v.detach().clone() for k, v in models.state_dict().items()}
    if args.resume and state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=True)
        models.load_state_dict(state["models"])
        optimizer.load_state_dict(state["optimizer"])
        ema, step, prior = state["ema"], state["step"], state.get("prior", 0)
    generator = torch.Generator(device).manual_seed(args.seed)
    started = time.monotonic()
    while step < args.steps and (time.monotonic() - started) / 60 < args.minutes:
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _step_loss(base, step, args, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        optimizer.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, value in models.state_dict().items():
                if value.dtype.is_floating_point:
                    ema[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
        if step % 10 == 0:
            elapsed = time.monotonic() - started
            print(
                json.dumps(
                    {"step": step, "loss": round(loss.item(), 5), "minutes": round(elapsed / 60, 2)}
                ),
                flush=True,
            )
        if step % args.save_every == 0:
            _save(models, ema, optimizer, step, prior, args.out, state_file)
    _save(models, ema, optimizer, step, prior, args.out, state_file)
    print(json.dumps({"done": step, "weights": str(args.out)}), flush=True)


def _step_loss(
    base: BaseComponents,
    step: int,
    args: argparse.Namespace,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Loss on this step's clips plus the loss on this step's still images."""
    examples = training_batch(args.clips + args.images, seed=args.seed * 1_000_003 + step)
    clips, stills = examples[: args.clips], examples[args.clips :]
    rng = np.random.default_rng([args.seed, step, 7])
    videos = np.stack([e.clip for e in clips])  # (B, F, H, W, 3)
    frames = np.stack([e.clip[rng.integers(len(e.clip))] for e in stills])[:, None]
    shown = [(e.sprite, e.motion) for e in clips] + [(e.sprite, None) for e in stills]
    captions = [
        "" if rng.random() < args.text_dropout
        else caption(sprite, motion, colour=rng.random() >= args.attribute_dropout)
        for sprite, motion in shown
    ]  # fmt: skip
    family = base.family
    text = family.encode_text(base, captions)
    total = torch.zeros((), device=device)
    for pixels, texts in ((videos, text[: len(clips)]), (frames, text[len(clips) :])):
        latents = video_tensor(pixels).to(device)
        noisy, target, timesteps = family.add_noise(base, latents, generator, 0.0)
        prediction = family.predict(base, noisy, timesteps, texts)
        total = total + diffusion_loss(prediction, target) * len(pixels)
    return total / (len(clips) + len(stills))


def video_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Generated clips (B, F, H, W, 3) in [0, 1] as the UNet's input (B, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(pixels).float().permute(0, 4, 1, 2, 3) * 2 - 1


def _save(
    models: torch.nn.ModuleDict,
    ema: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    step: int,
    prior: int,
    out: Path,
    state_file: Path,
) -> None:
    """Write the EMA weights (safetensors; the ModuleDict's `unet.*` and `text_encoder.*` keys
    are the weights file's keys; their step count includes the `prior` steps of an `--init`
    file) and the resumable state, each atomically."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".part")
    tensors = {key: value.detach().cpu().contiguous() for key, value in ema.items()}
    save_file(tensors, str(partial), metadata={STEPS_KEY: str(prior + step)})
    partial.replace(out)
    torch.save(
        {
            "models": models.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema,
            "step": step,
            "prior": prior,
        },
        state_file.with_suffix(".part"),
    )
    state_file.with_suffix(".part").replace(state_file)


def trained_steps(path: Path) -> int:
    """The training steps a weights file records (0 if it records none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return int((handle.metadata() or {}).get(STEPS_KEY, 0))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=sorted(BASES), default=SPRITES_NAME)
    parser.add_argument("--out", type=Path, help="weights file to write (default: the shipped)")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=math.inf, help="stop after this long")
    parser.add_argument("--clips", type=int, default=8, help="clips per step")
    parser.add_argument("--images", type=int, default=24, help="still images per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--text-dropout", type=float, default=0.1)
    parser.add_argument("--attribute-dropout", type=float, default=0.0, help="colour word left out")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the state file")
    parser.add_argument("--init", type=Path, help="start from a weights file (no optimizer state)")
    return parser


if __name__ == "__main__":
    main()
