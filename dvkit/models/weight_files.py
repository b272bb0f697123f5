"""The weight files a base was loaded from, and their content digests.

A base loaded from disk is fingerprinted from its files' digests instead of its tensors: the Hugging
Face cache already names each large file by the sha256 of its content (`blobs/<sha256>`, the
target of the snapshot's symlink), so a cached 14B model costs no reading at all; other files are
hashed once, streamed. Files are what diffusers and transformers load by default: a
component folder's `.safetensors` files without a variant suffix, else its `.bin` files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 22


def component_files(folder: Path, subfolders: Iterable[str]) -> dict[str, list[Path]]:
    """Per subfolder (e.g. `unet`; "" for `folder` itself), the weight files a default
    `from_pretrained` reads; {} unless every subfolder has some (then the tensors are hashed)."""
    found = {sub: weights_in(folder / sub) for sub in subfolders}
    return found if all(found.values()) else {}


def weights_in(folder: Path) -> list[Path]:
    """The `.safetensors` files of `folder` whose name has no variant (`model.fp16.safetensors`
    is a variant), else its `.bin` files likewise, sorted by name."""
    for suffix in (".safetensors", ".bin"):
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.name.count(".") == 1)
        if files:
            return files
    return []


def hub_snapshot(source: str) -> Path | None:
    """The local snapshot folder of Hub repository `source` in the Hugging Face cache, or None
    when it is not cached (or `source` is no repository id)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (OSError, ValueError, HFValidationError):
        return None


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's content: the Hugging Face cache's own for a snapshot symlink
    into `blobs/<sha256>`, else computed by streaming the file."""
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
        return target.name
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
