"""Grid reports people can look at: CSV and JSON of every cell, a heatmap PNG per metric
(subject × motion, joint cells, on one fixed scale per metric with a colour legend), and an HTML
page with the settings used per base (steps, guidance, seeds, frames, size, encoders), the
means and every cell's GIF and scores. Each file is written whole or not at all
(`dvkit.io.files.atomic_output`)."""

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
SCALE = (0.0, 1.0)
"""The heatmaps' colour scale, the same for every metric: raw cosines (CLIP-T, CLIP-I, DINO-I,
T. Cons.) and the sprites ground-truth scores all lie in 0–1 for real videos (lower cosines
show as the scale's end)."""
SETTINGS = {
    "steps": "steps", "guidance_scale": "guidance", "frames": "frames", "height": "size",
    "motion_until": "motion until", "offset_noise": "offset noise",
}  # fmt: skip
"""Sampler settings a report states, with their names."""


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
    by_pair: dict[tuple[str, str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        pair, role = row["sampler"]["pair"], row["sampler"]["role"]
        by_role[role].append(row["metrics"])
        by_pair[(_base(row), pair[0], pair[1], role)].append(row["metrics"])
    return {
        "roles": {role: _means(scores) for role, scores in by_role.items()},
        "pairs": [
            {
                "base": b,
                "subject": s,
                "motion": m,
                "role": role,
                "count": len(scores),
                **_means(scores),
            }
            for (b, s, m, role), scores in sorted(by_pair.items(), key=_pair_order)
        ],  # fmt: skip
    }


def _pair_order(item: tuple[tuple[str, str, str, str], list]) -> tuple:
    (base, subject, motion, role), _ = item
    return base, subject, motion, ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


def _base(row: dict[str, Any]) -> str:
    return str(row["sampler"].get("base") or "?")


def by_base(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The cells grouped by the base they were generated on, in order of base name."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[_base(row)].append(row)
    return dict(sorted(groups.items()))


def settings_used(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per base, what its cells were made with: the sampler settings (`SETTINGS`; a list where
    cells differ), seeds, prompt templates and evaluation encoders."""
    used = {}
    for base, cells in by_base(rows).items():
        samplers = [row["sampler"] for row in cells]
        entry: dict[str, Any] = {key: _one_or_all(s.get(key) for s in samplers) for key in SETTINGS}
        entry["width"] = _one_or_all(s.get("width") for s in samplers)
        entry["seeds"] = sorted({row["seed"] for row in cells})
        entry["templates"] = sorted({str(s.get("template")) for s in samplers})
        entry["encoders"] = encoders(cells)
        used[base] = entry
    return used


def describe_settings(rows: list[dict[str, Any]]) -> str:
    """One line of what the cells (of one base) were made with: 'steps 25, guidance 2, frames
    8, size 16×16, …, seeds 0 1; scored with CLIP tiny, DINO tiny'."""
    (entry,) = settings_used(rows).values()
    parts = []
    for key, name in SETTINGS.items():
        value = _text(entry[key])
        parts.append(f"{name} {value}×{_text(entry['width'])}" if key == "height" else
                     f"{name} {value}")  # fmt: skip
    parts.append("seeds " + " ".join(map(str, entry["seeds"])))
    return f"{', '.join(parts)}; scored with {'; '.join(entry['encoders'])}"


def _one_or_all(values: Any) -> Any:
    """The one value, or the sorted distinct values when there are several."""
    distinct = sorted(set(values), key=str)
    return distinct[0] if len(distinct) == 1 else distinct


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(map(_text, value))
    return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


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
    document = {
        "summary": {**summary, "encoders": encoders(rows), "settings": settings_used(rows)},
        "cells": rows,
    }
    write_atomically(report.json, json.dumps(document, indent=2, default=str))
    for key, label in columns.items():
        path = folder / f"heatmap-{key}.png"
        if draw_heatmap(summary["pairs"], key, label, path):
            report.heatmaps.append(path)
    write_atomically(report.html, _html(rows, summary, report, columns))
    return report


def draw_heatmap(pairs: list[dict[str, Any]], key: str, label: str, path: Path) -> bool:
    """A subject × motion grid of the joint cells' mean `key`, coloured on the fixed `SCALE`
    with a colour legend (bases side by side: rows and columns in order of base; pairs across
    bases are grey); False if no cell has it."""
    from PIL import Image, ImageDraw

    values = {(p["subject"], p["motion"]): p[key] for p in pairs
              if p["role"] == "joint" and p.get(key) is not None}  # fmt: skip
    if not values:
        return False
    bases = {p["subject"]: p["base"] for p in pairs} | {p["motion"]: p["base"] for p in pairs}
    subjects = sorted({s for s, _ in values}, key=lambda name: (bases[name], name))
    motions = sorted({m for _, m in values}, key=lambda name: (bases[name], name))
    cell_w, cell_h, left, top, legend_h = 110, 44, 120, 56, 50
    image = Image.new("RGB", (max(left + cell_w * len(motions) + 10, 380),
                              top + cell_h * len(subjects) + 10 + legend_h), "white")  # fmt: skip
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
            share = _share(value)
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=_colour(share))
            draw.text((x + 30, y + 14), f"{value:.4f}", fill="black" if share > 0.5 else "white")
    _legend(draw, 10, top + cell_h * len(subjects) + 16)
    with atomic_output(path) as partial:
        image.save(partial, format="PNG")
    return True


def _share(value: float) -> float:
    """Where `value` lies on `SCALE`, 0 to 1 (clipped at its ends)."""
    low, high = SCALE
    return min(max((value - low) / (high - low), 0.0), 1.0)


def _legend(draw: Any, x: int, y: int, width: int = 300, height: int = 12) -> None:
    """A colour bar from the scale's low end to its high end, labelled at both ends and the
    middle."""
    for offset in range(width):
        draw.line((x + offset, y, x + offset, y + height), fill=_colour(offset / (width - 1)))
    low, high = SCALE
    for share in (0.0, 0.5, 1.0):
        mark = x + round(share * (width - 1))
        draw.line((mark, y + height, mark, y + height + 4), fill="black")
        draw.text((max(mark - 8, x), y + height + 6), f"{low + share * (high - low):g}",
                  fill="black")  # fmt: skip


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
    settings = _settings_table(rows)
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
T. Cons. are measured from pixels (0 to 1). Every heatmap colours the same fixed scale,
{SCALE[0]:g} to {SCALE[1]:g}, shown in its legend.</p>
<h2>Settings</h2>{settings}
<h2>Means by role</h2><table><tr><th>role</th>{head}</tr>{role_rows}</table>
<h2>Heatmaps</h2><div class="maps">{heatmaps}</div>
<h2>Every cell</h2>{"".join(cells)}
</body></html>
"""


def _settings_table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of `settings_used`: one row per base."""
    esc = html.escape
    names = ["base", *SETTINGS.values(), "seeds", "prompt templates", "encoders"]
    head = "".join(f"<th>{esc(name)}</th>" for name in names)
    body = []
    for base, entry in settings_used(rows).items():
        size = f"{_text(entry['height'])}×{_text(entry['width'])}"
        cells = [base, *(size if key == "height" else _text(entry[key]) for key in SETTINGS),
                 " ".join(map(str, entry["seeds"])), " | ".join(entry["templates"]),
                 "; ".join(entry["encoders"])]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _score_cells(means: dict[str, float | None], columns: dict[str, str]) -> str:
    return "".join(f"<td>{shown(means.get(key))}</td>" for key in columns)
