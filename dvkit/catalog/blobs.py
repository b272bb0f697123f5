"""Content-addressed weight files: `blobs/ab/<sha256>.safetensors`.

Writes go to `tmp/<pid>-<random>.part`, are fsynced, then renamed into place, so a crash
leaves at most a temporary file or an unreferenced blob, both of which `gc` removes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dvkit.errors import CatalogNotWritableError

CHUNK = 1 << 20
STALE_TEMP_SECONDS = 24 * 3600
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class StagedBlob:
    """A fully written, fsynced temporary file and the hash of its bytes."""

    path: Path
    sha256: str
    size: int


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "blobs"
        self.tmp = home / "tmp"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{SUFFIX}"

    def stage_file(self, source: Path) -> StagedBlob:
        with open(source, "rb") as handle:
            return self._stage(handle)

    def stage_bytes(self, data: bytes) -> StagedBlob:
        import io

        return self._stage(io.BytesIO(data))

    def _stage(self, source: BinaryIO) -> StagedBlob:
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            path = self.tmp / f"{os.getpid()}-{secrets.token_hex(8)}.part"
            digest = hashlib.sha256()
            size = 0
            with open(path, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except PermissionError as exc:
            raise CatalogNotWritableError(f"cannot write to catalog folder: {exc}") from exc
        return StagedBlob(path, digest.hexdigest(), size)

    def commit(self, staged: StagedBlob) -> Path:
        """Move a staged file to its content address (idempotent for identical content)."""
        final = self.path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        _fsync_dir(final.parent)
        return final

    def discard(self, staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    def remove(self, sha256: str) -> int:
        """Delete a blob file; returns the bytes freed (0 if it was absent)."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def stored(self) -> Iterator[tuple[str, Path]]:
        """Every file in the blob folder as (name without suffix, path)."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir():
                for file in sorted(sub.iterdir()):
                    yield file.name.removesuffix(SUFFIX), file

    def temporaries(self, stale_only: bool) -> Iterator[Path]:
        """Leftover temporary files; with `stale_only`, only those no live writer owns."""
        if not self.tmp.is_dir():
            return
        for file in sorted(self.tmp.iterdir()):
            if not stale_only or _is_stale(file):
                yield file


def _is_stale(path: Path) -> bool:
    pid_text = path.name.split("-", 1)[0]
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TEMP_SECONDS or not pid_text.isdigit():
        return True
    return not _pid_alive(int(pid_text))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
