"""Wording shared by the lines dvkit prints: counts with their noun in the right number."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 frame`, `2 frames`, `0 frames` (`many` for nouns that do not just add an s)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def duration(seconds: float) -> str:
    """`8 s`, `3 min 20 s`, `2 h 05 min`: rounded to what a person plans with."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(whole // 60, 60)
    return f"{hours} h {rest:02d} min"
