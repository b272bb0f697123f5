"""Schema migrations of the catalog, applied in order with sqlite-utils' `Migrations`.

Append new migrations at the end (never edit an applied one) and raise
`schema.SCHEMA_VERSION` to the new count.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from dvkit.catalog.schema import SCHEMA_VERSION, schema_version
from dvkit.errors import CatalogNotWritableError

migrations = Migrations("dvkit")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """CREATE TABLE bases (
            name TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            created TEXT NOT NULL,
            record TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            created TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE adapters (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('subject', 'motion')),
            base TEXT NOT NULL,
            base_fingerprint TEXT NOT NULL,
            blob TEXT NOT NULL REFERENCES blobs(sha256),
            weights_hash TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            record TEXT NOT NULL,
            UNIQUE (name, version)
        )"""
    )
    db.execute("CREATE INDEX adapters_kind ON adapters(kind)")
    db.execute("CREATE INDEX adapters_base ON adapters(base)")
    db.execute("CREATE INDEX adapters_blob ON adapters(blob)")
    db.execute("CREATE INDEX adapters_weights_hash ON adapters(weights_hash)")
    db.execute(
        """CREATE TABLE tags (
            adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
            tag TEXT NOT NULL,
            PRIMARY KEY (adapter_id, tag)
        )"""
    )
    db.execute("CREATE INDEX tags_tag ON tags(tag)")
    db.execute(
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            adapter_id INTEGER REFERENCES adapters(id) ON DELETE SET NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            device TEXT NOT NULL,
            created TEXT NOT NULL,
            record TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX runs_adapter ON runs(adapter_id)")
    db.execute(
        """CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            subject_id INTEGER REFERENCES adapters(id) ON DELETE CASCADE,
            motion_id INTEGER REFERENCES adapters(id) ON DELETE CASCADE,
            prompt TEXT NOT NULL,
            seed INTEGER NOT NULL,
            created TEXT NOT NULL,
            record TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX evaluations_subject ON evaluations(subject_id)")
    db.execute("CREATE INDEX evaluations_motion ON evaluations(motion_id)")


@migrations()
def m002_checkpoints(db: Database) -> None:
    """Intermediate adapter weights kept from training, selectable by step."""
    db.execute(
        """CREATE TABLE checkpoints (
            adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            blob TEXT NOT NULL REFERENCES blobs(sha256),
            weights_hash TEXT NOT NULL,
            PRIMARY KEY (adapter_id, step)
        )"""
    )
    db.execute("CREATE INDEX checkpoints_blob ON checkpoints(blob)")


@migrations()
def m003_evaluation_cells(db: Database) -> None:
    """The grid cell a scored video belongs to, so a re-run can skip finished cells."""
    db.execute("ALTER TABLE evaluations ADD COLUMN cell TEXT")
    db.execute("CREATE INDEX evaluations_cell ON evaluations(cell)")


@migrations()
def m004_settings(db: Database) -> None:
    """Catalog-wide settings by key (e.g. `default_base`)."""
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m005_adapter_method(db: Database) -> None:
    """How an adapter acts on the base: `dreamvideo` (its adapters) or `lora`."""
    db.execute("ALTER TABLE adapters ADD COLUMN method TEXT NOT NULL DEFAULT 'dreamvideo'")
    db.execute("CREATE INDEX adapters_method ON adapters(method)")


def migrate(conn: sqlite3.Connection, db_path: Path) -> None:
    """Apply pending migrations under the database's write lock, so concurrent openers agree."""
    db = Database(conn)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise CatalogNotWritableError(
            f"catalog {db_path} needs a schema upgrade but cannot be written: {exc}"
        ) from exc
    try:
        if schema_version(conn) < SCHEMA_VERSION:
            migrations.apply(db)
            applied = len(migrations.applied(db))
            conn.execute(f"PRAGMA user_version = {applied}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
