"""The `modelscope-shaped` base: ModelScope T2V's architecture with random, narrowed weights."""

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dvkit.models.components import BaseComponents
from dvkit.models.injection import adapter_slots
from dvkit.models.random_base import (
    CLIP_VOCAB,
    build_modelscope_shaped,
    text_config,
    unet_config,
    unet_widths,
    vae_config,
)

SCALE = 0.1


@pytest.fixture(scope="module")
def base() -> BaseComponents:
    return build_modelscope_shaped(width_scale=SCALE, text_layers=2)


def _counts(unet: torch.nn.Module) -> dict[str, int]:
    kinds = (Transformer2DModel, TransformerTemporalModel, BasicTransformerBlock)
    return {kind.__name__: sum(isinstance(m, kind) for m in unet.modules()) for kind in kinds}


def test_unet_has_the_module_structure_of_the_full_config(base):
    with torch.device("meta"):
        full = UNet3DConditionModel(**unet_config(1.0))
    assert sum(p.numel() for p in full.parameters()) == 1_411_233_860  # ModelScope T2V's UNet
    assert full.config.block_out_channels == (320, 640, 1280, 1280)
    assert full.config.attention_head_dim == 64 and full.config.cross_attention_dim == 1024
    assert _counts(full) == {
        "Transformer2DModel": 16,
        "TransformerTemporalModel": 17,
        "BasicTransformerBlock": 33,
    }
    assert _counts(base.unet) == _counts(full)
    for kind in ("subject", "motion"):
        assert len(adapter_slots(base.unet, kind)) == len(adapter_slots(full, kind))
    config = base.unet.config
    for key in ("down_block_types", "up_block_types", "layers_per_block", "sample_size"):
        assert config[key] == full.config[key]


@pytest.mark.parametrize("scale", [0.05, 0.1, 0.25, 0.5, 1.0, 0.37])
def test_narrowed_widths_stay_divisible(scale):
    widths, heads = unet_widths(scale)
    assert [w // widths[0] for w in widths] == [1, 2, 4, 4]
    for width in widths:
        assert width % 32 == 0 and width % heads == 0 and width // heads >= 5
    vae = vae_config(scale)["block_out_channels"]
    assert all(w % 32 == 0 for w in vae)
    assert text_config(scale).hidden_size % 16 == 0
    assert unet_config(scale)["cross_attention_dim"] == text_config(scale).hidden_size


def test_components_match_the_modelscope_configs(base):
    assert base.name == "modelscope-shaped" and base.architecture == "modelscope-t2v"
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size
    assert base.vae.config.scaling_factor == 0.18215
    assert len(base.vae.config.block_out_channels) == 4 and base.vae.config.latent_channels == 4
    assert base.text_encoder.config.vocab_size == len(base.tokenizer) == CLIP_VOCAB
    assert base.text_encoder.config.num_hidden_layers == 2
    assert base.text_encoder.config.eos_token_id == base.tokenizer.eos_token_id == CLIP_VOCAB - 1
    full_text = text_config(1.0)
    assert (full_text.hidden_size, full_text.num_hidden_layers) == (1024, 23)
    assert (full_text.intermediate_size, full_text.num_attention_heads) == (4096, 16)
    scheduler = base.scheduler.config
    assert (scheduler.beta_start, scheduler.beta_end) == (0.00085, 0.012)
    assert scheduler.beta_schedule == "scaled_linear" and scheduler.steps_offset == 1


def test_same_seed_same_weights(base):
    again = build_modelscope_shaped(width_scale=SCALE, text_layers=2)
    assert again.fingerprint() == base.fingerprint()
    other_seed = build_modelscope_shaped(width_scale=SCALE, text_layers=2, seed=1)
    assert other_seed.fingerprint() != base.fingerprint()


def test_forward_pass_from_pixels_and_prompt(base):
    ids = base.tokenizer(
        ["a cat surfing"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = base.text_encoder(ids)[0]
        pixels = torch.rand(2, 3, 64, 64) * 2 - 1  # two frames of one video
        latents = base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor
        assert latents.shape == (2, 4, 8, 8)
        video = latents.reshape(1, 2, 4, 8, 8).permute(0, 2, 1, 3, 4)
        out = base.unet(video, torch.tensor([500]), encoder_hidden_states=text).sample
    assert out.shape == video.shape and torch.isfinite(out).all()
