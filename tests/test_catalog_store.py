import sqlite3

import pytest

from dvkit.catalog import Catalog
from dvkit.catalog.records import BaseModelRecord
from dvkit.catalog.schema import SCHEMA_VERSION
from dvkit.errors import (
    AdapterFileError,
    CatalogNotFoundError,
    ConflictError,
    InvalidNameError,
    NotFoundError,
    SchemaTooNewError,
)


def test_discovery_explicit_env_and_upwards(home, tmp_path, monkeypatch) -> None:
    assert Catalog.open(home).home == home.resolve()
    monkeypatch.setenv("DVKIT_HOME", str(home))
    assert Catalog.open().home == home.resolve()
    monkeypatch.delenv("DVKIT_HOME")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Catalog.open().home == home.resolve()  # tmp_path/registry found from tmp_path/a/b
    with pytest.raises(CatalogNotFoundError, match="dvkit init"):
        Catalog.open(tmp_path / "elsewhere")


def test_no_catalog_anywhere(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogNotFoundError, match="dvkit init"):
        Catalog.open()


def test_migrations_from_an_empty_database(tmp_path) -> None:
    folder = tmp_path / "cat"
    folder.mkdir()
    sqlite3.connect(folder / "catalog.db").close()  # an empty SQLite file
    with Catalog.open(folder) as catalog:
        tables = {row[0] for row in catalog._conn.execute("SELECT name FROM sqlite_master")}
        version = catalog._conn.execute("PRAGMA user_version").fetchone()[0]
        applied = catalog._conn.execute("SELECT name FROM _sqlite_migrations").fetchall()
    assert {"bases", "blobs", "adapters", "tags", "runs", "evaluations"} <= tables
    assert version == SCHEMA_VERSION == len(applied)


def test_init_is_idempotent_and_uses_wal(tmp_path) -> None:
    first, created = Catalog.init(tmp_path / "r")
    mode = first._conn.execute("PRAGMA journal_mode").fetchone()[0]
    first.close()
    second, created_again = Catalog.init(tmp_path / "r")
    second.close()
    assert (created, created_again, mode) == (True, False, "wal")


def test_newer_schema_refused(home) -> None:
    conn = sqlite3.connect(home / "catalog.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade dvkit"):
        Catalog.open(home)


def test_import_versions_and_duplicates(catalog, make_adapter) -> None:
    first = catalog.import_file(make_adapter("cat", seed=1))
    second = catalog.import_file(make_adapter("cat", seed=2))
    again = catalog.import_file(make_adapter("cat", seed=1))
    assert (first.adapter.ref, second.adapter.ref) == ("cat@1", "cat@2")
    assert again.duplicate and again.adapter.ref == "cat@1"
    assert catalog.versions("cat") == [1, 2]
    assert catalog.show("cat").version == 2
    assert catalog.show("cat@1").weights_hash == first.adapter.weights_hash
    assert len(list(catalog.blobs.stored())) == 2


def test_import_renames_and_kind_conflict(catalog, make_adapter) -> None:
    catalog.import_file(make_adapter("cat", "subject", seed=1))
    renamed = catalog.import_file(make_adapter("cat", "subject", seed=2), name="kitty")
    assert renamed.adapter.ref == "kitty@1"
    with pytest.raises(ConflictError, match="already a subject adapter"):
        catalog.import_file(make_adapter("cat", "motion", seed=3))
    with pytest.raises(InvalidNameError):
        catalog.import_file(make_adapter("cat", seed=4), name="Kitty")
    assert [row["name"] for row in catalog.adapter_rows()] == ["cat", "kitty"]


def test_failed_import_leaves_catalog_unchanged(catalog, make_adapter, tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(AdapterFileError):
        catalog.import_file(bad)
    path = make_adapter("cat")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="corrupt"):
        catalog.import_file(path)
    assert catalog.adapter_rows() == []
    assert list(catalog.blobs.stored()) == [] and list(catalog.blobs.temporaries(False)) == []


def test_filters(catalog, make_adapter) -> None:
    catalog.import_file(make_adapter("cat", "subject", description="grey cat"), tags=["pet"])
    catalog.import_file(make_adapter("surfing", "motion", base="other"), tags=["sport", "water"])
    catalog.import_file(make_adapter("dog", "subject"), tags=["pet"])
    names = lambda rows: [row["name"] for row in rows]  # noqa: E731
    assert names(catalog.adapter_rows(kind="motion")) == ["surfing"]
    assert names(catalog.adapter_rows(base="tiny")) == ["cat", "dog"]
    assert names(catalog.adapter_rows(tags=["pet"])) == ["cat", "dog"]
    assert names(catalog.adapter_rows(tags=["sport", "water"])) == ["surfing"]
    assert names(catalog.adapter_rows(tags=["sport", "pet"])) == []
    assert names(catalog.adapter_rows(search="grey")) == ["cat"]
    assert names(catalog.adapter_rows(search="wat")) == ["surfing"]
    assert [r.ref for r in catalog.list(kind="subject")] == ["cat@1", "dog@1"]


def test_newest_matching_version_is_listed(catalog, make_adapter) -> None:
    catalog.import_file(make_adapter("cat"), tags=["good"])
    catalog.import_file(make_adapter("cat"))
    rows = catalog.adapter_rows()
    assert [(r["name"], r["version"], r["versions"]) for r in rows] == [("cat", 2, 2)]
    assert [r["version"] for r in catalog.adapter_rows(tags=["good"])] == [1]
    assert [r["version"] for r in catalog.adapter_rows(all_versions=True)] == [1, 2]


def test_rm_deletes_blob_only_when_unreferenced(catalog, make_adapter) -> None:
    one = catalog.import_file(make_adapter("cat", seed=1)).adapter
    # the same weights under a different base are a different adapter sharing one blob
    two = catalog.import_file(make_adapter("cat", seed=1, base="other")).adapter
    catalog.import_file(make_adapter("cat", seed=2))
    assert one.blob != two.blob  # headers differ (base), so the files differ
    assert catalog.rm("cat@1") == ["cat@1"]
    assert not catalog.blobs.path(one.blob).exists()
    assert catalog.rm("cat", all_versions=True) == ["cat@2", "cat@3"]
    assert list(catalog.blobs.stored()) == []
    with pytest.raises(NotFoundError, match="no adapter named 'cat'"):
        catalog.rm("cat")


def test_shared_blob_survives_rm_of_one_user(catalog, make_adapter) -> None:
    path = make_adapter("cat", seed=1)
    kept = catalog.import_file(path).adapter
    from dvkit.catalog.blobs import StagedBlob

    staged = catalog.blobs.stage_file(path)
    clone = kept.model_copy(update={"name": "cat-copy", "weights_hash": "0xother", "id": None})
    catalog.register(clone, staged)
    assert isinstance(staged, StagedBlob)
    catalog.rm("cat")
    assert catalog.blobs.path(kept.blob).exists()
    assert catalog.verify().ok


def test_unknown_version(catalog, make_adapter) -> None:
    catalog.import_file(make_adapter("cat"))
    with pytest.raises(NotFoundError, match=r"no version 4 \(versions: 1\)"):
        catalog.show("cat@4")


def test_tags(catalog, make_adapter) -> None:
    catalog.import_file(make_adapter("cat"))
    assert catalog.tag("cat", add=["b", "a"]) == ["a", "b"]
    assert catalog.tag("cat@1", remove=["a"]) == ["b"]
    assert catalog.show("cat").tags == ["b"]
    with pytest.raises(InvalidNameError):
        catalog.tag("cat", add=["Bad Tag"])


def test_verify_and_gc(catalog, make_adapter) -> None:
    a = catalog.import_file(make_adapter("cat", seed=1)).adapter
    b = catalog.import_file(make_adapter("dog", seed=2)).adapter
    assert catalog.verify().ok
    catalog.blobs.path(a.blob).write_bytes(b"damaged")
    catalog.blobs.path(b.blob).unlink()
    orphan = catalog.blobs.path("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    stale = catalog.blobs.tmp / "999999999-deadbeef.part"
    stale.write_bytes(b"partial")
    live = catalog.blobs.tmp / f"{__import__('os').getpid()}-cafe.part"
    live.write_bytes(b"in progress")
    report = catalog.verify()
    assert (report.checked, report.corrupt, report.missing) == (2, [a.blob], [b.blob])
    assert report.orphans == ["ab" + "0" * 62]
    assert report.temporaries == [stale.name] and not report.ok
    gc = catalog.gc()
    assert sorted(gc.removed) == sorted([f"blobs/ab/{orphan.name}", f"tmp/{stale.name}"])
    assert gc.freed_bytes == 1 + len(b"partial")
    assert live.exists()


def test_read_blob_checks_hash(catalog, make_adapter) -> None:
    record = catalog.import_file(make_adapter("cat")).adapter
    assert len(catalog.read_blob(record.blob)) == record.size
    catalog.blobs.path(record.blob).write_bytes(b"x")
    with pytest.raises(Exception, match="corrupt"):
        catalog.read_blob(record.blob)


def test_bases(catalog) -> None:
    record = BaseModelRecord(
        name="ms",
        source="ali-vilab/text-to-video-ms-1.7b",
        fingerprint="f" * 64,
        architecture="modelscope-t2v",
    )
    catalog.add_base(record)
    catalog.add_base(record)  # same weights again: nothing changes
    assert catalog.base("ms").source == record.source
    assert [row["name"] for row in catalog.base_rows()] == ["ms"]
    with pytest.raises(ConflictError, match="other weights"):
        catalog.add_base(record.model_copy(update={"fingerprint": "0" * 64}))
    with pytest.raises(NotFoundError, match="dvkit base list"):
        catalog.base("nope")
