"""Opening the catalog database and checking its schema version without heavy imports.

Read-only commands use the stdlib `sqlite3` module only. The schema version is kept in
`PRAGMA user_version`, which the migrations (sqlite-utils) advance; only when it is behind
do we import the migration machinery.

A catalog this process cannot write (a read-only mount, a finished project, another user's
folder) is opened read-only, so that reading commands still work. SQLite reads a WAL database
read-only (`mode=ro`) when its `-shm` and `-wal` files exist or can be created; when they can
be neither opened nor created, only an `immutable=1` open reads it, which ignores the WAL, so
dvkit uses it only when no WAL with changes is there (https://www.sqlite.org/wal.html,
"Read-Only Databases"; https://www.sqlite.org/uri.html).
"""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
from pathlib import Path

from dvkit.errors import CatalogNotWritableError, SchemaTooNewError

SCHEMA_VERSION = 5
"""Number of migrations this dvkit knows; equal to the `user_version` of an up-to-date catalog."""

BUSY_TIMEOUT_MS = 60_000


def unwritable_reason(home: Path, db_name: str) -> str | None:
    """Why this process cannot write the catalog in `home`, or None when it can.

    Found by trying (an unnamed temporary file in the folder, the database opened for writing,
    nothing written), not from permission bits: root, read-only mounts and immutable files are
    judged as the writes would be.
    """
    try:
        _create_unnamed_file(home)
    except OSError as exc:
        return f"its folder takes no new files: {exc.strerror or exc}"
    try:
        with open(home / db_name, "r+b"):
            pass
    except FileNotFoundError:
        pass  # a new catalog: SQLite creates the file in the writable folder
    except OSError as exc:
        return f"{db_name} cannot be written: {exc.strerror or exc}"
    return None


def _create_unnamed_file(folder: Path) -> None:
    """Create a file in `folder` and drop it: one that never has a name (Linux `O_TMPFILE`),
    else a named one removed at once. Raises the `OSError` of a folder that refuses files."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            os.close(os.open(folder, flag | os.O_WRONLY, 0o600))
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise  # those three: the file system cannot make unnamed files
    path = folder / f".dvkit-probe-{os.getpid()}-{secrets.token_hex(4)}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    path.unlink()


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the catalog database for reading and writing, with the settings every write needs."""
    try:
        conn = _open(str(db_path), uri=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.OperationalError as exc:
        raise CatalogNotWritableError(
            f"catalog {db_path.parent} is not writable or not readable ({exc})"
        ) from exc
    return conn


def connect_read_only(db_path: Path, reason: str) -> sqlite3.Connection:
    """Open the catalog database of a folder this process cannot write (`reason`: why not).

    `mode=ro` first: it sees every committed change, the WAL's included, when the `-shm` and
    `-wal` files exist. If SQLite cannot open them, `immutable=1` reads `catalog.db` alone, which
    is complete only when no WAL holds changes; otherwise `CatalogNotWritableError` says so.
    """
    uri = db_path.absolute().as_uri()
    conn = _open(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA user_version").fetchone()  # the first read opens the WAL index
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if not _cannot_open_wal_index(exc):
            raise
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise CatalogNotWritableError(
            f"catalog {db_path.parent} is not writable here ({reason}) and its {wal.name} holds "
            "changes that only a process able to write the folder can read; run any dvkit "
            "command on it once with write access to fold them into catalog.db"
        )
    return _open(f"{uri}?mode=ro&immutable=1", uri=True)


def _open(target: str, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
        uri=uri,
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _cannot_open_wal_index(exc: sqlite3.OperationalError) -> bool:
    """Whether a `mode=ro` read failed because the `-shm`/`-wal` files cannot be opened."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name:
        return name == "SQLITE_CANTOPEN" or name.startswith("SQLITE_READONLY")
    text = str(exc)
    return "unable to open" in text or "readonly" in text


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def ensure_current(conn: sqlite3.Connection, db_path: Path, read_only: str | None = None) -> None:
    """Refuse a catalog from a newer dvkit; bring an older one up to date.

    `read_only`, the reason this process cannot write the catalog, turns the upgrade of an older
    catalog into a `CatalogNotWritableError`.
    """
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"catalog {db_path} has schema version {version}, but this dvkit knows only up to "
            f"{SCHEMA_VERSION}; upgrade dvkit to use it"
        )
    if version < SCHEMA_VERSION:
        if read_only is not None:
            raise CatalogNotWritableError(
                f"catalog {db_path.parent} has schema version {version} and needs an upgrade to "
                f"{SCHEMA_VERSION}, but it is not writable here ({read_only}); run any dvkit "
                "command on it once with write access"
            )
        from dvkit.catalog.migrations import migrate

        migrate(conn, db_path)
