import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from dvkit.errors import AdapterFileError
from dvkit.io.adapter_file import read_adapter_info


def test_round_trip_header_and_tensors(make_adapter) -> None:
    path = make_adapter("cat", "subject", description="a grey cat")
    info = read_adapter_info(path)
    assert (info.kind, info.name, info.base, info.token) == ("subject", "cat", "tiny", "<cat>")
    assert info.description == "a grey cat"
    assert info.num_vectors == 1
    assert info.training == {"steps": 10}
    tensors = load_file(path)
    assert info.params == sum(t.numel() for t in tensors.values())
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "dvkit-tiny/dreamvideo-identity"
    assert meta["modelspec.trigger_phrase"] == "<cat>"
    assert meta["modelspec.hash_sha256"] == info.weights_hash
    assert meta["dvkit.kind"] == "subject"


def test_hash_covers_tensor_data_only(make_adapter, tmp_path) -> None:
    a = read_adapter_info(make_adapter("cat", seed=7, description="one"))
    b = read_adapter_info(make_adapter("dog", seed=7, description="two"))
    c = read_adapter_info(make_adapter("cat", seed=8))
    assert a.weights_hash == b.weights_hash != c.weights_hash


def _rewrite_header(path, change) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"abc"), "not a safetensors file"),
        (lambda p: p.write_bytes(b"\xff" * 64), "not a safetensors file"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "corrupt safetensors header"),
        (lambda p: p.write_bytes(p.read_bytes()[:-4]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"junk"), "trailing bytes"),
        (
            lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])),
            "corrupt adapter file",
        ),
        (
            lambda p: _rewrite_header(p, lambda h: h["__metadata__"].pop("dvkit.base")),
            "lacks dvkit.base",
        ),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["__metadata__"].update({"dvkit.kind": "style"})
            ),
            "unknown adapter kind",
        ),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["__metadata__"].update({"dvkit.format": "99"})
            ),
            "newer than this dvkit reads",
        ),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["__metadata__"].update({"dvkit.name": "Bad/Name"})
            ),
            "invalid name",
        ),
        (lambda p: _rewrite_header(p, lambda h: h.pop("token_embedding")), "contiguous|trailing"),
    ],
)
def test_reader_says_what_is_wrong(make_adapter, damage, message) -> None:
    path = make_adapter("cat", "subject")
    damage(path)
    with pytest.raises(AdapterFileError, match=message):
        read_adapter_info(path)


def test_foreign_safetensors_refused(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, path, metadata={"ss_network_dim": "4"})
    with pytest.raises(AdapterFileError, match="not a dvkit adapter file"):
        read_adapter_info(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(AdapterFileError, match="no such file"):
        read_adapter_info(tmp_path / "nope.safetensors")
    with pytest.raises(AdapterFileError, match="is a folder"):
        read_adapter_info(tmp_path)
