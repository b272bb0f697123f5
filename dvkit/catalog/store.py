"""The catalog: adapters, bases, runs and evaluations in SQLite, weights as content-addressed blobs.

Reads use plain `sqlite3` and return dicts (fast start-up for read-only commands); the
record-returning methods validate them into pydantic models. Writes run in `BEGIN IMMEDIATE`
transactions through sqlite-utils, and a blob is renamed into place inside the transaction that
registers it, so `gc` (which takes the same lock) never sees a blob that is about to be used.
A catalog this process cannot write is opened read-only (see `schema`): reads work, and every
write raises `CatalogNotWritableError` saying why and what was refused.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.catalog.blobs import BlobStore, StagedBlob, hash_file
from dvkit.catalog.home import DB_NAME, default_init_path, find_home
from dvkit.catalog.runs import run_folders
from dvkit.catalog.schema import connect, connect_read_only, ensure_current, unwritable_reason
from dvkit.errors import (
    AdapterFileError,
    CatalogNotWritableError,
    ConflictError,
    DvkitError,
    NotFoundError,
)
from dvkit.names import Ref, parse_ref, validate_name, validate_tag, validate_token

if TYPE_CHECKING:
    from sqlite_utils import Database

    from dvkit.catalog.records import AdapterRecord, BaseModelRecord, EvaluationRecord, RunRecord
    from dvkit.io.adapter_file import AdapterFileInfo

_ADAPTER_COLUMNS = "a.id, a.name, a.version, a.record"


@dataclass
class ImportResult:
    adapter: AdapterRecord
    duplicate: bool


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    owners: dict[str, list[str]] = field(default_factory=dict)
    """The adapters (`cat@1`, `cat@1 step 500`) each missing or corrupt file belongs to."""
    interrupted_runs: list[str] = field(default_factory=list)
    """Run folders that can still be resumed (not a problem)."""
    stale_runs: list[str] = field(default_factory=list)
    """Run folders `gc` removes: no checkpoint, or untouched for a week."""

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.corrupt or self.orphans or self.temporaries or self.stale_runs
        )


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


class Catalog:
    """A dvkit catalog folder. Open one with `Catalog.open()` or create it with `Catalog.init()`."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.db_path = self.home / DB_NAME
        self.blobs = BlobStore(self.home)
        self.read_only_reason = unwritable_reason(self.home, DB_NAME)
        """Why this process cannot write the catalog (None: it can); reads work either way."""
        try:
            if self.read_only_reason is None:
                self._conn = connect(self.db_path)
            else:
                self._conn = connect_read_only(self.db_path, self.read_only_reason)
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.db_path, exc) from None
        self._db: Database | None = None
        try:
            ensure_current(self._conn, self.db_path, self.read_only_reason)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise _unreadable(self.db_path, exc) from None
        except BaseException:
            self._conn.close()
            raise

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, home: str | Path | None = None) -> Catalog:
        """Open the catalog at `home`, or the one found via DVKIT_HOME / the nearest registry/."""
        return cls(find_home(Path(home) if home is not None else None))

    @classmethod
    def init(cls, path: str | Path | None = None) -> tuple[Catalog, bool]:
        """Create a catalog (or open an existing one); returns it and whether it was created."""
        home = default_init_path(Path(path) if path is not None else None).resolve()
        created = not (home / DB_NAME).exists()
        try:
            home.mkdir(parents=True, exist_ok=True)
            reason = unwritable_reason(home, DB_NAME) if created else None
            if reason is not None:
                raise PermissionError(reason)
            catalog = cls(home)
            if created:
                catalog._conn.execute("PRAGMA journal_mode = WAL")
        except PermissionError as exc:
            raise CatalogNotWritableError(f"cannot create a catalog in {home}: {exc}") from None
        except (FileExistsError, NotADirectoryError):
            raise CatalogNotWritableError(
                f"cannot create a catalog in {home}: not a folder"
            ) from None
        return catalog, created

    def close(self) -> None:
        self._conn.close()

    @property
    def read_only(self) -> bool:
        """Whether this process can only read the catalog (see `read_only_reason`)."""
        return self.read_only_reason is not None

    def require_writable(self, action: str) -> None:
        """Raise `CatalogNotWritableError` ("... cannot {action}") if the catalog is read-only."""
        if self.read_only_reason is not None:
            raise CatalogNotWritableError(
                f"catalog {self.home} is not writable here ({self.read_only_reason}); "
                f"cannot {action}"
            )

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- adapters: reading -----------------------------------------------------------------

    def adapter_rows(
        self,
        kind: str | None = None,
        base: str | None = None,
        tags: Sequence[str] = (),
        search: str | None = None,
        all_versions: bool = False,
    ) -> list[dict[str, Any]]:
        """Adapters as plain dicts, newest version per name unless `all_versions`."""
        texts = self.adapter_json(kind, base, tags, search, all_versions)
        return [json.loads(text) for text in texts]

    def adapter_json(
        self,
        kind: str | None = None,
        base: str | None = None,
        tags: Sequence[str] = (),
        search: str | None = None,
        all_versions: bool = False,
    ) -> list[str]:
        """Like `adapter_rows`, as JSON texts built by SQLite (fast for large catalogs)."""
        where, params = ["1"], []
        if kind:
            where.append("a.kind = ?")
            params.append(kind)
        if base:
            where.append("a.base = ?")
            params.append(base)
        for tag in tags:
            where.append("a.id IN (SELECT adapter_id FROM tags WHERE tag = ?)")
            params.append(tag)
        if search:
            where.append(
                "(a.name LIKE ? OR a.description LIKE ? OR json_extract(a.record, '$.token') LIKE ?"
                " OR a.id IN (SELECT adapter_id FROM tags WHERE tag LIKE ?))"
            )
            params += [f"%{search}%"] * 4
        return self._adapter_json(" AND ".join(where), params, all_versions)

    def adapter_row(self, ref: str | Ref) -> dict[str, Any]:
        """One adapter version (`cat` = newest, `cat@3`) as a plain dict."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        adapter_id = self._resolve(ref)["id"]
        (text,) = self._adapter_json("a.id = ?", [adapter_id], all_versions=True)
        row = json.loads(text)
        del row["versions"]
        return row

    def _adapter_json(self, where: str, params: Sequence[Any], all_versions: bool) -> list[str]:
        sql = f"""
            WITH matching AS (
                SELECT {_ADAPTER_COLUMNS},
                       ROW_NUMBER() OVER (PARTITION BY a.name ORDER BY a.version DESC) AS rank,
                       COUNT(*) OVER (PARTITION BY a.name) AS versions
                FROM adapters a WHERE {where}
            )
            SELECT json_set(
                record, '$.id', id, '$.name', name, '$.version', version, '$.versions', versions,
                '$.tags', json((SELECT json_group_array(tag) FROM
                    (SELECT tag FROM tags WHERE adapter_id = matching.id ORDER BY tag)))
            )
            FROM matching {"" if all_versions else "WHERE rank = 1"}
            ORDER BY name, version
        """
        return [row[0] for row in self._conn.execute(sql, params)]

    def list(
        self,
        kind: str | None = None,
        base: str | None = None,
        tags: Sequence[str] = (),
        search: str | None = None,
        all_versions: bool = False,
    ) -> list[AdapterRecord]:
        """Adapters matching the filters, newest version per name unless `all_versions`."""
        from dvkit.catalog.records import AdapterRecord

        rows = self.adapter_rows(kind, base, tags, search, all_versions)
        return [AdapterRecord.model_validate(row) for row in rows]

    def show(self, ref: str | Ref) -> AdapterRecord:
        """The record of one adapter version."""
        from dvkit.catalog.records import AdapterRecord

        return AdapterRecord.model_validate(self.adapter_row(ref))

    def versions(self, name: str) -> list[int]:
        rows = self._conn.execute(
            "SELECT version FROM adapters WHERE name = ? ORDER BY version", (name,)
        )
        return [row[0] for row in rows]

    def read_blob(self, sha256: str) -> bytes:
        """The bytes of a stored weight file, after checking them against their address."""
        import hashlib

        path = self.blobs.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DvkitError(f"weights file {path} is missing (run: dvkit verify)") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DvkitError(f"weights file {path} is corrupt (run: dvkit verify)")
        return data

    def _resolve(self, ref: Ref) -> sqlite3.Row:
        if ref.version is None:
            sql = (
                f"SELECT {_ADAPTER_COLUMNS} FROM adapters a WHERE a.name = ? "
                "ORDER BY a.version DESC"
            )
            row = self._conn.execute(sql, (ref.name,)).fetchone()
        else:
            sql = f"SELECT {_ADAPTER_COLUMNS} FROM adapters a WHERE a.name = ? AND a.version = ?"
            row = self._conn.execute(sql, (ref.name, ref.version)).fetchone()
        if row is not None:
            return row
        known = self.versions(ref.name)
        if not known:
            raise NotFoundError(f"no adapter named {ref.name!r} (see: dvkit list)")
        listed = ", ".join(str(v) for v in known)
        raise NotFoundError(f"{ref.name!r} has no version {ref.version} (versions: {listed})")

    # ---- adapters: writing -----------------------------------------------------------------

    def import_file(
        self,
        path: str | Path,
        name: str | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        token: str | None = None,
    ) -> ImportResult:
        """Register a dvkit adapter file under `name` (default: the file's own).

        A subject keeps the file's token, or takes `token`; renamed, a subject whose token is
        the default `<OLD NAME>` gets `<NAME>`. The same weights again under the same name are
        reported (`duplicate`), not registered twice (a `ConflictError` if `token` differs from
        theirs); under another name they become that name's adapter, sharing the weights file.
        Weights with NaN or infinite values are refused (`AdapterFileError`).
        """
        from safetensors.torch import load_file

        from dvkit.io.adapter_file import check_finite, read_adapter_info

        path = Path(path)
        info = read_adapter_info(path, verify_hash=False)
        check_finite(path, load_file(path), "adapter")
        name = validate_name(name or info.name)
        tags = [validate_tag(tag) for tag in tags]
        if token is not None and info.kind != "subject":
            raise DvkitError(f"{path}: --token applies to subjects, not to a {info.kind}")
        self._check_token_width(path, info)
        existing = self._same_weights(name, info.kind, info.base_fingerprint, info.weights_hash)
        if existing is not None:
            record = self.show(existing)
            if token is not None and validate_token(token) != record.token:
                raise ConflictError(
                    f"{record.ref} holds these weights with token {record.token}; import them "
                    f"under another name for token {token}"
                )
            return ImportResult(record, duplicate=True)
        staged, info = self.stage_adapter_file(path)
        extra = {"token": _imported_token(info, name, token)}
        if description is not None:
            extra["description"] = description
        return self.register(adapter_record(info, staged, name=name, **extra), staged, tags)

    def _check_token_width(self, path: Path, info: AdapterFileInfo) -> None:
        """A subject's vectors must be as wide as its base's text encoder (when the catalog has
        that base: its UNet's `cross_attention_dim` is the text encoder's width)."""
        if info.token_width is None:
            return
        row = self._conn.execute(
            "SELECT name, json_extract(record, '$.config.cross_attention_dim') FROM bases "
            "WHERE fingerprint = ? LIMIT 1",
            (info.base_fingerprint,),
        ).fetchone()
        if row is not None and isinstance(row[1], int) and row[1] != info.token_width:
            raise AdapterFileError(
                f"{path}: token_embedding is {info.token_width} wide, but the text encoder of its "
                f"base {row[0]!r} (dvkit.base_fingerprint {info.base_fingerprint[:12]}) is "
                f"{row[1]} wide"
            )

    def stage_adapter_file(self, path: Path) -> tuple[StagedBlob, AdapterFileInfo]:
        """Copy an adapter file into the blob store's staging area and validate the copy."""
        from dvkit.io.adapter_file import read_adapter_info

        self.require_writable("store adapter weights")
        staged = self.blobs.stage_file(path)
        try:
            return staged, read_adapter_info(staged.path)
        except BaseException:
            self.blobs.discard(staged)
            raise

    def register(
        self,
        record: AdapterRecord,
        staged: StagedBlob,
        tags: Sequence[str] = (),
        run: RunRecord | None = None,
        checkpoints: Mapping[int, tuple[StagedBlob, str]] | None = None,
    ) -> ImportResult:
        """Add `record` as the next version of its name, moving `staged` into the blob store.

        If a version of the same name already holds the same weights (same kind and base), that
        version is returned with `duplicate` set and nothing is registered. Identical weights
        under another name never count: each name gets its own record.

        `run` (its training provenance) and `checkpoints` (step → staged file and weights hash)
        are registered in the same transaction.
        """
        checkpoints = dict(checkpoints or {})
        all_staged = [staged, *(blob for blob, _ in checkpoints.values())]
        try:
            with self._write("register adapters") as db:
                existing = self._same_weights(
                    record.name, record.kind, record.base_fingerprint, record.weights_hash
                )
                if existing is not None:
                    self._discard(all_staged)
                    return ImportResult(self.show(existing), duplicate=True)
                self.check_kind(record.name, record.kind)
                record.version = self._next_version(record.name)
                created = record.created.isoformat()
                self._store_blob(db, staged, created)
                record.id = db["adapters"].insert(self._adapter_columns(record)).last_pk
                for tag in tags:
                    db.execute("INSERT OR IGNORE INTO tags VALUES (?, ?)", (record.id, tag))
                for step, (blob, weights_hash) in sorted(checkpoints.items()):
                    self._store_blob(db, blob, created)
                    db.execute(
                        "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                        (record.id, step, blob.sha256, weights_hash),
                    )
                if run is not None:
                    run.adapter_id = record.id
                    record.run_id = db["runs"].insert(self._run_columns(run)).last_pk
                    run.id = record.run_id
                    db.execute(
                        "UPDATE adapters SET record = ? WHERE id = ?",
                        (record.stored_json(), record.id),
                    )
        except BaseException:
            self._discard(all_staged)
            raise
        record.tags = sorted(set(tags))
        return ImportResult(record, duplicate=False)

    def checkpoint_steps(self, ref: str | Ref) -> dict[int, str]:
        """Kept training checkpoints of one adapter version: step → blob sha256."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        adapter_id = self._resolve(ref)["id"]
        rows = self._conn.execute(
            "SELECT step, blob FROM checkpoints WHERE adapter_id = ? ORDER BY step", (adapter_id,)
        )
        return {step: blob for step, blob in rows}

    def run_row(self, run_id: int) -> dict[str, Any]:
        """A training run's record as a plain dict."""
        row = self._conn.execute("SELECT id, record FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no training run {run_id}")
        return {**json.loads(row["record"]), "id": row["id"]}

    def _store_blob(self, db: Database, staged: StagedBlob, created: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, created) VALUES (?, ?, ?)",
            (staged.sha256, staged.size, created),
        )
        self.blobs.commit(staged)

    def _discard(self, staged: Sequence[StagedBlob]) -> None:
        for blob in staged:
            self.blobs.discard(blob)

    def rm(self, ref: str | Ref, all_versions: bool = False) -> list[str]:
        """Remove one version (`cat` = newest, `cat@2`) or every version of a name."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        row = self._resolve(ref)
        with self._write("remove adapters") as db:
            if all_versions:
                rows = db.execute(
                    "SELECT id, version, blob FROM adapters WHERE name = ? ORDER BY version",
                    (ref.name,),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT id, version, blob FROM adapters WHERE id = ?", (row["id"],)
                ).fetchall()
            blobs = {blob for _, _, blob in rows}
            for adapter_id, _, _ in rows:
                blobs.update(self._checkpoint_blobs(adapter_id))
                db.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            blobs = sorted(blobs)
            unreferenced = [sha for sha in blobs if not self._blob_in_use(sha)]
            for sha in unreferenced:
                db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
        self._remove_blob_files(unreferenced)
        return [f"{ref.name}@{version}" for _, version, _ in rows]

    def tag(self, ref: str | Ref, add: Sequence[str] = (), remove: Sequence[str] = ()) -> list[str]:
        """Add and remove tags of one adapter version; returns its tags afterwards."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        add = [validate_tag(tag) for tag in add]
        remove = [validate_tag(tag) for tag in remove]
        adapter_id = self._resolve(ref)["id"]
        with self._write("change tags") as db:
            for tag in add:
                db.execute("INSERT OR IGNORE INTO tags VALUES (?, ?)", (adapter_id, tag))
            for tag in remove:
                db.execute("DELETE FROM tags WHERE adapter_id = ? AND tag = ?", (adapter_id, tag))
        rows = self._conn.execute(
            "SELECT tag FROM tags WHERE adapter_id = ? ORDER BY tag", (adapter_id,)
        )
        return [row[0] for row in rows]

    def _same_weights(
        self, name: str, kind: str, base_fingerprint: str, weights_hash: str
    ) -> Ref | None:
        """The first version of `name` holding these weights of this kind and base, if any."""
        row = self._conn.execute(
            "SELECT name, version FROM adapters WHERE name = ? AND weights_hash = ? AND kind = ? "
            "AND base_fingerprint = ? ORDER BY version LIMIT 1",
            (name, weights_hash, kind, base_fingerprint),
        ).fetchone()
        return Ref(row[0], row[1]) if row else None

    def check_kind(self, name: str, kind: str) -> None:
        """Refuse a name already used by an adapter of the other kind."""
        row = self._conn.execute(
            "SELECT kind FROM adapters WHERE name = ? LIMIT 1", (name,)
        ).fetchone()
        if row and row[0] != kind:
            raise ConflictError(
                f"{name!r} is already a {row[0]} adapter; "
                f"choose another name for this {kind} adapter"
            )

    def _next_version(self, name: str) -> int:
        row = self._conn.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM adapters WHERE name = ?", (name,)
        ).fetchone()
        return row[0]

    @staticmethod
    def _run_columns(run: RunRecord) -> dict[str, Any]:
        return {
            "adapter_id": run.adapter_id,
            "kind": run.kind,
            "status": run.status,
            "device": run.device,
            "created": run.created.isoformat(),
            "record": run.stored_json(),
        }

    @staticmethod
    def _adapter_columns(record: AdapterRecord) -> dict[str, Any]:
        return {
            "name": record.name,
            "version": record.version,
            "kind": record.kind,
            "method": record.method,
            "base": record.base,
            "base_fingerprint": record.base_fingerprint,
            "blob": record.blob,
            "weights_hash": record.weights_hash,
            "description": record.description,
            "created": record.created.isoformat(),
            "record": record.stored_json(),
        }

    # ---- generations and evaluations ----

    def add_evaluation(self, record: EvaluationRecord) -> int:
        """Record a generated video (and its metrics, if scored); returns its id."""
        with self._write("record generated videos") as db:
            record.id = (
                db["evaluations"]
                .insert(
                    {
                        "subject_id": record.subject_id,
                        "motion_id": record.motion_id,
                        "prompt": record.prompt,
                        "seed": record.seed,
                        "cell": record.cell,
                        "created": record.created.isoformat(),
                        "record": record.stored_json(),
                    }
                )
                .last_pk
            )
        return record.id

    def evaluation_rows(self, cells: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Recorded generations, all or those of the given grid cells."""
        if cells is None:
            rows = self._conn.execute("SELECT id, record FROM evaluations ORDER BY id")
        else:
            marks = ",".join("?" * len(cells))
            rows = self._conn.execute(
                f"SELECT id, record FROM evaluations WHERE cell IN ({marks}) ORDER BY id",
                list(cells),
            )
        return [{**json.loads(row["record"]), "id": row["id"]} for row in rows]

    def generations(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Videos made by `compose` (not bench cells), newest first: each record with its
        adapters, prompt, seed, sampler settings and files; at most `limit` (None: all)."""
        rows = self._conn.execute(
            "SELECT id, record FROM evaluations WHERE cell IS NULL ORDER BY id DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [{**json.loads(row["record"]), "id": row["id"]} for row in rows]

    # ---- bases -----------------------------------------------------------------------------

    def add_base(self, record: BaseModelRecord) -> None:
        """Register a base model; a name already used for other weights is refused."""
        validate_name(record.name, "base name")
        with self._write("register bases") as db:
            row = db.execute(
                "SELECT fingerprint FROM bases WHERE name = ?", (record.name,)
            ).fetchone()
            if row and row[0] != record.fingerprint:
                raise ConflictError(
                    f"base {record.name!r} already exists with other weights "
                    f"(fingerprint {row[0][:12]}); choose another name"
                )
            if row is None:
                db.execute(
                    "INSERT INTO bases (name, source, fingerprint, created, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.source,
                        record.fingerprint,
                        record.created.isoformat(),
                        record.stored_json(),
                    ),
                )

    def base_rows(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT record FROM bases ORDER BY name").fetchall()
        return [json.loads(row[0]) for row in rows]

    def base_row(self, name: str) -> dict[str, Any]:
        validate_name(name, "base name")
        row = self._conn.execute("SELECT record FROM bases WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no base named {name!r} (see: dvkit base list)")
        return json.loads(row[0])

    def base(self, name: str) -> BaseModelRecord:
        from dvkit.catalog.records import BaseModelRecord

        return BaseModelRecord.model_validate(self.base_row(name))

    def default_base(self) -> str | None:
        """The base training and composing use when none is named (`dvkit base default`)."""
        row = self._conn.execute("SELECT value FROM settings WHERE key = 'default_base'").fetchone()
        return None if row is None else row[0]

    def set_default_base(self, name: str) -> None:
        """Make `name` the default base (checked to be known by `dvkit.bases.set_default_base`:
        a built-in base is registered only on first use)."""
        validate_name(name, "base name")
        with self._write("set the default base") as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('default_base', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (name,),
            )

    # ---- integrity -------------------------------------------------------------------------

    def verify(self, on_blob: Callable[[str], None] | None = None) -> VerifyReport:
        """Re-hash every blob; report missing, corrupt (with the adapters they belong to),
        orphan and leftover temporary files, and training run folders (resumable or stale)."""
        report = VerifyReport()
        referenced = self._referenced_blobs()
        rows = self._conn.execute("SELECT sha256 FROM blobs ORDER BY sha256").fetchall()
        for (sha,) in rows:
            path = self.blobs.path(sha)
            if not path.is_file():
                report.missing.append(sha)
            elif hash_file(path) != sha:
                report.corrupt.append(sha)
            report.checked += 1
            if on_blob:
                on_blob(sha)
        known = {sha for (sha,) in rows}
        report.orphans = [sha for sha, _ in self.blobs.stored() if sha not in known]
        report.orphans += sorted(known - referenced)
        report.temporaries = [p.name for p in self.blobs.temporaries(stale_only=True)]
        report.owners = self._owners([*report.missing, *report.corrupt])
        for run in run_folders(self.home):
            (report.stale_runs if run.stale else report.interrupted_runs).append(run.describe())
        return report

    def _owners(self, shas: Sequence[str]) -> dict[str, list[str]]:
        """The adapter versions (and kept checkpoints) whose weights are in each blob."""
        owners: dict[str, list[str]] = {sha: [] for sha in shas}
        query = (
            "SELECT name || '@' || version, blob FROM adapters UNION ALL "
            "SELECT a.name || '@' || a.version || ' step ' || c.step, c.blob "
            "FROM checkpoints c JOIN adapters a ON a.id = c.adapter_id"
        )
        for ref, sha in self._conn.execute(query):
            if sha in owners:
                owners[sha].append(ref)
        return owners

    def gc(self) -> GcReport:
        """Remove unreferenced blobs, blob files without a row, stale temporary files and stale
        training run folders (see `dvkit.catalog.runs`)."""
        report = GcReport()
        with self._write("delete files") as db:
            unreferenced = sorted(self._blob_shas() - self._referenced_blobs())
            for sha in unreferenced:
                db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
            known = self._blob_shas()
            for sha, path in self.blobs.stored():
                if sha not in known:
                    report.freed_bytes += _unlink(path)
                    report.removed.append(f"blobs/{path.parent.name}/{path.name}")
            for path in self.blobs.temporaries(stale_only=True):
                report.freed_bytes += _unlink(path)
                report.removed.append(f"tmp/{path.name}")
        for run in run_folders(self.home):
            if run.stale:
                report.freed_bytes += sum(
                    p.stat().st_size for p in run.path.rglob("*") if p.is_file()
                )
                shutil.rmtree(run.path, ignore_errors=True)
                report.removed.append(f"runs/{run.path.name}")
        return report

    def _blob_shas(self) -> set[str]:
        return {sha for (sha,) in self._conn.execute("SELECT sha256 FROM blobs")}

    def _referenced_blobs(self) -> set[str]:
        query = "SELECT blob FROM adapters UNION SELECT blob FROM checkpoints"
        return {sha for (sha,) in self._conn.execute(query)}

    def _blob_in_use(self, sha: str) -> bool:
        query = (
            "SELECT 1 FROM adapters WHERE blob = ? UNION ALL "
            "SELECT 1 FROM checkpoints WHERE blob = ? LIMIT 1"
        )
        return self._conn.execute(query, (sha, sha)).fetchone() is not None

    def _checkpoint_blobs(self, adapter_id: int) -> list[str]:
        query = "SELECT blob FROM checkpoints WHERE adapter_id = ?"
        return [sha for (sha,) in self._conn.execute(query, (adapter_id,))]

    def _remove_blob_files(self, shas: Sequence[str]) -> None:
        """Delete blob files, re-checking under the write lock that no row took them meanwhile."""
        if not shas:
            return
        with self._write("delete files"):
            known = self._blob_shas()
            for sha in shas:
                if sha not in known:
                    self.blobs.remove(sha)

    # ---- transactions ----------------------------------------------------------------------

    @contextmanager
    def _write(self, action: str) -> Iterator[Database]:
        """A write transaction (`BEGIN IMMEDIATE`); `action` names it in a read-only refusal."""
        self.require_writable(action)
        if self._db is None:
            from sqlite_utils import Database

            self._db = Database(self._conn)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _operational_error(self.home, exc) from None
        try:
            yield self._db
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise _operational_error(self.home, exc) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def adapter_record(info: AdapterFileInfo, staged: StagedBlob, **fields: Any) -> AdapterRecord:
    """The catalog record of a staged, validated adapter file; `fields` override or add."""
    from dvkit.catalog.records import AdapterRecord

    values = {
        "kind": info.kind,
        "method": info.method,
        "rank": info.rank,
        "alpha": info.alpha,
        "name": info.name,
        "base": info.base,
        "base_fingerprint": info.base_fingerprint,
        "architecture": info.architecture,
        "token": info.token,
        "initializer": info.initializer,
        "num_vectors": info.num_vectors,
        "hidden_ratio": info.hidden_ratio,
        "placement": info.placement,
        "training": info.training,
        "blob": staged.sha256,
        "size": staged.size,
        "weights_hash": info.weights_hash,
        "params": info.params,
        "description": info.description,
    }
    return AdapterRecord(**{**values, **fields})


def _imported_token(info: AdapterFileInfo, name: str, token: str | None) -> str | None:
    """The token an imported subject is registered with (see `Catalog.import_file`)."""
    if token is not None:
        return validate_token(token)
    if info.token == f"<{info.name}>":
        return f"<{name}>"
    return info.token


def _unreadable(db_path: Path, exc: sqlite3.DatabaseError) -> DvkitError:
    return DvkitError(f"catalog {db_path.parent}: {db_path.name} cannot be read ({exc})")


def _operational_error(home: Path, exc: sqlite3.OperationalError) -> DvkitError:
    text = str(exc)
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return CatalogNotWritableError(f"catalog {home} is not writable ({text})")
    if "locked" in text or "busy" in text:
        return DvkitError(f"catalog {home} is busy: another dvkit process holds it ({text})")
    return DvkitError(f"catalog {home}: database error ({text})")


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
