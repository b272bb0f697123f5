"""How `--help` shows defaults, in one style: `[default: …]` after the description. Typer writes
it for plain default values; `described` writes it for defaults that are not a value (they come
from the base, an adapter or the catalog). Light: no imports.

A default that depends on the base (its family's, or a built-in base's own; README's Bases
table lists them) shows as `[default: the base's]`.
"""

BASE_DEFAULT = "the base's"
"""A default taken from the base (see `dvkit.models.builtin.sampling_default`)."""
PRESET_DEFAULT = "the preset's"
"""A training default taken from `--preset` (see `dvkit.train.settings`)."""
MOTION_UNCOND_DEFAULT = "the motion's own, else 1.0"
"""The unconditional branch's λ: the motion adapter's own (its preset's), 1.0 when it records
none (see `dvkit.models.builtin.motion_uncond_strength`)."""
CHOSEN_BASE_DEFAULT = "$DVKIT_BASE, else the catalog's default base"
"""The base used when `--base` is not given (see `dvkit.bases.choose_base`)."""
DEFAULT_MARK = "[default: "
"""How every shown default starts."""


def described(text: str, default: str) -> str:
    """Help `text` followed by `[default: DEFAULT]`, as typer shows a plain default (the bracket
    escaped from rich markup)."""
    return f"{text} \\{DEFAULT_MARK}{default}]"
