"""`dvkit bench` over several ranks (gloo on CPU): the cells and scores of one process, only rank
0 touching the catalog, and a rank that dies mid-grid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvkit.catalog import Catalog
from dvkit.evaluate.ranks import assign

GRID = ("--steps", "2", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny",
        "--device", "cpu", "--seed", "0", "--seed", "1", "--batch-size", "3")  # fmt: skip
"""16 cells (2 pairs x 4 roles x 2 seeds) in batches of 3."""
ONE_BY_ONE = ("--steps", "6", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny",
              "--device", "cpu", "--seed", "2", "--seed", "3", "--batch-size", "1")  # fmt: skip
"""16 other cells, one a batch: long enough to stop midway."""
WATCH = """
import os, sys
home, log = os.environ["WATCH_HOME"], open(os.environ["WATCH_LOG"], "a", buffering=1)
def watch(event, args):
    if any(isinstance(arg, str) and arg.startswith(home) for arg in args):
        log.write(f"{os.environ.get('RANK', '-')} {event} {args[0]}\\n")
sys.addaudithook(watch)
"""
"""A sitecustomize that logs every audited operation (open, sqlite3.connect, listdir, ...) that
names a path under WATCH_HOME to WATCH_LOG, as `RANK EVENT PATH` lines."""


@pytest.fixture
def homes(grid_home: Path, tmp_path: Path) -> tuple[Path, Path]:
    copies = tmp_path / "one" / "registry", tmp_path / "two" / "registry"
    for copy in copies:
        shutil.copytree(grid_home, copy)
    return copies


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _watched(home: Path, folder: Path, rank_log: str) -> dict[str, str]:
    """The environment of a process whose touches of `home` go to `folder / rank_log`."""
    (folder / "sitecustomize.py").write_text(WATCH)
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "WATCH_HOME": str(home.resolve()),
            "WATCH_LOG": str(folder / rank_log)}  # fmt: skip


def _torchrun(home: Path, port: int, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The command of a 2-rank `torchrun` of `dvkit bench` on `home`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "dvkit", "--home", str(home), "bench", *args]  # fmt: skip


def _launched_rank(rank: int, port: int) -> int:
    """The process id of rank `rank` of the launch on `port` (a torchrun's child)."""
    wanted = {f"RANK={rank}".encode(), f"MASTER_PORT={port}".encode()}
    for folder in Path("/proc").iterdir():
        try:
            if folder.name.isdigit() and wanted <= set(
                (folder / "environ").read_bytes().split(b"\0")
            ):
                return int(folder.name)
        except OSError:  # gone, or not ours
            continue
    raise AssertionError(f"no rank {rank} on port {port}")


def _rank(home: Path, rank: int, port: int, *args: str) -> subprocess.Popen:
    """Rank `rank` of 2 as a launcher starts it (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    command = [sys.executable, "-m", "dvkit", "--home", str(home), "bench", *args]
    return subprocess.Popen(command, env={**os.environ, **ranks}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _stored_at_least(home: Path, count: int, rank_0: subprocess.Popen) -> int:
    """Wait (2 minutes at most) until `home` holds `count` cells or rank 0 ends; the count."""
    stored, deadline = 0, time.monotonic() + 120
    while stored < count and time.monotonic() < deadline and rank_0.poll() is None:
        time.sleep(0.1)
        with Catalog.open(home) as catalog:
            stored = len(catalog.evaluation_rows())
    return stored


def _cells(home: Path) -> dict[str, tuple]:
    """Every stored cell: its prompt, seed, role, scores and GIF bytes."""
    with Catalog.open(home) as catalog:
        return {
            row["cell"]: (row["prompt"], row["seed"], row["sampler"]["role"], row["metrics"],
                          Path(row["files"][0]).read_bytes())
            for row in catalog.evaluation_rows()
        }  # fmt: skip


def test_dealing_balances_cost() -> None:
    assert assign([4, 3, 3, 2, 2, 2], 2) == [[0, 3, 4], [1, 2, 5]]  # 8 and 8
    assert assign([1, 1], 3) == [[0], [1], []]


def test_rank_0_hears_cells_errors_and_silence(monkeypatch) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from dvkit.distributed import World
    from dvkit.evaluate.ranks import Link, RankStopped

    port = _free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=5))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    coordinator, worker = (Link(World(rank, 2), "run", timeout=0.5) for rank in range(2))
    worker.send({"cell": 1})
    worker.send({"cell": 2})
    assert coordinator.received() == [(1, {"cell": 1}), (1, {"cell": 2})]
    assert coordinator.received() == []
    coordinator.check([1])  # heard within the timeout
    time.sleep(0.6)
    with pytest.raises(RankStopped, match="rank 1 stopped: no word from it for 0.5 s"):
        coordinator.check([1])
    worker.fail("CUDA out of memory")
    with pytest.raises(RankStopped, match="^rank 1 stopped: CUDA out of memory$"):
        coordinator.check([1])
    coordinator, worker = (Link(World(rank, 2), "other run", timeout=5) for rank in range(2))
    worker.told()  # stopped by its host's launcher
    with pytest.raises(RankStopped, match="^rank 1 stopped: a signal stopped it"):
        coordinator.check([1])
    del server


def test_shard_is_refused_under_a_launcher(cli, homes, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = cli("--home", homes[0], "bench", "--shard", "0/2")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --shard splits a grid over processes of one host")
    monkeypatch.setenv("RANK", "1")  # the other ranks exit with the same status, silently
    assert cli("--home", homes[0], "bench", "--shard", "0/2") == (1, "", "")
    assert cli("--home", homes[0], "bench", "--shard", "x") == (1, "", "")
    assert cli("--home", homes[0], "bench", "--seed") == (2, "", "")


def test_two_ranks_make_the_cells_and_scores_of_one_process(homes, cli, tmp_path) -> None:
    one, two = homes
    code, out, err = cli("--home", one, "bench", *GRID)
    assert code == 0, err
    assert "16 cells: 16 generated" in out
    env = _watched(two, tmp_path, "touched.log")
    command = _torchrun(two, _free_port(), *GRID)
    launched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("16 cells: 16 generated, 0 already scored") == 1  # rank 0's
    single, spread = _cells(one), _cells(two)
    assert len(spread) == 16
    assert {key: value[:4] for key, value in spread.items()} == {
        key: value[:4] for key, value in single.items()
    }  # the same cells, prompts, seeds, roles and scores, exactly
    assert {key: value[4] for key, value in spread.items()} == {
        key: value[4] for key, value in single.items()
    }  # and the same videos, byte for byte
    touched = (tmp_path / "touched.log").read_text().splitlines()
    assert f"0 sqlite3.connect {two.resolve() / 'catalog.db'}" in touched  # the watch works
    assert [line for line in touched if not line.startswith("0 ")] == []


def test_a_rank_that_dies_stops_the_grid_and_a_rerun_makes_the_rest(homes, cli) -> None:
    """Under torchrun, which stops rank 0 with SIGTERM (long before `--rank-timeout`) once
    rank 1 is killed: rank 0 names rank 1."""
    home = homes[0]
    port = _free_port()
    launch = subprocess.Popen(_torchrun(home, port, *ONE_BY_ONE), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        stored = _stored_at_least(home, 2, launch)
        os.kill(_launched_rank(1, port), signal.SIGKILL)
        _, err = launch.communicate(timeout=120)
    finally:
        launch.kill()
        launch.communicate()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: rank 1 stopped (its process ended; the launcher stopped the others): the cells "
        "finished so far are stored, re-run to make the rest"
    ], err
    with Catalog.open(home) as catalog:
        kept = len(catalog.evaluation_rows())
    assert stored <= kept < 16  # every cell stored before rank 1 died, and more of rank 0's
    code, out, err = cli("--home", home, "bench", *ONE_BY_ONE)
    assert code == 0, err
    assert f"16 cells: {16 - kept} generated, {kept} already scored" in out


@pytest.mark.parametrize(
    ("sent", "to", "codes", "said"),
    [
        pytest.param(  # rank 1 is stopped by rank 0
            signal.SIGTERM, [0], [143, 0], "stopped by SIGTERM", marks=pytest.mark.slow
        ),
        (signal.SIGINT, [0, 1], [130, 130], "interrupted"),  # Ctrl-C of the whole group
    ],
)
def test_a_signal_stops_every_rank_and_keeps_the_stored_cells(homes, sent, to, codes, said) -> None:
    home = homes[0]
    port = _free_port()
    ranks = [_rank(home, rank, port, *ONE_BY_ONE) for rank in range(2)]
    try:
        stored = _stored_at_least(home, 2, ranks[0])
        for rank in to:
            ranks[rank].send_signal(sent)
        outputs = [process.communicate(timeout=30) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    assert [process.returncode for process in ranks] == codes, outputs
    with Catalog.open(home) as catalog:
        kept = len(catalog.evaluation_rows())
    assert stored <= kept < 16
    assert outputs[0][1].splitlines()[-1] == (
        f"error: {said}: {kept} new cells stored ({kept}/16 in the catalog); re-run the same "
        "command to make the rest"
    ), outputs
    assert outputs[0][1].count("error:") == 1 and "Traceback" not in outputs[0][1]
    assert outputs[1][1] == ""  # rank 1 just stops: rank 0 says it
