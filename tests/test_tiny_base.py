"""The built-in tiny base: deterministic, self-contained, and a working UNet3DConditionModel."""

import json
import time

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from dvkit.models.components import BaseComponents
from dvkit.models.tiny import TINY_WORDS, build_tiny_base, write_word_vocab


def test_fingerprint_is_deterministic_and_follows_the_seed():
    first = build_tiny_base().fingerprint()
    assert build_tiny_base().fingerprint() == first
    assert build_tiny_base(seed=1).fingerprint() != first
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_changes_when_any_weight_changes():
    base = build_tiny_base()
    before = base.fingerprint()
    with torch.no_grad():
        base.vae.decoder.conv_out.bias[0] += 1e-6
    assert base.fingerprint() != before


def test_fingerprint_survives_saving_and_loading(tmp_path):
    base = build_tiny_base()
    base.unet.save_pretrained(tmp_path / "unet")
    base.vae.save_pretrained(tmp_path / "vae")
    base.text_encoder.save_pretrained(tmp_path / "text_encoder")
    base.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = BaseComponents(
        unet=UNet3DConditionModel.from_pretrained(tmp_path / "unet"),
        vae=AutoencoderKL.from_pretrained(tmp_path / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(tmp_path / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tokenizer"),
        scheduler=base.scheduler,
        name=base.name,
        architecture=base.architecture,
    )
    assert loaded.fingerprint() == base.fingerprint()
    assert loaded.tokenizer("a cat surfing").input_ids == base.tokenizer("a cat surfing").input_ids


def test_tokenizer_and_text_encoder_agree():
    base = build_tiny_base()
    assert base.text_encoder.config.vocab_size == len(base.tokenizer)
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size
    assert base.tokenizer.bos_token == "<|startoftext|>"
    assert base.tokenizer.eos_token == "<|endoftext|>"
    assert base.text_encoder.config.eos_token_id == base.tokenizer.eos_token_id
    for word in TINY_WORDS:
        assert base.tokenizer.tokenize(word) == [word + "</w>"]
    ids = base.tokenizer("a photo of a zebra").input_ids
    assert ids[0] == base.tokenizer.bos_token_id and ids[-1] == base.tokenizer.eos_token_id
    assert max(ids) < len(base.tokenizer)


def test_vocab_files_hold_every_byte_with_and_without_end_of_word(tmp_path):
    write_word_vocab(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    singles = [symbol for symbol in vocab if len(symbol) == 1]
    assert len(singles) == 256
    assert all(symbol + "</w>" in vocab for symbol in singles)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert (tmp_path / "merges.txt").read_text().startswith("#version")


def test_scheduler_settings():
    config = build_tiny_base().scheduler.config
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    assert config.beta_schedule == "scaled_linear"
    assert not config.clip_sample and not config.set_alpha_to_one
    assert config.steps_offset == 1 and config.prediction_type == "epsilon"


def test_unet_and_vae_run_on_video_latents():
    base = build_tiny_base()
    tokens = base.tokenizer(
        ["a photo of a cat", "a dog surfing"], padding="max_length", max_length=10,
        truncation=True, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        text = base.text_encoder(tokens.input_ids)[0]
        latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        noise = base.unet(latents, torch.tensor(500), encoder_hidden_states=text).sample
        image = base.vae.decode(latents[:, :, 0]).sample
    assert text.shape == (2, 10, 32)
    assert noise.shape == latents.shape and torch.isfinite(noise).all()
    assert image.shape[:2] == (2, 3)


def test_building_takes_well_under_a_second():
    build_tiny_base()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        build_tiny_base()
        best = min(best, time.perf_counter() - start)
    assert best < 1.0
