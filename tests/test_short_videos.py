"""Scoring short videos: a 1-frame video is scored for what applies to it, and its T. Cons.
(no consecutive pair of frames) is not applicable: None in the library, "n/a" in tables and
the HTML report, null in JSON, empty in CSV, no heatmap."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dvkit.catalog import Catalog
from dvkit.evaluate.report import summarise, write_report
from dvkit.evaluate.score import Scorer
from dvkit.io.video import write_video

FRAME = (np.random.default_rng(3).random((24, 24, 3)) * 255).astype(np.uint8)
ENCODERS = ("--clip", "tiny", "--dino", "tiny")


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer("tiny", "tiny", "cpu")


def test_one_frame_scores_everything_but_temporal_consistency(scorer) -> None:
    one = scorer.score(FRAME[None], "a cat", references=FRAME[None])
    assert one["t_cons"] is None
    still = scorer.score(np.repeat(FRAME[None], 2, axis=0), "a cat", references=FRAME[None])
    for key in ("clip_t", "clip_i", "dino_i"):  # per-frame means: a still scores like its frame
        assert one[key] == pytest.approx(still[key], abs=1e-6), key
    assert one["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert still["t_cons"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["gif", "mp4", "frame folder"])
def test_cli_score_of_a_one_frame_video(cli, tmp_path, kind) -> None:
    if kind == "frame folder":
        video = tmp_path / "frames"
        video.mkdir()
        Image.fromarray(FRAME).save(video / "0.png")
    else:
        video = write_video(FRAME[None], tmp_path / f"one.{kind}", 8.0)
    code, out, err = cli("score", video, "--prompt", "a cat", *ENCODERS, "--json")
    scores = json.loads(out)
    assert code == 0 and "Traceback" not in err, err
    assert scores["t_cons"] is None and -1 <= scores["clip_t"] <= 1
    code, out, err = cli("score", video, "--prompt", "a cat", *ENCODERS)
    assert code == 0 and out.splitlines() == [
        f"CLIP-T      {scores['clip_t']:.4f}",
        "T. Cons.    n/a",
    ], err


def _row(role: str, seed: int, t_cons: float | None) -> dict:
    return {
        "sampler": {"pair": ["cat", "surfing"], "role": role},
        "metrics": {"clip_t": 0.2 + seed / 10, "t_cons": t_cons},
        "prompt": "a cat surfing",
        "seed": seed,
        "files": [],
    }


def test_report_of_one_frame_cells(tmp_path) -> None:
    rows = [_row("joint", 0, None), _row("joint", 1, None), _row("base", 0, None)]
    report = write_report(rows, tmp_path / "report")
    summary = json.loads(report.json.read_text())["summary"]
    assert summary["roles"]["joint"]["t_cons"] is None
    assert summary["roles"]["joint"]["clip_t"] == pytest.approx(0.25)
    assert [cell["metrics"]["t_cons"] for cell in json.loads(report.json.read_text())["cells"]] == [
        None, None, None
    ]  # fmt: skip
    with open(report.csv, newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [cell["t_cons"] for cell in cells] == ["", "", ""]
    assert [cell["clip_t"] for cell in cells] == ["0.2", "0.30000000000000004", "0.2"]
    assert [path.name for path in report.heatmaps] == ["heatmap-clip_t.png"]
    page = report.html.read_text()
    assert "<td>joint</td><td>0.2500</td><td>n/a</td>" in page
    assert "CLIP-T 0.200 · T. Cons. n/a" in page


def test_means_leave_out_cells_where_a_metric_does_not_apply() -> None:
    rows = [_row("joint", 0, None), _row("joint", 1, 0.5), _row("joint", 2, 0.7)]
    (pair,) = summarise(rows)["pairs"]
    assert pair["t_cons"] == pytest.approx(0.6) and pair["count"] == 3


@pytest.fixture(scope="module")
def grid_home(tmp_path_factory):
    import imageio.v3 as iio

    from dvkit.train.api import add_motion, add_subject

    root = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(0)
    catalog, _ = Catalog.init(root / "registry")
    with catalog:
        images = root / "cat"
        images.mkdir()
        for index in range(2):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(
                images / f"{index}.png"
            )
        add_subject("cat", [images], catalog=catalog, preset="quick", inversion_steps=1,
                    identity_steps=1)  # fmt: skip
        videos = root / "videos"
        videos.mkdir()
        iio.imwrite(videos / "0.gif", (rng.random((3, 16, 16, 3)) * 255).astype("uint8"))
        add_motion("surfing", [videos], catalog=catalog, preset="quick", steps=1, frames=2)
    return root / "registry"


def test_cli_bench_of_one_frame_videos(cli, grid_home) -> None:
    args = ("--home", grid_home, "bench", "--frames", "1", "--steps", "1", "--size", "16",
            *ENCODERS)  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0 and "Traceback" not in err, err
    lines = out.splitlines()
    assert lines[0].startswith("base tiny: steps 1,")  # the settings used, then the table
    start = next(i for i, line in enumerate(lines) if line.startswith("SUBJECT"))
    header, *table = [line.split() for line in lines[start : start + 5]]
    assert " ".join(header) == "SUBJECT MOTION ROLE N CLIP-T CLIP-I DINO-I T. Cons."
    assert [line[2] for line in table] == ["joint", "subject", "motion", "base"]
    assert [line[-1] for line in table] == ["n/a"] * 4  # T. Cons.
    assert all(-1 <= float(value) <= 1 for line in table for value in line[4:7])
    code, out, _ = cli(*args, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert {row["metrics"]["t_cons"] for row in rows} == {None}
    assert all(isinstance(row["metrics"]["clip_t"], float) for row in rows)
    folder = grid_home / "reports" / "grid"
    assert not (folder / "heatmap-t_cons.png").exists() and (folder / "heatmap-clip_t.png").exists()
    assert "T. Cons. n/a" in (folder / "index.html").read_text()
