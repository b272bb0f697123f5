"""Grid reports people can look at: CSV and JSON of every cell, a heatmap PNG per metric
(subject × motion, joint cells), and an HTML page with every cell's GIF and scores. Each file
is written whole or not at all (`dvkit.io.files.atomic_output`)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvkit.evaluate.labels import METRICS, present, shown
from dvkit.io.files import atomic_output, make_folder, write_atomically

ROLE_ORDER = ("joint", "subject", "motion", "base")


@dataclass
class Report:
    folder: Path
    csv: Path
    json: Path
    html: Path
    heatmaps: list[Path] = field(default_factory=list)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per role (over every pair, prompt and seed) and per pair and role, sorted; a mean
    is None where no cell has the metric or it applies to none (T. Cons. of 1-frame videos)."""
    by_role: dict[str, list[dict]] = defaultdict(list)
    by_pair: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        pair, role = row["sampler"]["pair"], row["sampler"]["role"]
        by_role[role].append(row["metrics"])
        by_pair[(pair[0], pair[1], role)].append(row["metrics"])
    return {
        "roles": {role: _means(scores) for role, scores in by_role.items()},
        "pairs": [
            {"subject": s, "motion": m, "role": role, "count": len(scores), **_means(scores)}
            for (s, m, role), scores in sorted(by_pair.items())
        ],
    }


def encoders(rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation encoders the cells were scored with, 'CLIP X, DINO Y' each ('unknown'
    for cells stored before dvkit recorded them)."""
    samplers = [row["sampler"] for row in rows]
    return sorted({f"CLIP {s.get('clip', 'unknown')}, DINO {s.get('dino', 'unknown')}"
                   for s in samplers})  # fmt: skip


def write_report(rows: list[dict[str, Any]], folder: Path) -> Report:
    """Write CSV, JSON, heatmaps and HTML for the grid's evaluations into `folder`; a file that
    cannot be written is a `DvkitError` and is left as it was."""
    make_folder(folder)
    report = Report(folder, folder / "cells.csv", folder / "report.json", folder / "index.html")
    summary = summarise(rows)
    columns = present([row["metrics"] for row in rows])
    _write_csv(rows, report.csv, columns)
    document = {"summary": {**summary, "encoders": encoders(rows)}, "cells": rows}
    write_atomically(report.json, json.dumps(document, indent=2, default=str))
    for key, label in columns.items():
        path = folder / f"heatmap-{key}.png"
        if draw_heatmap(summary["pairs"], key, label, path):
            report.heatmaps.append(path)
    write_atomically(report.html, _html(rows, summary, report, columns))
    return report


def draw_heatmap(pairs: list[dict[str, Any]], key: str, label: str, path: Path) -> bool:
    """A subject × motion grid of the joint cells' mean `key`; False if no cell has it."""
    from PIL import Image, ImageDraw

    values = {(p["subject"], p["motion"]): p[key] for p in pairs
              if p["role"] == "joint" and p.get(key) is not None}  # fmt: skip
    if not values:
        return False
    subjects = sorted({s for s, _ in values})
    motions = sorted({m for _, m in values})
    low, high = min(values.values()), max(values.values())
    cell_w, cell_h, left, top = 110, 44, 120, 56
    image = Image.new("RGB", (left + cell_w * len(motions) + 10, top + cell_h * len(subjects) + 10),
                      "white")  # fmt: skip
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"{label} (joint cells; rows: subjects, columns: motions)", fill="black")
    for column, motion in enumerate(motions):
        draw.text((left + column * cell_w + 6, top - 18), motion[:16], fill="black")
    for row, subject in enumerate(subjects):
        draw.text((10, top + row * cell_h + 14), subject[:16], fill="black")
        for column, motion in enumerate(motions):
            value = values.get((subject, motion))
            x, y = left + column * cell_w, top + row * cell_h
            if value is None:
                draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill="#dddddd")
                continue
            share = 0.5 if high == low else (value - low) / (high - low)
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=_colour(share))
            draw.text((x + 30, y + 14), f"{value:.4f}", fill="black" if share > 0.5 else "white")
    with atomic_output(path) as partial:
        image.save(partial, format="PNG")
    return True


def _colour(share: float) -> tuple[int, int, int]:
    """Dark blue (low) to yellow (high)."""
    low, high = (43, 45, 110), (249, 199, 79)
    return tuple(round(a + (b - a) * share) for a, b in zip(low, high, strict=True))


def _means(scores: list[dict[str, float | None]]) -> dict[str, float | None]:
    means: dict[str, float | None] = {}
    for key in METRICS:
        values = [value for s in scores if (value := s.get(key)) is not None]
        means[key] = sum(values) / len(values) if values else None
    return means


def _write_csv(rows: list[dict[str, Any]], path: Path, columns: dict[str, str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["subject", "motion", "role", "prompt", "seed", *columns, "video"])
    for row in rows:
        pair, scores = row["sampler"]["pair"], row["metrics"]
        writer.writerow([pair[0], pair[1], row["sampler"]["role"], row["prompt"], row["seed"],
                         *("" if scores.get(k) is None else scores[k] for k in columns),
                         (row.get("files") or [""])[0]])  # fmt: skip
    write_atomically(path, text.getvalue())


def _html(
    rows: list[dict[str, Any]], summary: dict[str, Any], report: Report, columns: dict[str, str]
) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(label)}</th>" for label in columns.values())
    role_rows = "".join(
        f"<tr><td>{esc(role)}</td>{_score_cells(summary['roles'][role], columns)}</tr>"
        for role in ROLE_ORDER if role in summary["roles"]
    )  # fmt: skip
    heatmaps = "".join(f'<img src="{esc(p.name)}" alt="{esc(p.stem)}">' for p in report.heatmaps)
    cells = []
    for row in sorted(rows, key=lambda r: (r["sampler"]["pair"], ROLE_ORDER.index(
            r["sampler"]["role"]), r["prompt"], r["seed"])):  # fmt: skip
        video = (row.get("files") or [""])[0]
        source = os.path.relpath(video, report.folder) if video else ""
        pair = " × ".join(row["sampler"]["pair"])
        scores = " · ".join(f"{METRICS[k]} {shown(v, 3)}" for k, v in row["metrics"].items())
        cells.append(
            f'<figure><img src="{esc(source)}" alt="{esc(pair)} {esc(row["sampler"]["role"])}">'
            f"<figcaption><b>{esc(pair)}</b> — {esc(row['sampler']['role'])}<br>"
            f"{esc(row['prompt'])} (seed {row['seed']})<br>{esc(scores)}</figcaption></figure>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dvkit grid report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{padding:4px 10px;border-bottom:1px solid #ccc;text-align:right}}
figure{{display:inline-block;margin:8px;width:220px;vertical-align:top;font-size:12px}}
figure img{{width:200px;image-rendering:pixelated}} .maps img{{margin:8px}}</style></head>
<body><h1>dvkit grid report</h1>
<p>{len(rows)} cells, scored with {esc("; ".join(encoders(rows)))}. CLIP-T, CLIP-I, DINO-I
and T. Cons. are raw cosines; on the sprites base, subject fidelity, motion fidelity and GT
T. Cons. are measured from pixels (0 to 1).</p>
<h2>Means by role</h2><table><tr><th>role</th>{head}</tr>{role_rows}</table>
<h2>Heatmaps</h2><div class="maps">{heatmaps}</div>
<h2>Every cell</h2>{"".join(cells)}
</body></html>
"""


def _score_cells(means: dict[str, float | None], columns: dict[str, str]) -> str:
    return "".join(f"<td>{shown(means.get(key))}</td>" for key in columns)
