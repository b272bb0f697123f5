"""Crashes, concurrent writers, read-only folders and start-up imports."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dvkit.catalog import Catalog

KILL_AFTER = textwrap.dedent(
    """
    import os, signal, sys
    from dvkit.catalog import Catalog
    from dvkit.catalog.blobs import BlobStore

    original = getattr(BlobStore, sys.argv[3])

    def die_after(self, *args):
        result = original(self, *args)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(BlobStore, sys.argv[3], die_after)
    Catalog.open(sys.argv[1]).import_file(sys.argv[2])
    """
)


@pytest.mark.parametrize("step", ["_stage", "commit"])
def test_sigkill_mid_import_leaves_catalog_consistent(home, make_adapter, run_dvkit, step) -> None:
    with Catalog.open(home) as catalog:
        catalog.import_file(make_adapter("dog"))
    result = subprocess.run(
        [sys.executable, "-c", KILL_AFTER, str(home), str(make_adapter("cat")), step],
        capture_output=True,
    )
    assert result.returncode == -signal.SIGKILL
    verify = run_dvkit("--home", home, "verify", "--json")
    report = json.loads(verify.stdout)
    assert report["missing"] == [] and report["corrupt"] == []
    assert len(report["orphans"]) + len(report["temporaries"]) == 1  # exactly the killed write
    with Catalog.open(home) as catalog:
        assert [row["name"] for row in catalog.adapter_rows()] == ["dog"]
    assert run_dvkit("--home", home, "gc").returncode == 0
    assert json.loads(run_dvkit("--home", home, "verify", "--json").stdout)["ok"] is True


def test_sigkill_at_random_moments(home, make_adapter, run_dvkit, tmp_path) -> None:
    files = [make_adapter(f"a{i}", folder=tmp_path) for i in range(12)]
    for delay in (0.4, 0.8, 1.2):
        process = subprocess.Popen(
            [sys.executable, "-m", "dvkit", "--home", str(home), "import", *map(str, files)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        report = json.loads(run_dvkit("--home", home, "verify", "--json").stdout)
        assert report["missing"] == [] and report["corrupt"] == []
        assert len(report["orphans"]) + len(report["temporaries"]) <= 1
        run_dvkit("--home", home, "gc")
    assert json.loads(run_dvkit("--home", home, "verify", "--json").stdout)["ok"] is True


WRITER = textwrap.dedent(
    """
    import sys
    from dvkit.catalog import Catalog
    with Catalog.open(sys.argv[1]) as catalog:
        for path in sys.argv[2:]:
            catalog.import_file(path)
    """
)


def test_concurrent_writers_all_land(home, make_adapter, tmp_path) -> None:
    processes, per_process = 4, 15
    batches = []
    for p in range(processes):
        folder = tmp_path / f"p{p}"
        folder.mkdir()
        batches.append([str(make_adapter(f"w{p}-{i}", folder=folder)) for i in range(per_process)])
    running = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home), *batch], stderr=subprocess.PIPE)
        for batch in batches
    ]
    errors = [proc.communicate()[1].decode() for proc in running]
    assert [proc.returncode for proc in running] == [0] * processes, errors
    assert not any("locked" in error for error in errors)
    with Catalog.open(home) as catalog:
        assert len(catalog.adapter_rows()) == processes * per_process
        assert catalog.verify().ok


def _read_only_copy(home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ro" / "registry"
    shutil.copytree(home, copy)
    for path in [*copy.rglob("*"), copy, copy.parent]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return copy


def _without_override(command: list[str]) -> list[str]:
    """As root, permission bits bind only once the override capabilities are dropped."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *command]


def test_catalog_not_writable(home, make_adapter, tmp_path) -> None:
    adapter = make_adapter("cat")
    copy = _read_only_copy(home, tmp_path)
    try:
        dvkit = [sys.executable, "-m", "dvkit"]
        result = subprocess.run(
            _without_override([*dvkit, "--home", str(copy), "import", str(adapter)]),
            capture_output=True,
            text=True,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "not writable" in lines[0] or "cannot write" in lines[0]
        result = subprocess.run(
            _without_override([*dvkit, "init", str(copy.parent / "sub")]),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1 and "cannot create a catalog" in result.stderr
        assert not (copy.parent / "sub").exists()
    finally:
        for path in [copy.parent, copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


IMPORTS_OF = textwrap.dedent(
    """
    import json, sys
    from dvkit.cli.main import run
    code = run(sys.argv[1:])
    heavy = sorted(m for m in ("torch", "diffusers", "transformers", "numpy", "sqlite_utils")
                   if m in sys.modules)
    print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
    """
)


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["list", "--json"],
        ["show", "cat"],
        ["where"],
        ["verify"],
        ["generations"],
        ["generations", "--json"],
    ],
)
def test_read_only_commands_do_not_import_torch(home, make_adapter, command) -> None:
    with Catalog.open(home) as catalog:
        catalog.import_file(make_adapter("cat"))
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, "--home", str(home), *command],
        capture_output=True,
        text=True,
    )
    status = json.loads(result.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "heavy": []}


def test_import_dvkit_is_light_and_exposes_the_library() -> None:
    code = (
        "import sys, dvkit; light = 'torch' not in sys.modules; "
        "names = [f.__name__ for f in (dvkit.add_subject, dvkit.add_motion, dvkit.add_base)]; "
        "print(light, names)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "True ['add_subject', 'add_motion', 'add_base']"
