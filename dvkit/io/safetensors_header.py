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

MAX_HEADER_BYTES = 100_000_000
"""The safetensors format's own limit on the header's length."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON in a header (a valid one needs 3; recipes and settings a few more)."""
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterFileError(f"{path}: corrupt safetensors header ({exc})") from None
    header = parse_json(text, f"{path}: corrupt safetensors header")
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


def parse_json(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON of a file header: `AdapterFileError` ("{what} (reason)") for anything else.

    Refused beyond what `json.loads` refuses: NaN and infinities (not JSON, RFC 8259 §6, but
    Python reads them), numbers too large for a float, a key twice in one object, and nesting
    deeper than `max_depth` (a RecursionError in the parser, or trouble later).
    """
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise AdapterFileError(f"{what} (nested deeper than {max_depth} levels)") from None
    except ValueError as exc:  # json.JSONDecodeError and the refusals below
        raise AdapterFileError(f"{what} ({exc})") from None
    if _depth(value) > max_depth:
        raise AdapterFileError(f"{what} (nested deeper than {max_depth} levels)")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key[:80]!r} appears twice")
        result[key] = value
    return result


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack += [(child, depth + 1) for child in _children(item)]
    return deepest


def _children(item: dict | list) -> list:
    return list(item.values()) if isinstance(item, dict) else item


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
