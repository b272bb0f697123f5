"""The built-in `sprites` base: a small pixel-space text-to-video model of the sprites world.

Its weights ship inside the package (`weights/sprites.safetensors`, trained by
`python -m dvkit.sprites.train_base`); loading checks their sha256 against `WEIGHTS_SHA256`.
The architecture and tokenizer are built here from fixed configs. diffusers' 3D UNet gives its
temporal transformers no frame positions (their attention cannot tell frame 2 from frame 6), so
this base adds fixed sinusoidal frame embeddings to every temporal transformer block; without
them no text or adapter could ask for a direction of motion.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet3DConditionModel
from safetensors.torch import load

from dvkit.errors import DvkitError
from dvkit.models.components import BaseComponents
from dvkit.models.pixel_codec import PixelCodec
from dvkit.models.tiny import build_word_tokenizer, small_text_encoder, small_unet
from dvkit.sprites.world import SIZE, VOCABULARY

SPRITES_NAME = "sprites"
SPRITES_ARCHITECTURE = "sprites-pixel-t2v"
TEXT_WIDTH = 64
MAX_TOKENS = 24
WEIGHTS_FILE = Path(__file__).with_name("weights") / "sprites.safetensors"
WEIGHTS_SHA256 = "b08e99c3ff51eeb997b22a916a7480673d3e503dfbf03f6e67f6ab0a6ebca5d4"


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
    if weights is not None:
        state = load_weights(weights, None if weights == WEIGHTS_FILE else "")
        unet.load_state_dict(_part(state, "unet."))
        text_encoder.load_state_dict(_part(state, "text_encoder."))
    return BaseComponents(
        unet=unet.eval(),
        vae=PixelCodec(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=sprites_scheduler(),
        name=SPRITES_NAME,
        architecture=SPRITES_ARCHITECTURE,
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


def load_weights(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a sprites weights file, after checking its sha256."""
    expected = WEIGHTS_SHA256 if expected_sha256 is None else expected_sha256
    if not path.is_file():
        raise SpritesWeightsError(
            f"the sprites weights are missing ({path}); reinstall dvkit, or train them with: "
            "python -m dvkit.sprites.train_base"
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
