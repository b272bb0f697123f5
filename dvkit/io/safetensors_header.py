"""Reading and checking a safetensors header without torch, with precise error messages."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvkit.errors import AdapterFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_offset: int
    file_size: int


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of `path`; raise AdapterFileError saying what is wrong."""
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise AdapterFileError(f"{path}: not a safetensors file (only {file_size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > file_size - 8:
                raise AdapterFileError(
                    f"{path}: not a safetensors file (header length {length} does not fit "
                    f"a file of {file_size} bytes)"
                )
            raw = handle.read(length)
    except FileNotFoundError:
        raise AdapterFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AdapterFileError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise AdapterFileError(f"{path}: permission denied") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFileError(
            f"{path}: corrupt safetensors header (__metadata__ must map to strings)"
        )
    data_offset = 8 + length
    tensors = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    _check_layout(path, tensors, file_size - data_offset)
    return SafetensorsHeader(metadata, tensors, data_offset, file_size)


def data_sha256(path: Path, header: SafetensorsHeader) -> str:
    """sha256 of the tensor data (everything after the header), as ModelSpec's hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(header.data_offset)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "0x" + digest.hexdigest()


def _tensor_info(path: Path, name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise AdapterFileError(f"{path}: corrupt header entry for tensor {name!r}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise AdapterFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise AdapterFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise AdapterFileError(f"{path}: tensor {name!r} has invalid data offsets {offsets!r}")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    if info.end - info.begin != info.numel * DTYPE_BYTES[dtype]:
        raise AdapterFileError(
            f"{path}: tensor {name!r} needs {info.numel * DTYPE_BYTES[dtype]} bytes but its "
            f"offsets span {info.end - info.begin}"
        )
    return info


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            raise AdapterFileError(
                f"{path}: tensor data is not contiguous at {name!r} (expected offset {position}, "
                f"found {info.begin})"
            )
        position = info.end
    if position != data_size:
        raise AdapterFileError(
            f"{path}: file is truncated or has trailing bytes (tensors need {position} data bytes, "
            f"file has {data_size})"
        )
