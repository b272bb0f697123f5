"""Where composed videos go: named after what they show (`cat-surfing-seed0.mp4`), never over
an existing file, in a folder created when missing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dvkit.io.files import make_folder
from dvkit.io.video import check_writable_folder, video_format


def video_label(subject: str | None, motion: str | None) -> str:
    """What a video shows, from its adapters' names: `cat-surfing`, `cat`, `surfing`, `base`."""
    return "-".join(name for name in (subject, motion) if name) or "base"


def video_targets(
    out: Path, seeds: Sequence[int], formats: Sequence[str], label: str, is_folder: bool
) -> list[list[Path]]:
    """Files per seed: `out` as one file (with `-seedN` for several seeds), or in the folder
    `out` as `LABEL-seedN.FORMAT`, `LABEL-seedN-2.FORMAT`, … whichever is free for every
    format. Folders (the file's, or `out`) are created when missing."""
    if not is_folder:
        video_format(out)
        check_writable_folder(make_folder(out.parent if str(out.parent) else Path(".")))
        if len(seeds) == 1:
            return [[out]]
        return [[out.with_name(f"{out.stem}-seed{seed}{out.suffix}")] for seed in seeds]
    check_writable_folder(make_folder(out))
    return [_free(out, f"{label}-seed{seed}", formats) for seed in seeds]


def is_folder_output(out: Path) -> bool:
    """`--out` names a folder when it is one, or when it has no file extension."""
    return out.is_dir() or not out.suffix


def _free(folder: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """`stem` (or `stem-2`, `stem-3`, …) with each format, where none of them exists yet."""
    count = 1
    while True:
        name = stem if count == 1 else f"{stem}-{count}"
        paths = [folder / f"{name}.{fmt}" for fmt in formats]
        if not any(path.exists() for path in paths):
            return paths
        count += 1
