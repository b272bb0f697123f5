"""Expanding the files and folders a user names into the data files they hold.

A folder holds more than data: hidden files and the litter other systems leave (macOS `._*`
AppleDouble files and `.DS_Store`, Windows `Thumbs.db` and `desktop.ini`) are skipped, for
images, masks, clips and folders of frames alike, and so is anything of another type. What was
used and what was skipped is kept, so that the command can say it in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvkit.errors import DvkitError
from dvkit.wording import plural

LITTER = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})
"""Files other systems write into folders (lowercase); hidden files (`.name`) are litter too."""
NAMES_SHOWN = 5


class DataError(DvkitError):
    """Input data (images, masks, clips) that is missing, unreadable or unusable."""


def is_litter(path: Path) -> bool:
    """Hidden files (`.DS_Store`, macOS `._*` AppleDouble files, ...) and `Thumbs.db` /
    `desktop.ini`."""
    return path.name.startswith(".") or path.name.lower() in LITTER


@dataclass
class Collected:
    """The files found for one kind of input, the names skipped, and what the user named."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    def describe(self, noun: str) -> str:
        """One line such as `using 5 images from ./cat (2 skipped: ._0.png, .DS_Store)`."""
        line = f"using {plural(len(self.paths), noun)} from {_listed(self.sources)}"
        if self.skipped:
            line += f" ({len(self.skipped)} skipped: {_listed(self.skipped)})"
        return line


def list_folder(folder: Path, extensions: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files of `folder` with one of `extensions` (sorted, not recursive), and the names of
    the other entries: litter, other types, subfolders (shown with a trailing `/`)."""
    used, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not is_litter(entry) and entry.suffix.lower() in extensions:
            used.append(entry)
        else:
            skipped.append(entry.name + ("/" if entry.is_dir() else ""))
    return used, skipped


def frame_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The frame images of a folder of frames, in name order."""
    return list_folder(folder, extensions)[0]


def collect_files(
    inputs: Sequence[str | Path],
    extensions: Sequence[str],
    what: str,
    frame_extensions: Sequence[str] = (),
) -> Collected:
    """Expand folders and check files. A folder holding no file of `extensions` but files of
    `frame_extensions` counts as one input itself (a folder of frames). Litter named
    explicitly is skipped too; another file of the wrong type is an error.

    Raises:
        DataError: a missing path, a file of an unsupported type, nothing found.
    """
    found = Collected()
    for item in map(Path, inputs):
        found.sources.append(item)
        if item.is_dir():
            entries, skipped = list_folder(item, extensions)
            if not entries and frame_extensions:
                frames, frame_skipped = list_folder(item, frame_extensions)
                if frames:
                    entries, skipped = [item], frame_skipped
            if not entries:
                raise DataError(f"no {what} found in {item} (expected {', '.join(extensions)})")
            found.paths += entries
            found.skipped += skipped
        elif item.is_file() and is_litter(item):
            found.skipped.append(item.name)
        elif item.is_file():
            if item.suffix.lower() in frame_extensions and item.suffix.lower() not in extensions:
                raise DataError(
                    f"{item}: a still image, not a clip (give video files, GIFs or folders "
                    "that each hold one clip's frames)"
                )
            if item.suffix.lower() not in extensions:
                raise DataError(
                    f"{item}: unsupported file type {item.suffix or '(none)'} "
                    f"(expected {', '.join(extensions)})"
                )
            found.paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found.paths and found.skipped:
        raise DataError(
            f"no {what} given: skipped {_listed(found.skipped)} (hidden files and system "
            "litter such as ._*, .DS_Store and Thumbs.db are never read)"
        )
    if not found.paths:
        raise DataError(f"no {what} given")
    return found


def _listed(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:NAMES_SHOWN])
    return shown + (", …" if len(items) > NAMES_SHOWN else "")
