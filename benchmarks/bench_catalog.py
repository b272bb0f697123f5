"""Catalog speed: start-up of read-only commands over a large catalog, and concurrent writers.

Builds a catalog of N adapter records (real adapter files through the import path), then
reports the median wall time of `dvkit list --json`, `dvkit show NAME` and `python -c pass`,
measured side by side in this run. Then P processes register M adapters each into one
catalog at the same time and the script checks that all P*M are present with no error.

    python benchmarks/bench_catalog.py                 # 10,000 records; 8 x 200 writers
    python benchmarks/bench_catalog.py --adapters 500 --processes 2 --per-process 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dvkit.catalog import Catalog
from dvkit.io.adapter_file import TOKEN_EMBEDDING_KEY, AdapterFileInfo, write_adapter_file

WRITER = """
import sys
from dvkit.catalog import Catalog
with Catalog.open(sys.argv[1]) as catalog:
    for path in sys.argv[2:]:
        catalog.import_file(path)
"""


def make_files(folder: Path, prefix: str, count: int) -> list[Path]:
    """Small subject and motion adapter files with distinct weights."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(hash(prefix) % 2**31)
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    paths = []
    for index in range(count):
        kind = "subject" if index % 2 == 0 else "motion"
        name = f"{prefix}{index:05d}"
        tensors = {
            f"{block}.attn2_adapter.down.weight": torch.randn(16, 32, generator=generator),
            f"{block}.attn2_adapter.up.weight": torch.randn(32, 16, generator=generator),
        }
        if kind == "subject":
            tensors[TOKEN_EMBEDDING_KEY] = torch.randn(1, 32, generator=generator)
        info = AdapterFileInfo(
            kind=kind,
            name=name,
            base="tiny",
            base_fingerprint="bench",
            architecture="dvkit-tiny",
            token=f"<{name}>" if kind == "subject" else None,
            description=f"benchmark adapter {index}",
        )
        path = folder / f"{name}.safetensors"
        write_adapter_file(path, tensors, info)
        paths.append(path)
    return paths


def median_wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup(work: Path, adapters: int, repeats: int) -> dict:
    home = work / "big"
    Catalog.init(home)[0].close()
    start = time.perf_counter()
    files = make_files(work / "files", "a", adapters)
    with Catalog.open(home) as catalog:
        for path in files:
            catalog.import_file(path)
    build = time.perf_counter() - start
    dvkit = [sys.executable, "-m", "dvkit", "--home", str(home)]
    medians = {}
    for label, command in (
        ("python_pass", [sys.executable, "-c", "pass"]),
        ("list_json", [*dvkit, "list", "--json"]),
        ("show", [*dvkit, "show", f"a{adapters // 2:05d}"]),
    ):
        medians[label] = round(median_wall(command, repeats), 4)
    return {
        "adapters": adapters,
        "build_seconds": round(build, 1),
        "median_seconds": medians,
        "goals_seconds": {"list_json": 0.5, "show": 0.25},
        "met": {"list_json": medians["list_json"] <= 0.5, "show": medians["show"] <= 0.25},
    }


def concurrency(work: Path, processes: int, per_process: int) -> dict:
    home = work / "shared"
    Catalog.init(home)[0].close()
    batches = [make_files(work / f"w{p}", f"w{p}-", per_process) for p in range(processes)]
    start = time.perf_counter()
    running = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), *map(str, batch)], stderr=subprocess.PIPE
        )
        for batch in batches
    ]
    errors = [proc.communicate()[1].decode() for proc in running]
    seconds = time.perf_counter() - start
    with Catalog.open(home) as catalog:
        registered = len(catalog.adapter_rows())
        verified = catalog.verify().ok
    return {
        "processes": processes,
        "per_process": per_process,
        "registered": registered,
        "expected": processes * per_process,
        "failed_processes": sum(proc.returncode != 0 for proc in running),
        "database_locked_errors": sum("locked" in error for error in errors),
        "verify_ok": verified,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvkit-bench-") as folder:
        work = Path(folder)
        result = {
            "benchmark": "catalog",
            "startup": startup(work, args.adapters, args.repeats),
            "concurrency": concurrency(work, args.processes, args.per_process),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
