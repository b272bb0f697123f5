"""Prompt templates (`bench --prompts`, `add-subject --prompt`): text with named placeholders,
checked before any work starts so that filling them in cannot fail. Light: standard library
only."""

from __future__ import annotations

from collections.abc import Sequence
from string import Formatter

from dvkit.errors import DvkitError


def check_template(template: str, names: Sequence[str], what: str = "prompt template") -> str:
    """`template` if its placeholders are exactly `{name}` for each of `names` (each at least
    once; `{{` and `}}` are literal braces), else a `DvkitError` naming the allowed ones."""
    allowed = " and ".join(f"{{{name}}}" for name in names)
    try:
        fields = [
            (field, conversion, spec)
            for _, field, spec, conversion in Formatter().parse(template)
            if field is not None
        ]
    except ValueError:
        raise DvkitError(
            f"{what} {template!r} has an unmatched brace: placeholders are {allowed} "
            "(write {{ and }} for literal braces)"
        ) from None
    for field, conversion, spec in fields:
        if field not in names or conversion or spec:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise DvkitError(
                f"{what} {template!r} has an unknown placeholder {{{shown}}}: use {allowed} "
                "(write {{ and }} for literal braces)"
            )
    if any(name not in {field for field, _, _ in fields} for name in names):
        raise DvkitError(f"{what} {template!r} needs {allowed}")
    return template
