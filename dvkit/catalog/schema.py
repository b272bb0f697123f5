"""Opening the catalog database and checking its schema version without heavy imports.

Read-only commands use the stdlib `sqlite3` module only. The schema version is kept in
`PRAGMA user_version`, which the migrations (sqlite-utils) advance; only when it is behind
do we import the migration machinery.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dvkit.errors import CatalogNotWritableError, SchemaTooNewError

SCHEMA_VERSION = 3
"""Number of migrations this dvkit knows; equal to the `user_version` of an up-to-date catalog."""

BUSY_TIMEOUT_MS = 60_000


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the catalog database with the settings every connection needs."""
    try:
        conn = sqlite3.connect(
            db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.OperationalError as exc:
        raise CatalogNotWritableError(
            f"catalog {db_path.parent} is not writable or not readable ({exc})"
        ) from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def ensure_current(conn: sqlite3.Connection, db_path: Path) -> None:
    """Refuse a catalog from a newer dvkit; bring an older one up to date."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"catalog {db_path} has schema version {version}, but this dvkit knows only up to "
            f"{SCHEMA_VERSION}; upgrade dvkit to use it"
        )
    if version < SCHEMA_VERSION:
        from dvkit.catalog.migrations import migrate

        migrate(conn, db_path)
