"""The built-in `sprites` and `sprites-wan` bases: small pixel-space text-to-video models of the
sprites world, a 3D UNet (`sprites`) and a Wan transformer (`sprites-wan`), with the same
text encoder and tokenizer.

Their weights ship inside the package (`weights/sprites.safetensors`,
`weights/sprites-wan.safetensors`, trained by `python -m dvkit.sprites.train_base --base
NAME`); loading checks their sha256 against `WEIGHTS_SHA256` / `WAN_WEIGHTS_SHA256`.
The architectures and tokenizer are built here from fixed configs. diffusers' 3D UNet gives its
temporal transformers no frame positions (their attention cannot tell frame 2 from frame 6), so
this base adds fixed sinusoidal frame embeddings to every temporal transformer block; without
them no text or adapter could ask for a direction of motion.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import (
    DDIMScheduler,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from safetensors.torch import load

from dvkit.errors import DvkitError
from dvkit.models.components import BaseComponents
from dvkit.models.pixel_codec import PixelCodec
from dvkit.models.tiny import build_word_tokenizer, small_text_encoder, small_unet
from dvkit.sprites.world import SIZE, VOCABULARY

if TYPE_CHECKING:
    from diffusers import SchedulerMixin
    from transformers import CLIPTokenizer

SPRITES_NAME = "sprites"
SPRITES_ARCHITECTURE = "sprites-pixel-t2v"
TEXT_WIDTH = 64
MAX_TOKENS = 24
WEIGHTS_FILE = Path(__file__).with_name("weights") / "sprites.safetensors"
WEIGHTS_SHA256 = "b08e99c3ff51eeb997b22a916a7480673d3e503dfbf03f6e67f6ab0a6ebca5d4"
SPRITES_WAN_NAME = "sprites-wan"
SPRITES_WAN_ARCHITECTURE = "sprites-pixel-wan"
WAN_WEIGHTS_FILE = WEIGHTS_FILE.with_name("sprites-wan.safetensors")
WAN_WEIGHTS_SHA256 = "7b09d89cbdf6a4bd4203769cab67b8b99b796200f1541f9ff91b8bcf5df25e6c"
SPRITES_BASES = (SPRITES_NAME, SPRITES_WAN_NAME)
"""The built-in models of the sprites world (ground-truth metrics apply to their videos)."""


SHIPPED_SHA256 = {WEIGHTS_FILE: WEIGHTS_SHA256, WAN_WEIGHTS_FILE: WAN_WEIGHTS_SHA256}
"""The sha256 each shipped weights file must have."""


class SpritesWeightsError(DvkitError):
    """The shipped sprites weights are missing or not the ones this dvkit release expects."""


def build_sprites_base(weights: Path | None = WEIGHTS_FILE, seed: int = 0) -> BaseComponents:
    """The sprites base with its shipped weights (hash-checked), another weights file (e.g. from
    `train_base`), or with `weights=None` fresh seeded weights."""
    tokenizer = build_word_tokenizer(VOCABULARY, MAX_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = small_unet(sample_size=SIZE, channels=3, widths=(32, 64), text_width=TEXT_WIDTH)
        add_frame_positions(unet)
        text_encoder = small_text_encoder(tokenizer, TEXT_WIDTH, intermediate=128)
    return _assemble(
        unet, text_encoder, tokenizer, sprites_scheduler(), SPRITES_NAME, SPRITES_ARCHITECTURE,
        weights, WEIGHTS_FILE,
    )  # fmt: skip


def build_sprites_wan_base(
    weights: Path | None = WAN_WEIGHTS_FILE, seed: int = 0
) -> BaseComponents:
    """The sprites-wan base (shipped weights hash-checked, another weights file, or with
    `weights=None` fresh seeded weights): a `WanTransformer3DModel` on the pixels themselves
    (3 channels in and out, patches 1×2×2: 8×8 tokens per frame, one latent frame per frame, so
    any frame count; RoPE gives frames their positions), 6 blocks of width 96 (4 heads of 24,
    FFN 256), reading the sprites text encoder (width 64). Objective and sampler: Wan's
    (flow matching, `dvkit.families.wan`), with no flow shift (see `sprites_wan_scheduler`)."""
    tokenizer = build_word_tokenizer(VOCABULARY, MAX_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=4,
            attention_head_dim=24,
            in_channels=3,
            out_channels=3,
            text_dim=TEXT_WIDTH,
            freq_dim=64,
            ffn_dim=256,
            num_layers=6,
            cross_attn_norm=True,
            rope_max_seq_len=32,
        )
        text_encoder = small_text_encoder(tokenizer, TEXT_WIDTH, intermediate=128)
    return _assemble(
        transformer, text_encoder, tokenizer, sprites_wan_scheduler(), SPRITES_WAN_NAME,
        SPRITES_WAN_ARCHITECTURE, weights, WAN_WEIGHTS_FILE,
    )  # fmt: skip


def _assemble(
    denoiser: torch.nn.Module,
    text_encoder: torch.nn.Module,
    tokenizer: CLIPTokenizer,
    scheduler: SchedulerMixin,
    name: str,
    architecture: str,
    weights: Path | None,
    shipped: Path,
) -> BaseComponents:
    """The components of a sprites base, its weights loaded from `weights` when given (checked
    against the shipped file's sha256 when it is the `shipped` file)."""
    if weights is not None:
        state = load_weights(weights, SHIPPED_SHA256[shipped] if weights == shipped else "")
        denoiser.load_state_dict(_part(state, "unet."))
        text_encoder.load_state_dict(_part(state, "text_encoder."))
    return BaseComponents(
        unet=denoiser.eval(),
        vae=PixelCodec(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        name=name,
        architecture=architecture,
    )


def add_frame_positions(unet: UNet3DConditionModel, max_frames: int = 32) -> None:
    """Give each temporal transformer block sinusoidal frame embeddings (added to the input of
    its attention layers, as diffusers' `positional_embeddings="sinusoidal"` does)."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    for module in unet.modules():
        if isinstance(module, TransformerTemporalModel):
            for block in module.transformer_blocks:
                width = block.norm1.normalized_shape[0]
                block.pos_embed = SinusoidalPositionalEmbedding(width, max_seq_length=max_frames)


def sprites_scheduler() -> DDIMScheduler:
    """Linear betas 1e-4 → 0.02 over 1000 steps (a pixel-space schedule), v-prediction,
    sampling from the last timestep ('trailing') with predicted pixels clipped to [-1, 1]."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
    )


def sprites_wan_scheduler() -> UniPCMultistepScheduler:
    """UniPC with flow prediction over 1000 training timesteps, as Wan's, but flow shift 1 (σ
    unshifted): Wan shifts σ up (3 at 480p, 5 at 720p) because more pixels keep more of the
    signal at a given σ (SD3 §5.3.2); 16×16 frames are far below Wan's sizes."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=1.0,
    )


def load_weights(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a sprites weights file, after checking its sha256 (`WEIGHTS_SHA256` when
    `expected_sha256` is None; no check when it is "")."""
    expected = WEIGHTS_SHA256 if expected_sha256 is None else expected_sha256
    if not path.is_file():
        raise SpritesWeightsError(
            f"the sprites weights are missing ({path}); reinstall dvkit, or train them with: "
            f"python -m dvkit.sprites.train_base --base {path.stem}"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected and digest != expected:
        raise SpritesWeightsError(
            f"{path} has sha256 {digest[:12]}…, but this dvkit expects {expected[:12]}…; "
            "reinstall dvkit"
        )
    return load(data)


def state_tensors(components: BaseComponents) -> dict[str, torch.Tensor]:
    """The UNet and text-encoder tensors as they are stored in the weights file."""
    tensors = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
    tensors.update(
        {f"text_encoder.{k}": v for k, v in components.text_encoder.state_dict().items()}
    )
    return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
