"""Finding the catalog folder: --home, then DVKIT_HOME, then the nearest `registry/` upwards."""

from __future__ import annotations

import os
from pathlib import Path

from dvkit.errors import CatalogNotFoundError

ENV_VAR = "DVKIT_HOME"
FOLDER_NAME = "registry"
DB_NAME = "catalog.db"


def default_init_path(explicit: Path | None = None) -> Path:
    """Where `dvkit init` creates a catalog when no path is given."""
    if explicit is not None:
        return explicit
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path.cwd() / FOLDER_NAME


def find_home(explicit: Path | None = None, start: Path | None = None) -> Path:
    """Return the catalog folder to use, or raise CatalogNotFoundError with a hint."""
    chosen = explicit if explicit is not None else _from_env()
    if chosen is not None:
        if not (chosen / DB_NAME).is_file():
            raise CatalogNotFoundError(
                f"no catalog at {chosen} (create one with: dvkit init {chosen})"
            )
        return chosen.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / FOLDER_NAME
        if (candidate / DB_NAME).is_file():
            return candidate
    raise CatalogNotFoundError(
        f"no catalog found in {here} or its parents (create one with: dvkit init)"
    )


def _from_env() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None
