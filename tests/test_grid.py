"""`dvkit bench` grids on tiny: cells, baselines, batching, resume and shards."""

import shutil

import numpy as np
import pytest
from PIL import Image

from dvkit.catalog import Catalog
from dvkit.evaluate.grid import bench
from dvkit.generate.sampler import SamplerSettings
from dvkit.train.api import add_motion, add_subject

SMALL = SamplerSettings(steps=2, frames=3, height=16, width=16)
ENCODERS = {"clip": "tiny", "dino": "tiny", "device": "cpu"}


@pytest.fixture
def catalog(grid_home, tmp_path):
    shutil.copytree(grid_home, tmp_path / "registry")
    with Catalog.open(tmp_path / "registry") as opened:
        yield opened


def test_grid_with_baselines_then_resume(catalog) -> None:
    first = bench(catalog, seeds=[0], settings=SMALL, **ENCODERS)
    assert (first.cells, first.generated, first.skipped) == (8, 8, 0)  # 2 pairs x 4 roles
    roles = sorted(row["sampler"]["role"] for row in first.rows)
    assert roles == ["base", "base", "joint", "joint", "motion", "motion", "subject", "subject"]
    joint = next(r for r in first.rows if r["sampler"]["role"] == "joint")
    assert set(joint["metrics"]) == {"clip_t", "clip_i", "dino_i", "t_cons"}
    assert joint["prompt"] in ("a <cat> surfing", "a <dog> surfing")
    again = bench(catalog, seeds=[0], settings=SMALL, **ENCODERS)
    assert (again.generated, again.skipped) == (0, 8)
    assert [r["metrics"] for r in again.rows] == [r["metrics"] for r in first.rows]


def test_batched_scores_equal_one_cell_at_a_time(catalog) -> None:
    batched = bench(catalog, ["cat"], ["surfing"], seeds=[3], batch_size=4, settings=SMALL,
                    **ENCODERS)  # fmt: skip
    catalog._conn.execute("DELETE FROM evaluations")  # the same cells again, one per batch
    single = bench(catalog, ["cat"], ["surfing"], seeds=[3], batch_size=1, settings=SMALL,
                   **ENCODERS)  # fmt: skip
    assert single.generated == batched.generated == 4
    by_cell = {r["cell"]: r["metrics"] for r in batched.rows}
    for row in single.rows:
        for name, value in row["metrics"].items():
            assert value == pytest.approx(by_cell[row["cell"]][name], abs=1e-5)


def test_interrupted_grid_generates_only_the_missing_cells(catalog) -> None:
    half = bench(catalog, seeds=[0, 1], shard=(0, 2), settings=SMALL, **ENCODERS)
    rest = bench(catalog, seeds=[0, 1], settings=SMALL, **ENCODERS)
    assert (half.generated, rest.cells, rest.skipped, rest.generated) == (8, 16, 8, 8)


def test_two_shards_make_exactly_the_full_grid(catalog) -> None:
    halves = [bench(catalog, seeds=[0, 1], shard=(i, 2), settings=SMALL, **ENCODERS)
              for i in range(2)]  # fmt: skip
    assert [h.generated for h in halves] == [8, 8]
    cells = [r["cell"] for h in halves for r in h.rows]
    assert len(cells) == len(set(cells)) == 16
    full = bench(catalog, seeds=[0, 1], settings=SMALL, **ENCODERS)
    assert (full.cells, full.generated) == (16, 0)
    assert sorted(r["cell"] for r in full.rows) == sorted(cells)


def test_grid_errors(catalog) -> None:
    from dvkit.errors import DvkitError

    with pytest.raises(DvkitError, match="index must be between"):
        bench(catalog, shard=(2, 2), settings=SMALL, **ENCODERS)
    with pytest.raises(DvkitError, match="needs {subject} and {motion}"):
        bench(catalog, templates=["a photo"], settings=SMALL, **ENCODERS)
    with pytest.raises(DvkitError, match="no adapter named 'bird'"):
        bench(catalog, ["bird"], settings=SMALL, **ENCODERS)


def test_cli_bench(cli, catalog, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# templates\na {subject} {motion} at the beach\n")
    sizes = ("--steps", "2", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny")
    args = ("--home", catalog.home, "bench", "--subject", "cat", "--prompts", prompts, *sizes,
            "--motion-until", "0.5")  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0, err
    assert "4 cells: 4 generated, 0 already scored" in out
    assert {row["sampler"]["motion_until"] for row in catalog.evaluation_rows()} == {0.5}
    assert "joint" in out and "CLIP-T" in out
    code, out, _ = cli(*args)
    assert "4 cells: 0 generated, 4 already scored" in out
    code, _, err = cli("--home", catalog.home, "bench", "--shard", "3")
    assert code == 1 and "--shard takes i/n" in err
    code, _, err = cli("--home", catalog.home, "bench", "--motion-until", "2")
    assert code == 2 and err.count("\n") == 1 and "finite number from 0 to 1" in err


def test_report_files_and_rebuild(cli, catalog, tmp_path) -> None:
    import csv
    import json

    sizes = ("--steps", "2", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny")
    args = ("--home", catalog.home, "bench", "--subject", "cat", *sizes, "--out", tmp_path / "rep")
    code, out, err = cli(*args)
    assert code == 0, err
    folder = tmp_path / "rep"
    assert f"report: {folder / 'index.html'}" in out
    rows = list(csv.DictReader(open(folder / "cells.csv")))
    assert len(rows) == 4 and {r["role"] for r in rows} == {"joint", "subject", "motion", "base"}
    summary = json.loads((folder / "report.json").read_text())["summary"]
    assert set(summary["roles"]) == {"joint", "subject", "motion", "base"}
    for key in ("clip_t", "clip_i", "dino_i", "t_cons"):
        assert (folder / f"heatmap-{key}.png").is_file()
    page = (folder / "index.html").read_text()
    assert page.count("<figure>") == 4
    import re

    for source in re.findall(r'<img src="([^"]+)"', page):
        assert (folder / source).resolve().is_file(), source  # every image the page shows exists
    shutil.rmtree(folder)
    code, out, _ = cli(*args, "--report")
    assert code == 0 and "4 cells: 0 generated, 4 already scored" in out
    assert (folder / "index.html").read_text().count("<figure>") == 4


def test_encoders_are_part_of_each_cell_and_named_in_the_report(catalog, monkeypatch) -> None:
    from dvkit.evaluate import grid
    from dvkit.evaluate.report import encoders

    first = bench(catalog, ["cat"], seeds=[0], settings=SMALL, **ENCODERS)
    real = grid.Scorer
    monkeypatch.setattr(grid, "Scorer", lambda clip, dino, device: real("tiny", "tiny", device))
    other = bench(catalog, ["cat"], seeds=[0], settings=SMALL, clip="other", dino="tiny",
                  device="cpu")  # fmt: skip
    assert (first.generated, other.generated, other.skipped) == (4, 4, 0)  # scored anew
    assert encoders(other.rows) == ["CLIP other, DINO tiny"]
    assert encoders(first.rows) == ["CLIP tiny, DINO tiny"]


def test_report_uses_the_stored_cells_that_match(catalog) -> None:
    from dvkit.errors import DvkitError

    with pytest.raises(DvkitError, match="no stored cells of this grid: run dvkit bench"):
        bench(catalog, ["cat"], generate=False)
    made = bench(catalog, ["cat"], seeds=[0, 1], settings=SMALL, **ENCODERS)
    stored = bench(catalog, ["cat"], generate=False)  # no sampler options: any
    assert sorted(r["cell"] for r in stored.rows) == sorted(r["cell"] for r in made.rows)
    assert (stored.cells, stored.generated) == (8, 0)
    assert len(bench(catalog, ["cat"], seeds=[1], steps=2, clip="tiny", generate=False).rows) == 4
    with pytest.raises(DvkitError, match=r"match these settings \(stored: --steps 2 --guidance 9 "
                       r"--frames 3 --size 16 .* --clip tiny --dino tiny\)$"):  # fmt: skip
        bench(catalog, ["cat"], steps=7, generate=False)
    bench(catalog, ["cat"], seeds=[0], settings=SamplerSettings(steps=3, frames=3, height=16,
                                                                width=16), **ENCODERS)  # fmt: skip
    with pytest.raises(DvkitError, match="several settings: --steps 2 .*; --steps 3 .*; give"):
        bench(catalog, ["cat"], generate=False)


def test_cli_report_without_the_grid_options(cli, catalog, tmp_path) -> None:
    sizes = ("--steps", "2", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny")
    code, out, err = cli("--home", catalog.home, "bench", "--subject", "cat", *sizes)
    assert code == 0 and "scored with CLIP tiny, DINO tiny" in out, err
    report = tmp_path / "rep"
    code, out, err = cli("--home", catalog.home, "bench", "--report", "--out", report)
    assert code == 0 and "4 cells: 0 generated, 4 already scored" in out, err
    assert "scored with CLIP tiny, DINO tiny" in (report / "index.html").read_text()
    code, out, err = cli("--home", catalog.home, "bench", "--report", "--frames", "5")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: no stored cells of this grid match") and "--frames 3" in err


def test_subjects_sharing_a_token_each_get_their_own(catalog, tmp_path) -> None:
    from dvkit.evaluate.grid import _generation_tokens, load_adapter

    exported = tmp_path / "cat.safetensors"
    exported.write_bytes(catalog.read_blob(catalog.show("dog").blob))
    catalog.import_file(exported, name="hound", token="<cat>")
    result = bench(catalog, ["cat", "hound"], seeds=[0], baselines=False, settings=SMALL,
                   **ENCODERS)  # fmt: skip
    assert result.generated == 2
    assert sorted(r["prompt"] for r in result.rows) == ["a <cat> surfing"] * 2
    loaded = {ref: load_adapter(catalog, ref, None, "subject") for ref in ("cat@1", "hound@1")}
    assert _generation_tokens(loaded) == {"cat@1": "<cat>", "hound@1": "<hound-2>"}
    assert len(bench(catalog, ["cat", "hound"], generate=False).rows) == 2


def _fake_row(subject: str, motion: str, role: str, seed: int, value: float) -> dict:
    metrics = {key: value + offset / 1000 for offset, key in enumerate(
        ("clip_t", "clip_i", "dino_i", "t_cons", "gt_subject", "gt_colour", "gt_motion",
         "gt_t_cons"))}  # fmt: skip
    sampler = {"pair": [subject, motion], "role": role, "base": "sprites", "steps": 25,
               "guidance_scale": 2.0, "frames": 8, "height": 16, "width": 16,
               "motion_until": 0.4, "offset_noise": 0.0, "clip": "tiny", "dino": "tiny",
               "template": "a {subject} {motion}"}  # fmt: skip
    return {"sampler": sampler, "metrics": metrics, "seed": seed, "prompt": "p", "files": []}


def test_the_table_fits_80_columns_with_every_value_in_full() -> None:
    from dvkit.cli.bench_commands import extreme_lines, table_lines

    rows = [_fake_row("orange-triangle@1", "zigzag-fast@2", role, seed, 0.91234 - seed / 10)
            for role in ("joint", "subject", "motion", "base") for seed in (0, 1)]  # fmt: skip
    lines = table_lines(rows, 80)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    assert "…" not in text and "orange-triangle@1" in text and "zigzag-fast@2" in text
    for label in ("CLIP-T", "CLIP-I", "DINO-I", "T. Cons.", "Subj. fid.", "GT T. Cons."):
        assert label in text
    assert "0.8623" in text and "0.8693" in text  # means of seeds 0 and 1, first and last metric
    assert len([line for line in lines if line.startswith("SUBJECT")]) >= 2  # wrapped into blocks
    extremes = extreme_lines(rows)
    assert extremes[0].split()[:4] == ["CLIP-T", "best", "0.9123", "joint"]
    assert extremes[1].split()[:3] == ["worst", "0.8123", "joint"]
    assert all(len(line) <= 80 for line in extremes)


def test_a_two_base_catalog_benches_both_groups(cli, catalog, tmp_path, monkeypatch) -> None:
    import json

    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(folder / "0.png")
    clips = tmp_path / "clips"
    clips.mkdir()
    for index in range(3):
        frame = (rng.random((8, 8, 3)) * 255).astype("uint8")
        Image.fromarray(frame).save(clips / f"{index}.png")
    common = {"catalog": catalog, "base": "tiny-animatediff", "preset": "quick", "resolution": 8}
    add_subject("ant", [folder], inversion_steps=1, identity_steps=1, **common)
    add_motion("crawl", [clips], steps=1, frames=3, **common)
    monkeypatch.setenv("COLUMNS", "80")
    out_dir = tmp_path / "rep"
    args = ("--home", catalog.home, "bench", "--subject", "cat", "--subject", "ant", "--steps",
            "2", "--frames", "3", "--clip", "tiny", "--dino", "tiny", "--out", out_dir)  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0, err
    assert "8 cells: 8 generated, 0 already scored" in out
    assert "base tiny: steps 2," in out and "base tiny-animatediff: steps 2," in out
    assert "ant@1" in out and "crawl@1" in out and "cat@1" in out and "surfing@1" in out
    shown = [line for line in out.splitlines() if not line.startswith("report: ")]
    assert "…" not in out and all(len(line) <= 80 for line in shown), out
    assert "CLIP-T      best  " in out and " joint " in out and " base " in out
    assert "loss" not in err
    report = json.loads((out_dir / "report.json").read_text())
    settings = report["summary"]["settings"]
    assert set(settings) == {"tiny", "tiny-animatediff"}
    assert settings["tiny-animatediff"]["height"] == 8 and settings["tiny"]["height"] == 16
    assert settings["tiny"]["seeds"] == [0] and settings["tiny"]["encoders"] == [
        "CLIP tiny, DINO tiny"]  # fmt: skip
    page = (out_dir / "index.html").read_text()
    assert "<h2>Settings</h2>" in page and "tiny-animatediff" in page
    code, out, err = cli(*args[:2], "bench", "--base", "tiny-animatediff", "--report",
                         "--out", out_dir)  # fmt: skip
    assert code == 0, err
    assert "4 cells: 0 generated, 4 already scored" in out and "base tiny:" not in out


def test_progress_bars_count_their_unit_and_show_a_loss_only_for_training() -> None:
    from rich.progress import TextColumn

    from dvkit.cli.progress import RichReporter

    def texts(reporter: RichReporter) -> list[str]:
        columns = reporter._progress.columns
        return [c.text_format for c in columns if isinstance(c, TextColumn)]

    cells = texts(RichReporter(unit="cells", loss=False))
    assert "cells" in cells and not any("loss" in text for text in cells)
    assert "steps" in texts(RichReporter()) and any("loss" in t for t in texts(RichReporter()))


def test_the_rate_leaves_out_the_cells_stored_before() -> None:
    """28/64 cells with 24 stored before: one batch of 4 made in 20 s is 0.2 cells/s (not a
    rate over the moments between the cells of one batch)."""
    from dvkit.cli.progress import RichReporter
    from dvkit.train.loop import count_progress

    reporter = RichReporter(unit="cells", loss=False)
    now = [0.0]
    reporter._progress.get_time = lambda: now[0]
    on_cell = count_progress(reporter, "cells")
    on_cell(24, 64)  # the run starts
    now[0] = 20.0
    for done in range(25, 29):
        on_cell(done, 64)
    task = reporter._progress.tasks[0]
    assert (task.completed, task.speed) == (28, 0.2)
    reporter.end()
