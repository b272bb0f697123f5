"""Catalogs this process cannot write: reading commands work, writing ones refuse in one line.

Two kinds of test. In-process ones replace the writability probe (`unwritable_reason`), so they
prove what dvkit does once it has decided a catalog is read-only (the SQLite connection really is
`mode=ro`: a write through it fails), not that the probe decides right. The subprocess ones make
the condition real: a copy of the catalog with its folders 0555 and files 0444, read by a process
without the capabilities that let root ignore permission bits (`setpriv`), so the probe, SQLite's
read-only open and its `immutable=1` fallback all meet a folder that refuses new files.
"""

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_catalog_robustness import _read_only_copy, _without_override

from dvkit.catalog import Catalog, schema, store
from dvkit.catalog.records import BaseModelRecord

REASON = "its folder takes no new files: Permission denied (simulated)"


@pytest.fixture
def filled(home: Path, make_adapter) -> Path:
    """A catalog with a subject `cat` (tagged), a motion `surf` and a base `tiny`."""
    with Catalog.open(home) as catalog:
        catalog.import_file(make_adapter("cat", "subject", seed=0), tags=["pet"])
        catalog.import_file(make_adapter("surf", "motion"))
        catalog.add_base(
            BaseModelRecord(name="tiny", source="builtin:tiny", fingerprint="tiny-fingerprint",
                            architecture="dvkit-tiny", builtin=True)
        )  # fmt: skip
    return home


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every catalog opened from now on is judged unwritable."""
    monkeypatch.setattr(store, "unwritable_reason", lambda home, db_name: REASON)


def _snapshot(home: Path) -> dict[str, str]:
    """Every file of the catalog folder with its sha256 (SQLite's -wal/-shm aside)."""
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.rglob("*"))
        if path.is_file() and not path.name.endswith(("-wal", "-shm"))
    }


def test_reading_commands_work(cli, filled, read_only, tmp_path) -> None:
    with Catalog.open(filled) as catalog:
        assert catalog.read_only and catalog.read_only_reason == REASON
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            catalog._conn.execute("DELETE FROM adapters")  # the connection itself is read-only
        blob = catalog.blobs.path(catalog.show("cat").blob).read_bytes()
    before = _snapshot(filled)
    code, out, err = cli("--home", filled, "list", "--json")
    assert code == 0 and [row["name"] for row in json.loads(out)] == ["cat", "surf"], err
    code, out, _ = cli("--home", filled, "show", "cat", "--json")
    assert code == 0 and (json.loads(out)["token"], json.loads(out)["tags"]) == ("<cat>", ["pet"])
    code, out, _ = cli("--home", filled, "verify")
    assert code == 0 and out.strip() == "checked 2 weights files: ok"
    assert cli("--home", filled, "where")[1].strip() == str(filled)
    code, out, _ = cli("--home", filled, "base", "list", "--json")
    assert code == 0 and [row["name"] for row in json.loads(out)] == [
        "tiny",
        "tiny-animatediff",
        "tiny-wan",
        "tiny-wan22",
        "sprites",
        "sprites-wan",
    ]
    code, out, _ = cli("--home", filled, "base", "show", "tiny", "--json")
    assert code == 0 and json.loads(out)["fingerprint"] == "tiny-fingerprint"
    exported = tmp_path / "out" / "cat.safetensors"
    exported.parent.mkdir()
    code, out, err = cli("--home", filled, "export", "cat", "--out", exported)
    assert code == 0 and exported.read_bytes() == blob, err
    code, out, err = cli("--home", filled, "bench", "--report", "--out", tmp_path / "report")
    assert (
        code == 1
        and out == ""
        and err == ("error: no stored cells of this grid: run dvkit bench without --report first\n")
    )
    code, out, _ = cli("init", filled)
    assert code == 0 and out.strip() == f"catalog ready at {filled} (read-only here: {REASON})"
    assert _snapshot(filled) == before


def test_writing_commands_refuse_in_one_line(cli, filled, read_only, make_adapter, tmp_path):
    new = make_adapter("dog", "subject")
    images = tmp_path / "images"
    images.mkdir()
    before = _snapshot(filled)
    for args, action in [
        (["import", new], "import adapters"),
        (["rm", "cat"], "remove adapters"),
        (["tag", "cat", "best"], "change tags"),
        (["gc"], "delete files"),
        (["base", "add", "ms", str(tmp_path)], "register bases"),
        (["add-subject", "dog", "--images", images, "--preset", "quick"], "register adapters"),
        (["add-motion", "wave", "--videos", images, "--preset", "quick"], "register adapters"),
        (["compose", "--subject", "cat", "--out", tmp_path / "x.gif"], "record generated videos"),
        (["bench"], "store the grid's videos and scores"),
        (["bench", "--report"], "write the report into it (--out FOLDER writes it elsewhere)"),
    ]:
        code, out, err = cli("--home", filled, *args)
        assert code == 1 and out == "" and "Traceback" not in err, err
        assert err.strip().splitlines() == [
            f"error: catalog {filled} is not writable here ({REASON}); cannot {action}"
        ]
    assert _snapshot(filled) == before and not (tmp_path / "x.gif").exists()


def test_library_writes_refuse_too(filled, read_only, make_adapter) -> None:
    from dvkit.errors import CatalogNotWritableError

    with Catalog.open(filled) as catalog:
        with pytest.raises(CatalogNotWritableError, match="cannot store adapter weights"):
            catalog.import_file(make_adapter("dog", "subject"))
        with pytest.raises(CatalogNotWritableError, match="cannot remove adapters"):
            catalog.rm("cat")
        assert catalog.import_file(make_adapter("cat", "subject", seed=0)).duplicate  # reads only
        assert [row["name"] for row in catalog.adapter_rows()] == ["cat", "surf"]


def test_library_training_refuses_before_reading_anything(filled, read_only, tmp_path) -> None:
    from dvkit.errors import CatalogNotWritableError
    from dvkit.train.api import add_motion, add_subject

    missing = tmp_path / "nowhere"  # read first, this would be a different error
    with Catalog.open(filled) as catalog:
        for train, kind in ((add_subject, "subject"), (add_motion, "motion")):
            with pytest.raises(CatalogNotWritableError, match=f"cannot register the {kind} dog$"):
                train("dog", [missing], catalog=catalog, preset="quick")


def test_an_older_schema_cannot_be_upgraded_read_only(cli, filled, monkeypatch) -> None:
    conn = sqlite3.connect(filled / "catalog.db")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    monkeypatch.setattr(store, "unwritable_reason", lambda home, db_name: REASON)
    code, out, err = cli("--home", filled, "list")
    assert code == 1 and err.strip().splitlines() == [
        f"error: catalog {filled} has schema version 2 and needs an upgrade to "
        f"{schema.SCHEMA_VERSION}, but it is not "
        f"writable here ({REASON}); run any dvkit command on it once with write access"
    ]
    monkeypatch.undo()  # writable again: the next command upgrades it
    assert cli("--home", filled, "list")[0] == 0


@pytest.mark.parametrize("unnamed_files", [True, False])
def test_the_writability_probe_leaves_nothing_behind(home, monkeypatch, unnamed_files) -> None:
    if not unnamed_files:  # a file system without O_TMPFILE: a named file, removed at once
        real_open = os.open

        def no_unnamed_files(path, flags, *args):
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", no_unnamed_files)
    before = sorted(home.iterdir())
    assert schema.unwritable_reason(home, "catalog.db") is None
    assert sorted(home.iterdir()) == before
    reason = schema.unwritable_reason(home / "gone", "catalog.db")
    assert reason == "its folder takes no new files: No such file or directory"


@pytest.mark.parametrize("writable", [True, False])
def test_a_catalog_db_that_is_not_sqlite_is_one_line(cli, home, monkeypatch, writable) -> None:
    (home / "catalog.db").write_bytes(bytes(range(256)) * 20)
    if not writable:
        monkeypatch.setattr(store, "unwritable_reason", lambda home, db_name: REASON)
    code, out, err = cli("--home", home, "list")
    assert code == 1 and err.strip().splitlines() == [
        f"error: catalog {home}: catalog.db cannot be read (file is not a database)"
    ]


# ---- real read-only folders -----------------------------------------------------------------


def _dvkit(*args) -> list[str]:
    return _without_override([sys.executable, "-m", "dvkit", *map(str, args)])


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture
def restore_permissions(tmp_path):
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_read_only_folder_for_real(filled, tmp_path, make_adapter, restore_permissions) -> None:
    copy = _read_only_copy(filled, tmp_path)
    before = _snapshot(copy)
    # SQLite's plain read-only open cannot read this WAL catalog: dvkit needs its fallback here
    probe = (
        "import sys, sqlite3; sqlite3.connect(sys.argv[1], uri=True).execute('SELECT * FROM blobs')"
    )
    plain = _run(_without_override([sys.executable, "-c", probe,
                                    f"{(copy / 'catalog.db').as_uri()}?mode=ro"]))  # fmt: skip
    assert plain.returncode == 1 and "sqlite3.OperationalError" in plain.stderr
    result = _run(_dvkit("--home", copy, "list", "--json"))
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == ["cat", "surf"]
    result = _run(_dvkit("--home", copy, "verify", "--json"))
    assert result.returncode == 0 and json.loads(result.stdout)["checked"] == 2, result.stderr
    out = tmp_path / "exported.safetensors"
    result = _run(_dvkit("--home", copy, "export", "cat", "--out", out))
    assert result.returncode == 0, result.stderr
    with Catalog.open(filled) as catalog:
        assert out.read_bytes() == catalog.blobs.path(catalog.show("cat").blob).read_bytes()
    result = _run(_dvkit("--home", copy, "import", make_adapter("dog", "subject")))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: catalog {copy} is not writable here (its folder takes no new files: "
        "Permission denied); cannot import adapters"
    ]
    assert _snapshot(copy) == before and sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in filled.iterdir() if not p.name.endswith(("-wal", "-shm"))
    )


def _live_copy(home: Path, make_adapter, folder: Path, with_shm: bool) -> Path:
    """A copy taken while a process had registered `dog` only in the write-ahead log."""
    folder.mkdir()
    with Catalog.open(home) as catalog:
        catalog._conn.execute("PRAGMA wal_autocheckpoint = 0")
        catalog.import_file(make_adapter("dog", "subject"))
        names = ["catalog.db", "catalog.db-wal", *(["catalog.db-shm"] if with_shm else [])]
        for name in names:
            shutil.copy(home / name, folder / name)
        shutil.copytree(home / "blobs", folder / "blobs")
    for path in [*folder.rglob("*"), folder]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return folder


def test_live_catalog_is_read_with_its_write_ahead_log(
    filled, make_adapter, tmp_path, restore_permissions
) -> None:
    copy = _live_copy(filled, make_adapter, tmp_path / "live", with_shm=True)
    immutable = sqlite3.connect(f"{(copy / 'catalog.db').as_uri()}?immutable=1", uri=True)
    assert [name for (name,) in immutable.execute("SELECT name FROM adapters")] == ["cat", "surf"]
    immutable.close()  # catalog.db alone lacks dog: only a read of the WAL finds it
    result = _run(_dvkit("--home", copy, "list", "--json"))
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == ["cat", "dog", "surf"]


def test_write_ahead_log_it_cannot_read_is_refused(
    filled, make_adapter, tmp_path, restore_permissions
) -> None:
    copy = _live_copy(filled, make_adapter, tmp_path / "live", with_shm=False)
    result = _run(_dvkit("--home", copy, "list"))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: catalog {copy} is not writable here (its folder takes no new files: Permission "
        "denied) and its catalog.db-wal holds changes that only a process able to write the "
        "folder can read; run any dvkit command on it once with write access to fold them into "
        "catalog.db"
    ]
