"""dvkit's adapter files: safetensors with ModelSpec and `dvkit.*` header metadata.

Tensor keys are the UNet module path of the transformer block plus the adapter's own names
(`<block>.attn2_adapter.down.weight`, ...); a subject file also holds `token_embedding`
(one row per learned vector) and may hold `reference_images`. `modelspec.hash_sha256` is the
sha256 of the tensor data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.errors import AdapterFileError, InvalidNameError
from dvkit.io.adapter_layout import (
    EXTRA_KEYS,
    REFERENCE_IMAGES_KEY,
    TOKEN_EMBEDDING_KEY,
    check_tensors,
)
from dvkit.io.files import write_atomically
from dvkit.io.safetensors_header import data_sha256, parse_json, read_header
from dvkit.names import validate_name

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MODELSPEC_VERSION = "1.0.1"
ARCHITECTURE_SUFFIX = {"subject": "dreamvideo-identity", "motion": "dreamvideo-motion"}
LORA_SUFFIX = "lora"
"""ModelSpec's architecture suffix of LoRAs (`<base architecture>/lora`)."""
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
    "dvkit.hidden_ratio",
    "dvkit.placement",
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
    token_width: int | None = None
    """Width of the learned vectors (the text encoder's), read from the tensors."""
    dvkit_version: str = ""
    method: str = "dreamvideo"
    """`dreamvideo` (adapters beside transformer layers) or `lora` (`dvkit.models.lora`)."""
    rank: int | None = None
    """A LoRA's largest rank, read from the tensors."""
    alpha: float | None = None
    """A LoRA's alpha where all its layers share one, read from the tensors."""

    @property
    def architecture_suffix(self) -> str:
        """What `modelspec.architecture` says after the base's architecture and a slash."""
        return LORA_SUFFIX if self.method == "lora" else ARCHITECTURE_SUFFIX[self.kind]

    def metadata(self) -> dict[str, str]:
        """The header metadata for this adapter, without the hash (added on write)."""
        from dvkit import __version__

        meta = {
            **modelspec_metadata(
                f"{self.architecture}/{self.architecture_suffix}", self.name, self.description
            ),
            "dvkit.format": str(FORMAT_VERSION),
            "dvkit.version": __version__,
            "dvkit.kind": self.kind,
            "dvkit.method": self.method,
            "dvkit.name": self.name,
            "dvkit.base": self.base,
            "dvkit.base_fingerprint": self.base_fingerprint,
            "dvkit.hidden_ratio": repr(self.hidden_ratio),
            "dvkit.placement": json.dumps(self.placement),
            "dvkit.training": json.dumps(self.training, sort_keys=True),
        }
        if self.method == "lora":
            meta["dvkit.lora"] = json.dumps({"rank": self.rank, "alpha": self.alpha})
        if self.kind == "subject":
            meta["modelspec.trigger_phrase"] = self.token or ""
            meta["dvkit.token"] = self.token or ""
            meta["dvkit.initializer"] = self.initializer or ""
        return meta


def modelspec_metadata(architecture: str, title: str, description: str) -> dict[str, str]:
    """The ModelSpec entries every dvkit file has but the hash and trigger phrase
    (https://github.com/Stability-AI/ModelSpec): `architecture` such as `animatediff/lora`."""
    return {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": architecture,
        "modelspec.implementation": "dvkit",
        "modelspec.title": title,
        "modelspec.date": date.today().isoformat(),
        "modelspec.description": description,
    }


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
    source: str | Path, meta: Mapping[str, str], required: Sequence[str], newest: int, what: str
) -> None:
    """Refuse a dvkit header that lacks a `required` entry or has a format newer than `newest`."""
    missing = [key for key in required if not meta.get(key)]
    if missing:
        raise AdapterFileError(f"{source}: {what} header lacks {', '.join(missing)}")
    fmt = meta["dvkit.format"]
    if not fmt.isdigit() or int(fmt) > newest:
        raise AdapterFileError(
            f"{source}: {what} format {fmt!r} is newer than this dvkit reads ({newest}); "
            "upgrade dvkit"
        )


def read_adapter_info(path: Path, verify_hash: bool = True) -> AdapterFileInfo:
    """Validate a dvkit adapter file's header (and tensor-data hash); say exactly what is wrong.

    Every header field that the tensors also determine is checked against them (see
    `check_tensors`); raises `AdapterFileError` naming the field and both values.
    """
    header = read_header(path)
    meta = header.metadata
    if not any(key.startswith("dvkit.") for key in meta):
        raise AdapterFileError(
            f"{path}: not a dvkit adapter file (its header has no dvkit.* metadata)"
        )
    info = info_from_metadata(path, meta)
    check_tensors(path, info, header.tensors)
    if verify_hash:
        actual = data_sha256(path, header)
        if actual != info.weights_hash:
            raise AdapterFileError(
                f"{path}: corrupt adapter file (tensor data hash {actual[:14]}… does not match "
                f"the header's {info.weights_hash[:14]}…)"
            )
    return info


def info_from_metadata(source: str | Path, meta: Mapping[str, Any]) -> AdapterFileInfo:
    """The adapter a dvkit header describes, each field checked for its type and range.

    `source` starts every error message. The fields are not yet compared with the tensors
    (`check_tensors` does that).
    """
    odd = next((key for key, value in meta.items() if not isinstance(value, str)), None)
    if odd is not None:
        raise AdapterFileError(f"{source}: header entry {odd!r} is not a string")
    check_header(source, meta, REQUIRED_KEYS, FORMAT_VERSION, "adapter file")
    kind = meta["dvkit.kind"]
    if kind not in ARCHITECTURE_SUFFIX:
        raise AdapterFileError(
            f"{source}: unknown adapter kind {kind!r} (expected subject or motion)"
        )
    try:
        validate_name(meta["dvkit.name"])
    except InvalidNameError as exc:
        raise AdapterFileError(f"{source}: {exc}") from None
    method = meta.get("dvkit.method", "dreamvideo")
    if method not in ("dreamvideo", "lora"):
        raise AdapterFileError(
            f"{source}: unknown dvkit.method {method[:40]!r} (expected dreamvideo or lora)"
        )
    suffix_expected = LORA_SUFFIX if method == "lora" else ARCHITECTURE_SUFFIX[kind]
    architecture, _, suffix = meta["modelspec.architecture"].rpartition("/")
    if suffix != suffix_expected:
        raise AdapterFileError(
            f"{source}: modelspec.architecture is {meta['modelspec.architecture']!r}, but a "
            f"{kind} {method} file's ends in /{suffix_expected}"
        )
    token = meta.get("dvkit.token") or None
    if kind == "subject" and (method == "dreamvideo" or token):
        _check_token(source, token, meta.get("modelspec.trigger_phrase"))
    return AdapterFileInfo(
        kind=kind,
        name=meta["dvkit.name"],
        base=meta["dvkit.base"],
        base_fingerprint=meta["dvkit.base_fingerprint"],
        architecture=architecture,
        token=token,
        initializer=meta.get("dvkit.initializer") or None,
        hidden_ratio=_hidden_ratio(source, meta["dvkit.hidden_ratio"]),
        placement=_placement(source, meta["dvkit.placement"]),
        training=_training(source, meta.get("dvkit.training", "{}")),
        description=meta.get("modelspec.description", ""),
        weights_hash=meta["modelspec.hash_sha256"],
        dvkit_version=meta.get("dvkit.version", ""),
        method=method,
        **(_lora_numbers(source, meta.get("dvkit.lora", "{}")) if method == "lora" else {}),
    )


def _check_token(source: str | Path, token: str | None, trigger: str | None) -> None:
    if not token:
        raise AdapterFileError(f"{source}: subject adapter header lacks dvkit.token")
    if trigger is not None and trigger != token:
        raise AdapterFileError(
            f"{source}: modelspec.trigger_phrase {trigger!r} is not dvkit.token {token!r}"
        )


def _hidden_ratio(source: str | Path, text: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = math.nan
    if not math.isfinite(ratio):
        raise AdapterFileError(f"{source}: dvkit.hidden_ratio {text[:40]!r} is not a number")
    return ratio


def _lora_numbers(source: str | Path, text: str) -> dict[str, Any]:
    """`rank` and `alpha` from a LoRA's `dvkit.lora` entry (rank is checked against the
    tensors by `check_tensors`)."""
    numbers = parse_json(text, f"{source}: unreadable dvkit.lora")
    if not isinstance(numbers, dict):
        numbers = {}
    rank, alpha = numbers.get("rank"), numbers.get("alpha")
    if not isinstance(rank, int) or not (alpha is None or isinstance(alpha, (int, float))):
        raise AdapterFileError(
            f"{source}: dvkit.lora must be a JSON object with a whole-number rank and a "
            "numeric or null alpha"
        )
    return {"rank": rank, "alpha": None if alpha is None else float(alpha)}


def _placement(source: str | Path, text: str) -> list[str]:
    placement = parse_json(text, f"{source}: unreadable dvkit.placement")
    if not isinstance(placement, list) or not all(isinstance(p, str) for p in placement):
        raise AdapterFileError(f"{source}: dvkit.placement must be a JSON list of layer names")
    return placement


def _training(source: str | Path, text: str) -> dict[str, Any]:
    training = parse_json(text, f"{source}: unreadable dvkit.training")
    if not isinstance(training, dict):
        raise AdapterFileError(f"{source}: dvkit.training must be a JSON object")
    return training


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the float tensors holding NaN or infinite values (meta tensors hold none)."""
    import torch

    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point()
        and not tensor.is_meta
        and not bool(torch.isfinite(tensor).all())
    ]


def check_finite(source: str | Path, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `AdapterFileError` naming how many of a file's `what` tensors are not finite (a
    NaN or inf weight composes to a black video)."""
    bad = non_finite(tensors)
    if bad:
        raise AdapterFileError(
            f"{source}: {len(bad)} of {len(tensors)} {what} tensors hold NaN or infinite values "
            f"(first: {bad[0]})"
        )


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
        adapters={k: v for k, v in tensors.items() if k not in EXTRA_KEYS},
        token_embedding=tensors.get(TOKEN_EMBEDDING_KEY),
        reference_images=tensors.get(REFERENCE_IMAGES_KEY),
    )
