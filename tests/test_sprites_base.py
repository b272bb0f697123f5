"""The built-in sprites base: its architecture, its shipped weights and their hash."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from dvkit.bases import open_base
from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.models.injection import adapter_slots
from dvkit.models.loading import load_base
from dvkit.models.pixel_codec import PixelCodec
from dvkit.sprites.base import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    SpritesWeightsError,
    build_sprites_base,
    load_weights,
    state_tensors,
)
from dvkit.sprites.world import VOCABULARY


def test_architecture_gives_adapters_places_to_sit():
    base = build_sprites_base(weights=None)
    assert isinstance(base.vae, PixelCodec)
    assert base.unet.config.in_channels == 3 and base.unet.config.sample_size == 16
    assert base.scheduler.config.prediction_type == "v_prediction"
    identity = adapter_slots(base.unet, "subject")
    motion = adapter_slots(base.unet, "motion")
    assert len(identity) >= 3  # beside attn2 of each spatial transformer (down, mid, up)
    assert len(motion) >= 4 * 3  # attn1, attn2 and ff of each temporal transformer
    temporal = [m for m in base.unet.modules() if type(m).__name__ == "TransformerTemporalModel"]
    blocks = [block for module in temporal for block in module.transformer_blocks]
    assert len(blocks) >= 4 and all(block.pos_embed is not None for block in blocks)
    one_token = [word for word in VOCABULARY if len(base.tokenizer(word).input_ids) == 3]
    assert set(VOCABULARY) - set(one_token) == {"striped"}  # 's', 'tri', 'p', 'e', 'd'
    longest = max(len(base.tokenizer(caption).input_ids) for caption in (
        "a magenta striped triangle moving right", "a purple ring zigzagging"))  # fmt: skip
    assert longest <= 24 // 2


def test_weights_round_trip_and_hash_check(tmp_path):
    fresh = build_sprites_base(weights=None, seed=3)
    path = tmp_path / "w.safetensors"
    save_file(state_tensors(fresh), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(load_weights(path, expected_sha256=digest)) == set(state_tensors(fresh))
    with pytest.raises(SpritesWeightsError, match="sha256"):
        load_weights(path, expected_sha256="0" * 64)
    with pytest.raises(SpritesWeightsError, match="missing"):
        load_weights(tmp_path / "absent.safetensors")


def test_shipped_weights_load_offline_and_match_their_hash(monkeypatch, catalog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert WEIGHTS_FILE.is_file() and WEIGHTS_FILE.stat().st_size <= 20 * 1024 * 1024
    assert hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest() == WEIGHTS_SHA256
    base = load_base("sprites")
    trained = build_sprites_base(weights=None)
    assert base.fingerprint() != trained.fingerprint()
    components, record = open_base(catalog, "sprites")
    assert record.builtin and record.fingerprint == base.fingerprint()
    assert record.architecture == "sprites-pixel-t2v"


def test_shipped_base_samples_pixel_clips():
    base = load_base("sprites")
    settings = SamplerSettings(steps=2, guidance_scale=2.0, frames=8, height=16, width=16)
    video = sample(base, [Row("a red circle moving left", seed=0)], settings)
    assert video.shape == (1, 8, 16, 16, 3)
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    again = sample(base, [Row("a red circle moving left", seed=0)], settings)
    assert torch.equal(video, again)


def test_shipped_sprites_wan_loads_checked_and_samples(tmp_path):
    from dvkit.sprites.base import WAN_WEIGHTS_FILE, WAN_WEIGHTS_SHA256, build_sprites_wan_base
    from dvkit.sprites.train_base import trained_steps

    assert hashlib.sha256(WAN_WEIGHTS_FILE.read_bytes()).hexdigest() == WAN_WEIGHTS_SHA256
    assert WAN_WEIGHTS_FILE.stat().st_size <= 5 * 1024 * 1024 and trained_steps(WAN_WEIGHTS_FILE)
    base = load_base("sprites-wan")
    assert (base.architecture, isinstance(base.vae, PixelCodec)) == ("sprites-pixel-wan", True)
    assert base.fingerprint() != build_sprites_wan_base(weights=None).fingerprint()
    settings = SamplerSettings(steps=2, guidance_scale=2.0, frames=7, height=16, width=16)
    video = sample(base, [Row("a red circle moving left", seed=0)], settings)
    assert video.shape == (1, 7, 16, 16, 3)  # any frame count: no 4k + 1 rule in pixel space
    altered = tmp_path / "sprites-wan.safetensors"
    altered.write_bytes(WAN_WEIGHTS_FILE.read_bytes() + b" ")
    with pytest.raises(SpritesWeightsError, match="sha256"):
        load_weights(altered, WAN_WEIGHTS_SHA256)
