"""Writing files so that readers never see a half-written one.

Every file dvkit writes for the user (videos, report files, exports, adapter files, sprites
data) is written through `atomic_output`: to a temporary name in the target folder, fsynced,
then renamed onto its name (DESIGN §8). A full disk (ENOSPC), an I/O error (EIO) or a writer
that fails half-way leaves no partial file and becomes one `DvkitError` line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dvkit.errors import DvkitError


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (`.NAME.PID.part`) for the block to write the whole file
    into; when the block ends without error the file is fsynced and renamed onto `path`.

    On any failure the temporary file is removed and `path` is left as it was; an `OSError`
    (raised by the block, the fsync or the rename) becomes `DvkitError("cannot write PATH:
    REASON")`. Writers that need the format from the file name must be told it explicitly.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield partial
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        raise DvkitError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def write_atomically(path: Path, payload: bytes | str) -> None:
    """Write `payload` (text as UTF-8) to `path` through `atomic_output`."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    with atomic_output(path) as partial:
        partial.write_bytes(data)


def make_folder(folder: Path) -> Path:
    """`folder`, created with its parents if missing; `DvkitError` if that is not possible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DvkitError(f"cannot create folder {folder}: {exc.strerror or exc}") from None
    return folder
