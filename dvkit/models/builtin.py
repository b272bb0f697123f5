"""Built-in bases that need no download. Light: importable without torch."""

from __future__ import annotations

BUILTIN_BASES: dict[str, str] = {
    "tiny": "tiny random components for tests and smoke runs (meaningless pictures)",
}
