"""How `--help` shows defaults, in one style: typer's `[default: …]`, given as `show_default`
where the default is not a plain value. Light: no imports.

A default that depends on the base (its family's, or a built-in base's own; README's Bases
table lists them) shows as `[default: the base's]`.
"""

BASE_DEFAULT = "the base's"
"""A default taken from the base (see `dvkit.models.builtin.sampling_default`)."""
MOTION_UNCOND_DEFAULT = "the motion's own, else 1.0"
"""The unconditional branch's λ: the motion adapter's own (its preset's), 1.0 when it records
none (see `dvkit.models.builtin.motion_uncond_strength`)."""
CHOSEN_BASE_DEFAULT = "$DVKIT_BASE, else the catalog's default base"
"""The base used when `--base` is not given (see `dvkit.bases.choose_base`)."""
