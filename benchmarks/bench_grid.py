"""Evaluation grid speed and memory: `dvkit bench` vs a naive loop, on the tiny base.

Builds a catalog with 3 subjects and 3 motions (quick training), then, each in its own process
so peak memory is measured apart, in one run:
- `bench`: dvkit's grid (cells batched with per-row adapters; base, encoders, reference and
  text embeddings loaded or computed once);
- `naive`: for each cell, load the base, attach that cell's adapters, generate it alone, and
  encode its references and prompt;
- `one base + encoders`: loading the base and the encoders once, nothing else.
Prints JSON with wall times, their ratio (goal: naive / bench >= 3) and peak RSS (goal: bench
<= 1.3 x one base plus encoders).

With `--ranks 1,2` it compares instead the wall time of the same grid (`--seeds` seeds) run by
`torchrun --nproc_per_node N -m dvkit bench` for each N, on a fresh copy of the catalog each
time (gloo; on CPU each rank runs on one thread, $OMP_NUM_THREADS), and checks that every run
stored the same scores.

    python benchmarks/bench_grid.py [--steps 10] [--frames 4] [--size 16] [--batch-size 8]
    python benchmarks/bench_grid.py --ranks 1,2 [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

COMMON = """
import json, resource, sys, time
from dvkit.catalog import Catalog
from dvkit.generate.sampler import SamplerSettings
home, steps, frames, size, batch = sys.argv[1], *map(int, sys.argv[2:6])
device = sys.argv[6]
settings = SamplerSettings(steps=steps, frames=frames, height=size, width=size)
catalog = Catalog.open(home)
start = time.perf_counter()
"""
REPORT = """
import torch
cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"seconds": time.perf_counter() - start, "cells": cells, "peak_cuda_mb": cuda,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
BENCH = """
from dvkit.evaluate.grid import bench
catalog._conn.execute("DELETE FROM evaluations")
result = bench(catalog, settings=settings, batch_size=batch, clip="tiny", dino="tiny",
               device=device)
cells = result.generated
"""
NAIVE = """
from dvkit.bases import open_base
from dvkit.evaluate import metrics
from dvkit.evaluate.grid import ROLES, Cell, DEFAULT_TEMPLATE, _row, prompt_text
from dvkit.evaluate.score import Scorer
from dvkit.generate.compose import guidance_embedding, install_subject, load_adapter
from dvkit.generate.sampler import sample
from dvkit.models.injection import AdapterInjector
scorer = Scorer("tiny", "tiny", device)
subjects = {r.ref: load_adapter(catalog, r.ref, None, r.kind) for r in catalog.list(kind="subject")}
motions = {r.ref: load_adapter(catalog, r.ref, None, r.kind) for r in catalog.list(kind="motion")}
cells = 0
for s in subjects:
    for m in motions:
        for role in ROLES:
            cell = Cell(s, m, role, DEFAULT_TEMPLATE, 0)
            components, _ = open_base(catalog, "tiny")
            for model in (components.unet, components.vae, components.text_encoder):
                model.to(scorer.device)
            injector = AdapterInjector(components.unet)
            if cell.subject:
                install_subject(components, injector, subjects[s], name=f"subject:{s}")
            if cell.motion:
                injector.load(f"motion:{m}", "motion", motions[m].tensors.adapters)
            guidance = {(s, m): guidance_embedding(motions[m], subjects[s], None, size,
                                                   scorer.device)}
            video = sample(components, [_row(cell, subjects, motions, guidance)], settings,
                           injector)[0]
            references = subjects[s].tensors.reference_images
            text = scorer.clip.texts([prompt_text(cell, subjects, motions, True)])[0]
            clip_frames = scorer.clip.images(video)
            scores = [metrics.text_alignment(text, clip_frames),
                      metrics.image_similarity(scorer.clip.images(references), clip_frames),
                      metrics.image_similarity(scorer.dino.images(references),
                                               scorer.dino.images(video)),
                      metrics.temporal_consistency(clip_frames)]
            cells += 1
"""
BASELINE = """
from dvkit.bases import open_base
from dvkit.evaluate.score import Scorer
components, _ = open_base(catalog, "tiny")
scorer = Scorer("tiny", "tiny", device)
for model in (components.unet, components.vae, components.text_encoder):
    model.to(scorer.device)
scorer.clip, scorer.dino
cells = 0
"""


def build_catalog(root: Path) -> Path:
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    from dvkit.catalog import Catalog
    from dvkit.train.api import add_motion, add_subject

    catalog, _ = Catalog.init(root / "registry")
    rng = np.random.default_rng(0)
    with catalog:
        for name in ("cat", "dog", "bear"):
            folder = root / name
            folder.mkdir()
            for index in range(3):
                Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(
                    folder / f"{index}.png"
                )
            add_subject(name, [folder], catalog=catalog, preset="quick", inversion_steps=3,
                        identity_steps=3)  # fmt: skip
        for name in ("surfing", "running", "dancing"):
            folder = root / name
            folder.mkdir()
            clip = (rng.random((6, 16, 16, 3)) * 255).astype("uint8")
            iio.imwrite(folder / "0.gif", clip, plugin="pillow", duration=125, loop=0)
            add_motion(name, [folder], catalog=catalog, preset="quick", steps=3, frames=4)
    return root / "registry"


def run(script: str, home: Path, args: argparse.Namespace) -> dict:
    code = textwrap.dedent(COMMON) + textwrap.dedent(script) + textwrap.dedent(REPORT)
    values = [str(v) for v in (home, args.steps, args.frames, args.size, args.batch_size,
                               args.device)]  # fmt: skip
    output = subprocess.run([sys.executable, "-c", code, *values], capture_output=True,
                            text=True, check=True)  # fmt: skip
    return json.loads(output.stdout.strip().splitlines()[-1])


def run_ranks(home: Path, ranks: int, args: argparse.Namespace) -> tuple[float, dict]:
    """Wall seconds of the grid under `torchrun` with `ranks` processes on a fresh copy of
    `home`, and the scores it stored by cell."""
    copy = home.parent / f"ranks-{ranks}" / "registry"
    shutil.copytree(home, copy)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seeds = [part for seed in range(args.seeds) for part in ("--seed", str(seed))]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
        "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "dvkit",
        "--home", str(copy), "bench", "--steps", str(args.steps), "--frames", str(args.frames),
        "--size", str(args.size), "--batch-size", str(args.batch_size), "--clip", "tiny",
        "--dino", "tiny", "--device", args.device, *seeds,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    seconds = time.perf_counter() - start
    from dvkit.catalog import Catalog

    with Catalog.open(copy) as catalog:
        scores = {row["cell"]: row["metrics"] for row in catalog.evaluation_rows()}
    return seconds, scores


def compare_ranks(args: argparse.Namespace) -> None:
    counts = [int(part) for part in args.ranks.split(",")]
    with tempfile.TemporaryDirectory(prefix="dvkit-grid-") as folder:
        home = build_catalog(Path(folder))
        runs = {count: run_ranks(home, count, args) for count in counts}
    first = runs[counts[0]][1]
    print(json.dumps({
        "benchmark": "grid-ranks",
        "compared": f"wall time of one grid (3 subjects x 3 motions x 4 roles x {args.seeds} "
                    f"seeds, tiny base) under torchrun with {' vs '.join(map(str, counts))} "
                    "ranks (gloo), launcher start-up included; each rank one process",
        "settings": vars(args),
        "cells": {count: len(scores) for count, (_, scores) in runs.items()},
        "seconds": {count: round(seconds, 2) for count, (seconds, _) in runs.items()},
        "speedup_over_first": {count: round(runs[counts[0]][0] / seconds, 2)
                               for count, (seconds, _) in runs.items()},
        "same_scores": all(scores == first for _, scores in runs.values()),
        "cpu_cores": os.cpu_count(),
    }, indent=2))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--ranks", help="compare torchrun with these rank counts, e.g. 1,2")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the --ranks grid")
    args = parser.parse_args()
    if args.ranks:
        compare_ranks(args)
        return
    with tempfile.TemporaryDirectory(prefix="dvkit-grid-") as folder:
        home = build_catalog(Path(folder))
        baseline = run(BASELINE, home, args)
        fast = run(BENCH, home, args)
        naive = run(NAIVE, home, args)
    print(json.dumps({
        "benchmark": "grid",
        "compared": "dvkit bench vs a naive per-cell loop (load base, attach, generate alone, "
                    "encode references and prompt), 3 subjects x 3 motions x 4 roles, tiny base",
        "settings": vars(args),
        "cells": {"bench": fast["cells"], "naive": naive["cells"]},
        "seconds": {"bench": round(fast["seconds"], 2), "naive": round(naive["seconds"], 2)},
        "speedup_naive_over_bench": round(naive["seconds"] / fast["seconds"], 2),
        "goal_speedup": 3.0,
        "peak_rss_mb": {"bench": round(fast["peak_rss_mb"]), "naive": round(naive["peak_rss_mb"]),
                        "one_base_plus_encoders": round(baseline["peak_rss_mb"])},
        "peak_cuda_mb": {"bench": fast["peak_cuda_mb"], "naive": naive["peak_cuda_mb"],
                         "one_base_plus_encoders": baseline["peak_cuda_mb"]},
        "bench_over_base_and_encoders": round(fast["peak_rss_mb"] / baseline["peak_rss_mb"], 2),
        "goal_memory_ratio": 1.3,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
