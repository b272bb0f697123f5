"""Fingerprints of bases loaded from disk come from their weight files' digests."""

import hashlib

import torch

from dvkit.models.loading import load_base
from dvkit.models.tiny import build_tiny_base
from dvkit.models.weight_files import component_files, file_digest


def _save(base, folder):
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(base, part).save_pretrained(folder / part)


def test_folder_base_is_fingerprinted_from_its_files_whatever_the_dtype(tmp_path) -> None:
    _save(build_tiny_base(), tmp_path / "base")
    first = load_base(str(tmp_path / "base"), "mine")
    assert sorted(first.weight_files) == ["text_encoder", "unet", "vae"]
    fingerprint = first.fingerprint()
    first.unet.to(torch.float16)
    assert first.fingerprint() == fingerprint == load_base(str(tmp_path / "base")).fingerprint()
    with torch.no_grad():
        first.unet.conv_in.weight.add_(1.0)  # weights changed after loading are not read again
    assert first.fingerprint() == fingerprint
    weights = tmp_path / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert load_base(str(tmp_path / "base")).fingerprint() != fingerprint


def test_built_in_bases_hash_their_tensors() -> None:
    base = build_tiny_base()
    assert base.weight_files == {}
    before = base.fingerprint()
    with torch.no_grad():
        base.unet.conv_in.weight.add_(1.0)
    assert base.fingerprint() != before


def test_hub_cache_blobs_are_named_by_their_digest_and_not_read(tmp_path) -> None:
    blobs = tmp_path / "models--org--name" / "blobs"
    blobs.mkdir(parents=True)
    named = "ab" * 32
    (blobs / named).write_bytes(b"content whose sha256 is something else")
    snapshot = tmp_path / "models--org--name" / "snapshots" / "0123" / "unet"
    snapshot.mkdir(parents=True)
    link = snapshot / "diffusion_pytorch_model.safetensors"
    link.symlink_to(blobs / named)
    assert file_digest(link) == named
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(b"abc")
    assert file_digest(plain) == hashlib.sha256(b"abc").hexdigest()


def test_default_files_leave_out_variants_and_need_every_component(tmp_path) -> None:
    for name in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"):
        (tmp_path / "text_encoder").mkdir(exist_ok=True)
        (tmp_path / "text_encoder" / name).write_bytes(b"x")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    found = component_files(tmp_path, ["text_encoder", "unet"])
    assert [p.name for p in found["text_encoder"]] == ["model.safetensors"]
    assert [p.name for p in found["unet"]] == ["diffusion_pytorch_model.bin"]
    assert component_files(tmp_path, ["text_encoder", "unet", "vae"]) == {}
