import json
import os
import time

import pytest

from dvkit.catalog import Catalog


def _one_error_line(code: int, out: str, err: str, expected: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err


def test_init_where_list_empty(cli, tmp_path) -> None:
    code, out, _ = cli("init", tmp_path / "r")
    assert code == 0 and "catalog ready" in out
    code, out, _ = cli("--home", tmp_path / "r", "where")
    assert (code, out.strip()) == (0, str((tmp_path / "r").resolve()))
    code, out, _ = cli("--home", tmp_path / "r", "list")
    assert (code, out.strip()) == (0, "no adapters yet")
    code, out, _ = cli("--home", tmp_path / "r", "list", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_home_without_a_value_or_without_a_command_is_refused(cli) -> None:
    missing = (2, "", "error: Option '--home' requires an argument.\n")
    assert cli("bench", "--home") == missing
    assert cli("list", "--home") == missing
    assert cli("--home", "bench") == (2, "", "error: Missing command.\n")  # bench: the folder
    assert cli()[0] == 0  # the help


def test_init_default_path_and_discovery(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init")[0] == 0
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    code, out, _ = cli("where")
    assert (code, out.strip()) == (0, str(tmp_path / "registry"))
    monkeypatch.setenv("DVKIT_HOME", str(tmp_path / "env-home"))
    assert cli("init")[0] == 0
    assert cli("where")[1].strip() == str(tmp_path / "env-home")


def test_round_trip_import_show_verify_rm_gc(cli, home, make_adapter) -> None:
    path = make_adapter("cat", "subject", description="a grey cat")
    code, out, _ = cli("--home", home, "import", path, "--tag", "pet")
    assert code == 0 and "imported as cat@1 (subject, base tiny, token <cat>)" in out
    code, out, _ = cli("--home", home, "import", path)
    assert code == 0 and "already in the catalog as cat@1" in out
    code, out, _ = cli("--home", home, "show", "cat", "--json")
    shown = json.loads(out)
    assert (shown["name"], shown["version"], shown["kind"], shown["tags"]) == (
        "cat",
        1,
        "subject",
        ["pet"],
    )
    assert shown["token"] == "<cat>" and shown["description"] == "a grey cat"
    code, out, _ = cli("--home", home, "show", "cat@1")
    assert code == 0 and "cat@1" in out and "<cat>" in out and "a grey cat" in out
    code, out, _ = cli("--home", home, "list")
    assert code == 0 and "cat@1" in out and "pet" in out
    code, out, _ = cli("--home", home, "verify")
    assert code == 0 and "checked 1 weights file: ok" in out
    code, out, _ = cli("--home", home, "rm", "cat")
    assert (code, out.strip()) == (0, "removed cat@1")
    code, out, _ = cli("--home", home, "verify")
    assert code == 0 and "checked 0 weights files: ok" in out
    code, out, _ = cli("--home", home, "gc")
    assert (code, out.strip()) == (0, "freed 0 B")
    assert not any((home / "blobs").rglob("*.safetensors"))


def test_list_filters_and_versions(cli, home, make_adapter) -> None:
    cli("--home", home, "import", make_adapter("cat", "subject"))
    cli("--home", home, "import", make_adapter("cat", "subject"))
    cli("--home", home, "import", make_adapter("surfing", "motion"), "--tag", "sport")
    code, out, _ = cli("--home", home, "list", "--kind", "motion", "--json")
    assert [row["name"] for row in json.loads(out)] == ["surfing"]
    code, out, _ = cli("--home", home, "list", "--all", "--json")
    assert [(r["name"], r["version"]) for r in json.loads(out)] == [
        ("cat", 1),
        ("cat", 2),
        ("surfing", 1),
    ]
    code, out, _ = cli("--home", home, "list")
    assert "cat@2 (2 versions)" in out
    code, out, _ = cli("--home", home, "list", "--tag", "nothing")
    assert out.strip() == "no adapters match"
    code, out, err = cli("--home", home, "list", "--kind", "style")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_tag_command(cli, home, make_adapter) -> None:
    cli("--home", home, "import", make_adapter("cat"))
    code, out, _ = cli("--home", home, "tag", "cat", "best", "v1")
    assert (code, out.strip()) == (0, "cat: best, v1")
    code, out, _ = cli("--home", home, "tag", "cat@1", "v1", "--remove")
    assert (code, out.strip()) == (0, "cat@1: best")


def test_rm_all_versions_and_shared_blob_kept(cli, home, make_adapter) -> None:
    cli("--home", home, "import", make_adapter("cat"))
    cli("--home", home, "import", make_adapter("cat"))
    code, out, _ = cli("--home", home, "rm", "cat", "--all-versions")
    assert (code, out.strip()) == (0, "removed cat@1, cat@2")


def test_base_commands(cli, home) -> None:
    from dvkit.catalog import Catalog
    from dvkit.catalog.records import BaseModelRecord

    code, out, _ = cli("--home", home, "base", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "FAMILY", "FINGERPRINT", "SOURCE"]
    assert [line.split()[:4] for line in lines[1:13:2]] == [
        ["tiny", "modelscope-t2v", "(first", "use)"],
        ["tiny-animatediff", "animatediff", "(first", "use)"],
        ["tiny-wan", "wan", "(first", "use)"],
        ["tiny-wan22", "wan", "(first", "use)"],
        ["sprites", "sprites-pixel-t2v", "(first", "use)"],
        ["sprites-wan", "sprites-pixel-wan", "(first", "use)"],
    ]
    assert lines[2].strip().startswith("tiny random components") and lines[-1] == "no default base"
    code, out, _ = cli("--home", home, "base", "show", "sprites", "--json")
    assert code == 0 and json.loads(out)["architecture"] == "sprites-pixel-t2v"
    with Catalog.open(home) as catalog:
        catalog.add_base(
            BaseModelRecord(
                name="ms",
                source="ali-vilab/text-to-video-ms-1.7b",
                fingerprint="f" * 64,
                architecture="modelscope-t2v",
            )
        )
    code, out, _ = cli("--home", home, "base", "list")
    assert code == 0 and "ms" in out and "modelscope-t2v" in out
    code, out, _ = cli("--home", home, "base", "show", "ms", "--json")
    assert json.loads(out)["source"] == "ali-vilab/text-to-video-ms-1.7b"
    _one_error_line(*cli("--home", home, "base", "show", "nope"), "no base named 'nope'")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("show", "Cat"), "invalid name 'Cat'"),
        (("show", "a/b"), "invalid name 'a/b'"),
        (("show", ".."), "invalid name '..'"),
        (("show", ""), "must not be empty"),
        (("show", "x" * 65), "longer than 64"),
        (("show", "cat"), "no adapter named 'cat'"),
        (("show", "cat@x"), "invalid version"),
        (("rm", "cat@2"), "no adapter named 'cat'"),
        (("tag", "cat", "Bad"), "invalid tag 'Bad'"),
        (("import", "missing.safetensors"), "no such file"),
        (("list", "--bogus"), "No such option"),
    ],
)
def test_user_errors_are_one_line(cli, home, args, expected) -> None:
    _one_error_line(*cli("--home", home, *args), expected)


def test_import_errors_leave_catalog_unchanged(cli, home, make_adapter, tmp_path) -> None:
    good = make_adapter("cat")
    cli("--home", home, "import", good)
    before = sorted(p.name for p in home.rglob("*"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    _one_error_line(*cli("--home", home, "import", garbage), "not a safetensors file")
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, foreign)
    _one_error_line(*cli("--home", home, "import", foreign), "embedding width 3 does not fit")
    corrupt = make_adapter("dog")
    data = bytearray(corrupt.read_bytes())
    data[-3] ^= 0x55
    corrupt.write_bytes(bytes(data))
    _one_error_line(*cli("--home", home, "import", corrupt), "corrupt adapter file")
    _one_error_line(
        *cli("--home", home, "import", make_adapter("cat", "motion")), "already a subject"
    )
    _one_error_line(*cli("--home", home, "import", good, good, "--name", "x"), "one file")
    assert sorted(p.name for p in home.rglob("*")) == before


def test_no_catalog_error(cli, tmp_path) -> None:
    _one_error_line(*cli("list"), "dvkit init")
    _one_error_line(*cli("--home", tmp_path / "nothing", "show", "cat"), "dvkit init")


def test_newer_schema_error(cli, home) -> None:
    import sqlite3

    conn = sqlite3.connect(home / "catalog.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    _one_error_line(*cli("--home", home, "list"), "upgrade dvkit")


def test_verify_exit_code_and_gc(cli, home, make_adapter) -> None:
    cli("--home", home, "import", make_adapter("cat"))
    orphan = home / "blobs" / "00" / ("00" * 32 + ".safetensors")
    orphan.parent.mkdir(parents=True, exist_ok=True)  # the adapter's own blob may be in 00/
    orphan.write_bytes(b"x")
    code, out, _ = cli("--home", home, "verify")
    assert code == 1 and "orphan: " in out and "run: dvkit gc" in out
    code, out, _ = cli("--home", home, "verify", "--json")
    assert code == 1 and json.loads(out)["orphans"] == ["00" * 32]
    code, out, _ = cli("--home", home, "gc")
    assert code == 0 and "removed blobs/00/" in out
    assert cli("--home", home, "verify")[0] == 0


def test_version_and_help(cli) -> None:
    code, out, _ = cli("--version")
    assert (code, out.strip()) == (0, __import__("dvkit").__version__)
    code, out, _ = cli()
    assert code == 0 and "import" in out and "verify" in out


def test_python_dash_m_and_no_traceback(tmp_path, run_dvkit) -> None:
    result = run_dvkit("--home", tmp_path / "none", "list")
    assert result.returncode == 1
    missing = tmp_path / "none"
    assert result.stderr.strip().splitlines() == [
        f"error: no catalog at {missing} (create one with: dvkit init {missing})"
    ]


def test_list_limit(cli, home, make_adapter) -> None:
    for name in ("a", "b", "c"):
        cli("--home", home, "import", make_adapter(name))
    code, out, _ = cli("--home", home, "list", "--limit", "2")
    assert code == 0 and "a@1" in out and "b@1" in out and "c@1" not in out
    assert "... and 1 more (--limit 0 shows all)" in out
    code, out, _ = cli("--home", home, "list", "--json", "--limit", "1")
    assert [row["name"] for row in json.loads(out)] == ["a"]
    code, out, _ = cli("--home", home, "list", "--limit", "0")
    assert "c@1" in out and "more" not in out


def test_only_the_invoked_command_is_built() -> None:
    from dvkit.cli.app import build_app
    from dvkit.cli.main import _command_name

    assert _command_name(["--home", "x", "show", "cat"]) == "show"
    assert _command_name(["--version"]) is None
    assert [c.name for c in build_app("show").registered_commands] == ["show"]
    assert len(build_app(None).registered_commands) > 10
    assert [c.name for c in build_app("nonsense").registered_commands][:2] == ["init", "where"]


def test_verify_names_the_adapters_of_a_corrupt_file_and_how_to_repair(cli, home, make_adapter):
    cli("--home", home, "import", make_adapter("cat"))
    with Catalog.open(home) as catalog:
        sha = catalog.show("cat").blob
        catalog.blobs.path(sha).write_bytes(b"damaged")
    code, out, _ = cli("--home", home, "verify")
    assert code == 1
    assert (
        f"corrupt: {sha} (weights of cat@1: import the adapter's file again (dvkit import FILE), "
        "or remove it: dvkit rm cat@1)"
    ) in out
    code, out, _ = cli("verify", "--json", "--home", home)
    assert json.loads(out)["owners"] == {sha: ["cat@1"]}


def test_verify_reports_run_folders_and_gc_removes_stale_ones(cli, home) -> None:
    runs = home / "runs"
    resumable, empty, old = (runs / "subject-a-1", runs / "motion-b-2", runs / "subject-c-3")
    for folder in (resumable, old):
        (folder / "identity").mkdir(parents=True)
        (folder / "identity" / "state.pt").write_bytes(b"checkpoint")
    (empty / "motion").mkdir(parents=True)
    week_ago = time.time() - 8 * 24 * 3600
    for path in (old, old / "identity", old / "identity" / "state.pt"):
        os.utime(path, (week_ago, week_ago))
    code, out, _ = cli("--home", home, "verify")
    assert code == 1
    assert "stale training run: runs/motion-b-2 (no checkpoint to resume from)" in out
    assert "stale training run: runs/subject-c-3 (untouched for 8 days;" in out
    assert "interrupted training run: runs/subject-a-1 (recent; run the same training" in out
    code, out, _ = cli("--home", home, "gc")
    assert code == 0 and "removed runs/motion-b-2" in out and "removed runs/subject-c-3" in out
    assert [path.name for path in runs.iterdir()] == ["subject-a-1"]
    code, out, _ = cli("--home", home, "verify")
    assert code == 0 and "interrupted training run: runs/subject-a-1" in out


def test_import_refused_while_registering_says_what_was_imported(cli, home, make_adapter):
    from dvkit.errors import ConflictError

    files = [make_adapter(name) for name in ("cat", "dog", "owl")]
    original = Catalog.import_file

    def refuse_dog(self, path, **kwargs):
        if "dog" in str(path):
            raise ConflictError(f"{path}: refused")
        return original(self, path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Catalog, "import_file", refuse_dog)
        code, out, err = cli("--home", home, "import", *files)
    _one_error_line(code, out, err, f"{files[1]}: refused; imported before it: ")
    assert f"{files[0].name} as cat@1; not imported: {files[1].name}, {files[2].name}" in err
    assert [row["name"] for row in Catalog.open(home).adapter_rows()] == ["cat"]


def test_list_fits_80_columns_with_long_descriptions(cli, home, make_adapter, monkeypatch):
    long = "a description much longer than what is left of an eighty-column terminal " * 2
    cli("--home", home, "import", make_adapter("cat", description=long))
    cli("--home", home, "import", make_adapter("surfing-in-the-rain", "motion"))
    monkeypatch.setenv("COLUMNS", "80")
    lines = cli("--home", home, "list")[1].splitlines()
    assert all(len(line) <= 80 for line in lines) and len(lines) == 4
    assert lines[1].split()[:3] == ["cat@1", "subject", "tiny"]
    assert lines[-1] == "(descriptions: a wider terminal, or dvkit show NAME)"
    monkeypatch.setenv("COLUMNS", "160")
    lines = cli("--home", home, "list")[1].splitlines()
    assert len(lines) == 3 and "DESCRIPTION" in lines[0] and lines[1].rstrip().endswith("…")
