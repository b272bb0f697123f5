"""Base models in the catalog: adding them, and opening one for training or sampling."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dvkit.catalog import Catalog
from dvkit.catalog.records import BaseModelRecord
from dvkit.errors import DvkitError, NotFoundError
from dvkit.models.builtin import BUILTINS
from dvkit.names import validate_name

if TYPE_CHECKING:
    from dvkit.models.components import BaseComponents


class NoBaseError(DvkitError):
    """No base named, and no default base set."""


def add_base(
    catalog: Catalog,
    name: str,
    source: str,
    family: str | None = None,
    motion_adapter: str | None = None,
) -> BaseModelRecord:
    """Load a base from a Hub id, local folder or checkpoint file, fingerprint it and register it.

    `family` names its family (found from the source when None); `motion_adapter` (Hub id or
    folder of a diffusers `MotionAdapter`) makes a Stable Diffusion 1.5 model an `animatediff`
    base. Raises `BaseLoadError`, `NotFoundError` (unknown family) or `ConflictError`.
    """
    from dvkit.models.loading import load_base

    validate_name(name, "base name")
    options = {"motion_adapter": motion_adapter} if motion_adapter else {}
    components = load_base(source, name, family, options)
    record = _record(components, name, source, options)
    catalog.add_base(record)
    if catalog.default_base() is None:
        catalog.set_default_base(name)
    return record


def set_default_base(catalog: Catalog, name: str) -> None:
    """Make `name` (a registered or built-in base) what training and composing use when no base
    is named. Raises `NotFoundError` for an unknown base."""
    base_architecture(catalog, name)
    catalog.set_default_base(name)


def choose_base(catalog: Catalog, base: str | None) -> str:
    """The base to use: `base` when given, else `$DVKIT_BASE`, else the catalog's default; with
    none of them a `NoBaseError` saying how to choose one."""
    if base:
        return base
    from_environment = os.environ.get("DVKIT_BASE")
    if from_environment:
        try:
            base_architecture(catalog, from_environment)
        except DvkitError as exc:
            raise NoBaseError(f"$DVKIT_BASE: {exc}") from None
        return from_environment
    chosen = catalog.default_base()
    if chosen:
        return chosen
    builtins = ", ".join(BUILTINS)
    raise NoBaseError(
        "no base chosen: add one with `dvkit base add NAME SOURCE` (it becomes the default), "
        f"pick one with `dvkit base default NAME`, set $DVKIT_BASE, or give --base (base= in "
        f"the library; built in, offline: {builtins}; try --base sprites)"
    )


def open_base(catalog: Catalog, name: str) -> tuple[BaseComponents, BaseModelRecord]:
    """The components of a base known to the catalog (built-ins are registered on first use)."""
    source = base_source(catalog, name)
    components = source.load()
    try:
        return components, catalog.base(name)
    except NotFoundError:  # a built-in not used before
        record = _record(components, name, source.source, {})
        catalog.add_base(record)
        return components, record


def base_pipeline(catalog: Catalog, name: str | None = None) -> Any:
    """The diffusers pipeline of base `name` (default: the catalog's default base) built from
    its components: `AnimateDiffPipeline`, `TextToVideoSDPipeline` or `WanPipeline`, to make or
    try LoRAs with diffusers and peft on a built-in base."""
    from dvkit.io.lora_export import reference_pipeline

    components, _ = open_base(catalog, choose_base(catalog, name))
    return reference_pipeline(components)


@dataclass(frozen=True)
class BaseSource:
    """Where a base's weights come from, so that a process without the catalog can load it (each
    host from its own Hugging Face cache or folder)."""

    name: str
    source: str
    architecture: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> BaseComponents:
        """The base's components. Raises `BaseLoadError` when they cannot be loaded here."""
        from dvkit.models.loading import load_base

        return load_base(self.source, self.name, self.architecture, self.options)


def base_source(catalog: Catalog, name: str) -> BaseSource:
    """Where base `name` (registered or built in) comes from; `NotFoundError` naming the known
    bases otherwise."""
    validate_name(name, "base name")
    try:
        record = catalog.base(name)
    except NotFoundError:
        if name not in BUILTINS:
            raise _unknown(catalog, name) from None
        return BaseSource(name, f"builtin:{name}")
    return BaseSource(name, record.source, record.architecture, record.config.get("sources", {}))


def base_architecture(catalog: Catalog, name: str) -> str:
    """The family of base `name` (registered or built in) without loading it; `NotFoundError`
    naming the known bases otherwise."""
    validate_name(name, "base name")
    try:
        return catalog.base(name).architecture
    except NotFoundError:
        if name not in BUILTINS:
            raise _unknown(catalog, name) from None
        return BUILTINS[name].architecture


def _unknown(catalog: Catalog, name: str) -> NotFoundError:
    names = {*BUILTINS, *(row["name"] for row in catalog.base_rows())}
    known = ", ".join(sorted(names))
    return NotFoundError(
        f"unknown base {name!r} (known: {known}; add one with: dvkit base add NAME SOURCE)"
    )


def _record(
    components: BaseComponents, name: str, source: str, options: Mapping[str, Any]
) -> BaseModelRecord:
    builtin = source.startswith("builtin:")
    config = components.family.record_config(components)
    if options:
        config["sources"] = dict(options)
    return BaseModelRecord(
        name=name,
        source=source,
        fingerprint=components.fingerprint(),
        architecture=components.architecture,
        builtin=builtin,
        description=BUILTINS[name].description if builtin else "",
        config=config,
    )
