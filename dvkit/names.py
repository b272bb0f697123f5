"""Names, versioned references (`cat`, `cat@3`) and tags."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dvkit.errors import InvalidNameError

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TAG = re.compile(r"[a-z0-9][a-z0-9_.:-]*")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a valid catalog name, else raise InvalidNameError."""
    if not name:
        raise InvalidNameError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def name_from_text(text: str) -> str | None:
    """A valid name made from free text (a file name, an embedding's own name), or None.

    Lowercased; every run of other characters becomes `-`; leading `-`/`_` and trailing `-`
    are dropped and the result is cut at MAX_NAME_LENGTH: `Cat Toy (v2)` → `cat-toy-v2`.
    """
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower())
    name = name.lstrip("-_")[:MAX_NAME_LENGTH].rstrip("-")
    return name or None


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag (like a name, but '.' and ':' are allowed too)."""
    if not tag or len(tag) > MAX_NAME_LENGTH or not _TAG.fullmatch(tag):
        raise InvalidNameError(
            f"invalid tag {tag!r}: use up to {MAX_NAME_LENGTH} lowercase letters, digits, "
            "'-', '_', '.' and ':'"
        )
    return tag


def validate_token(token: str) -> str:
    """Return `token` if it can be a subject's learned token (non-empty, without spaces)."""
    if not token or any(c.isspace() for c in token):
        raise InvalidNameError(f"invalid token {token!r}: it must be non-empty, without spaces")
    return token


@dataclass(frozen=True)
class Ref:
    """A reference to an adapter: a name and an optional version (None means the newest)."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: str) -> Ref:
    """Parse `name` or `name@version`."""
    name, sep, version = text.partition("@")
    validate_name(name)
    if not sep:
        return Ref(name)
    if not version.isdigit() or int(version) < 1:
        raise InvalidNameError(f"invalid version in {text!r}: expected a positive number after '@'")
    return Ref(name, int(version))
