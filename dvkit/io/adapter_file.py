"""dvkit's adapter files: safetensors with ModelSpec and `dvkit.*` header metadata.

Tensor keys are the UNet module path of the transformer block plus the adapter's own names
(`<block>.attn2_adapter.down.weight`, ...); a subject file also holds `token_embedding`
(one row per learned vector) and may hold `reference_images`. `modelspec.hash_sha256` is the
sha256 of the tensor data.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.errors import AdapterFileError, InvalidNameError
from dvkit.io.files import write_atomically
from dvkit.io.safetensors_header import SafetensorsHeader, data_sha256, read_header
from dvkit.names import validate_name

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MODELSPEC_VERSION = "1.0.1"
TOKEN_EMBEDDING_KEY = "token_embedding"
REFERENCE_IMAGES_KEY = "reference_images"
"""Subject files may carry their training images (uint8 [N, H, W, 3]) for guidance and scoring."""
ARCHITECTURE_SUFFIX = {"subject": "dreamvideo-identity", "motion": "dreamvideo-motion"}
REQUIRED_KEYS = (
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.title",
    "modelspec.hash_sha256",
    "dvkit.format",
    "dvkit.kind",
    "dvkit.name",
    "dvkit.base",
    "dvkit.base_fingerprint",
)


@dataclass
class AdapterFileInfo:
    """What an adapter file's header says about the adapter it holds."""

    kind: str
    name: str
    base: str
    base_fingerprint: str
    architecture: str
    token: str | None = None
    initializer: str | None = None
    hidden_ratio: float = 0.5
    placement: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    weights_hash: str = ""
    params: int = 0
    num_vectors: int | None = None
    dvkit_version: str = ""

    def metadata(self) -> dict[str, str]:
        """The header metadata for this adapter, without the hash (added on write)."""
        from dvkit import __version__

        meta = {
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": f"{self.architecture}/{ARCHITECTURE_SUFFIX[self.kind]}",
            "modelspec.implementation": "dvkit",
            "modelspec.title": self.name,
            "modelspec.date": date.today().isoformat(),
            "modelspec.description": self.description,
            "dvkit.format": str(FORMAT_VERSION),
            "dvkit.version": __version__,
            "dvkit.kind": self.kind,
            "dvkit.name": self.name,
            "dvkit.base": self.base,
            "dvkit.base_fingerprint": self.base_fingerprint,
            "dvkit.hidden_ratio": repr(self.hidden_ratio),
            "dvkit.placement": json.dumps(self.placement),
            "dvkit.training": json.dumps(self.training, sort_keys=True),
        }
        if self.kind == "subject":
            meta["modelspec.trigger_phrase"] = self.token or ""
            meta["dvkit.token"] = self.token or ""
            meta["dvkit.initializer"] = self.initializer or ""
        return meta


def write_adapter_file(path: Path, tensors: dict[str, torch.Tensor], info: AdapterFileInfo) -> str:
    """Write `tensors` with `info`'s metadata atomically to `path`; return the weights hash."""
    payload, weights_hash = serialize_with_hash(tensors, info.metadata())
    write_atomically(Path(path), payload)
    return weights_hash


def serialize_with_hash(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[bytes, str]:
    """safetensors bytes whose `modelspec.hash_sha256` is the sha256 of their tensor data."""
    import hashlib

    from safetensors.torch import save

    raw = save({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, metadata)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    data = raw[8 + length :]
    weights_hash = "0x" + hashlib.sha256(data).hexdigest()
    header["__metadata__"]["modelspec.hash_sha256"] = weights_hash
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data, weights_hash


def check_header(
    path: Path, meta: dict[str, str], required: Sequence[str], newest: int, what: str
) -> None:
    """Refuse a dvkit header that lacks a `required` entry or has a format newer than `newest`."""
    missing = [key for key in required if not meta.get(key)]
    if missing:
        raise AdapterFileError(f"{path}: {what} header lacks {', '.join(missing)}")
    fmt = meta["dvkit.format"]
    if not fmt.isdigit() or int(fmt) > newest:
        raise AdapterFileError(
            f"{path}: {what} format {fmt!r} is newer than this dvkit reads ({newest}); "
            "upgrade dvkit"
        )


def read_adapter_info(path: Path, verify_hash: bool = True) -> AdapterFileInfo:
    """Validate a dvkit adapter file's header (and tensor-data hash); say exactly what is wrong."""
    header = read_header(path)
    meta = header.metadata
    if not any(key.startswith("dvkit.") for key in meta):
        raise AdapterFileError(
            f"{path}: not a dvkit adapter file (its header has no dvkit.* metadata)"
        )
    check_header(path, meta, REQUIRED_KEYS, FORMAT_VERSION, "adapter file")
    kind = meta["dvkit.kind"]
    if kind not in ARCHITECTURE_SUFFIX:
        raise AdapterFileError(
            f"{path}: unknown adapter kind {kind!r} (expected subject or motion)"
        )
    try:
        validate_name(meta["dvkit.name"])
    except InvalidNameError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None
    info = _info_from_metadata(path, kind, meta)
    _check_tensors(path, info, header)
    if verify_hash:
        actual = data_sha256(path, header)
        if actual != info.weights_hash:
            raise AdapterFileError(
                f"{path}: corrupt adapter file (tensor data hash {actual[:14]}… does not match "
                f"the header's {info.weights_hash[:14]}…)"
            )
    return info


def _info_from_metadata(path: Path, kind: str, meta: dict[str, str]) -> AdapterFileInfo:
    try:
        hidden_ratio = float(meta.get("dvkit.hidden_ratio", "0.5"))
        placement = json.loads(meta.get("dvkit.placement", "[]"))
        training = json.loads(meta.get("dvkit.training", "{}"))
    except (ValueError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"{path}: unreadable dvkit metadata ({exc})") from None
    architecture = meta["modelspec.architecture"].rsplit("/", 1)[0]
    return AdapterFileInfo(
        kind=kind,
        name=meta["dvkit.name"],
        base=meta["dvkit.base"],
        base_fingerprint=meta["dvkit.base_fingerprint"],
        architecture=architecture,
        token=meta.get("dvkit.token") or None,
        initializer=meta.get("dvkit.initializer") or None,
        hidden_ratio=hidden_ratio,
        placement=placement,
        training=training,
        description=meta.get("modelspec.description", ""),
        weights_hash=meta["modelspec.hash_sha256"],
        dvkit_version=meta.get("dvkit.version", ""),
    )


def _check_tensors(path: Path, info: AdapterFileInfo, header: SafetensorsHeader) -> None:
    adapter_keys = [key for key in header.tensors if key not in _EXTRA_KEYS]
    if not adapter_keys:
        raise AdapterFileError(f"{path}: adapter file holds no adapter tensors")
    embedding = header.tensors.get(TOKEN_EMBEDDING_KEY)
    if info.kind == "subject":
        if embedding is None or len(embedding.shape) != 2:
            raise AdapterFileError(
                f"{path}: subject adapter lacks its {TOKEN_EMBEDDING_KEY!r} tensor [vectors, dim]"
            )
        if not info.token:
            raise AdapterFileError(f"{path}: subject adapter header lacks dvkit.token")
        info.num_vectors = embedding.shape[0]
    elif embedding is not None or REFERENCE_IMAGES_KEY in header.tensors:
        raise AdapterFileError(
            f"{path}: a motion adapter must not hold a token embedding or reference images"
        )
    references = header.tensors.get(REFERENCE_IMAGES_KEY)
    if references is not None and (references.dtype != "U8" or len(references.shape) != 4):
        raise AdapterFileError(f"{path}: {REFERENCE_IMAGES_KEY!r} must be uint8 [N, H, W, 3]")
    info.params = sum(t.numel for key, t in header.tensors.items() if key != REFERENCE_IMAGES_KEY)


@dataclass
class AdapterTensors:
    """An adapter file's tensors, split by role."""

    adapters: dict[str, torch.Tensor]
    token_embedding: torch.Tensor | None = None
    reference_images: torch.Tensor | None = None


def load_adapter_tensors(data: bytes) -> AdapterTensors:
    """Tensors of an adapter file already read (and hash-checked) into memory."""
    from safetensors.torch import load

    tensors = load(data)
    return AdapterTensors(
        adapters={k: v for k, v in tensors.items() if k not in _EXTRA_KEYS},
        token_embedding=tensors.get(TOKEN_EMBEDDING_KEY),
        reference_images=tensors.get(REFERENCE_IMAGES_KEY),
    )


_EXTRA_KEYS = (TOKEN_EMBEDDING_KEY, REFERENCE_IMAGES_KEY)
