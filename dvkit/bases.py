"""Base models in the catalog: adding them, and opening one for training or sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dvkit.catalog import Catalog
from dvkit.catalog.records import BaseModelRecord
from dvkit.errors import NotFoundError
from dvkit.models.builtin import BUILTIN_BASES
from dvkit.names import validate_name

if TYPE_CHECKING:
    from dvkit.models.components import BaseComponents


def add_base(catalog: Catalog, name: str, source: str) -> BaseModelRecord:
    """Load a base from a Hub id or local diffusers folder, fingerprint it and register it."""
    from dvkit.models.loading import load_base

    validate_name(name, "base name")
    components = load_base(source, name)
    record = _record(components, name, source)
    catalog.add_base(record)
    return record


def open_base(catalog: Catalog, name: str) -> tuple[BaseComponents, BaseModelRecord]:
    """The components of a base known to the catalog (built-ins are registered on first use)."""
    from dvkit.models.loading import load_base

    validate_name(name, "base name")
    try:
        record = catalog.base(name)
    except NotFoundError:
        if name not in BUILTIN_BASES:
            names = {*BUILTIN_BASES, *(row["name"] for row in catalog.base_rows())}
            known = ", ".join(sorted(names))
            raise NotFoundError(
                f"unknown base {name!r} (known: {known}; add one with: dvkit base add NAME SOURCE)"
            ) from None
        components = load_base(name, name)
        record = _record(components, name, f"builtin:{name}")
        catalog.add_base(record)
        return components, record
    return load_base(record.source, name), record


def _record(components: BaseComponents, name: str, source: str) -> BaseModelRecord:
    unet = components.unet.config
    return BaseModelRecord(
        name=name,
        source=source,
        fingerprint=components.fingerprint(),
        architecture=components.architecture,
        builtin=source.startswith("builtin:"),
        description=BUILTIN_BASES.get(name, "") if source.startswith("builtin:") else "",
        config={
            "block_out_channels": list(unet.block_out_channels),
            "cross_attention_dim": unet.cross_attention_dim,
            "sample_size": unet.sample_size,
            "vocab_size": components.text_encoder.config.vocab_size,
        },
    )
