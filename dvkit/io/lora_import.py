"""`dvkit import` of LoRA files: a foreign layout (`dvkit.io.lora_layouts`) checked against a
base and written as a dvkit LoRA file (`dvkit.method` lora), optionally paired with a
textual-inversion embedding for a subject (its learned token)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.catalog.blobs import hash_file
from dvkit.errors import DvkitError
from dvkit.io.adapter_layout import lora_target
from dvkit.names import name_from_text, validate_name

if TYPE_CHECKING:
    from dvkit.catalog import Catalog
    from dvkit.io.vgen import PreparedImport
    from dvkit.models.components import BaseComponents

LORA_KINDS = ("subject", "motion")
GENERIC_STEMS = ("pytorch_lora_weights", "adapter_model")
"""File names diffusers (`save_lora_weights`) and peft (`save_pretrained`) give every LoRA: no
name for a catalog entry."""


def prepare_lora_file(
    catalog: Catalog,
    path: str | Path,
    *,
    kind: str | None,
    base: str,
    name: str | None = None,
    embedding: str | Path | None = None,
    token: str | None = None,
    description: str | None = None,
) -> PreparedImport:
    """A LoRA file as a dvkit LoRA of `base`, checked, not yet registered.

    `embedding` (a textual-inversion file) pairs a subject LoRA with its learned token, named
    `token` or `<name>`. Without `name`, the file's name (refused when generic,
    `GENERIC_STEMS`). Raises `DvkitError` without a kind, for a kind its layers contradict
    (`_check_kind`) or for a two-expert base,
    `LoraMismatchError` naming how many of the file's tensors fit the base when any does not,
    and the embedding's own errors.
    """
    from dvkit.bases import open_base
    from dvkit.io.adapter_file import TOKEN_EMBEDDING_KEY, AdapterFileInfo
    from dvkit.io.embeddings import check_fits, read_embedding
    from dvkit.io.lora_export import family_pipeline
    from dvkit.io.lora_layouts import model_names, read_lora
    from dvkit.io.vgen import DEFAULT_HIDDEN_RATIO, PreparedImport
    from dvkit.models.lora import TWO_EXPERTS, LoraMismatchError, LoraWeights

    path = Path(path)
    if kind is None:
        raise DvkitError(f"{path}: a LoRA file; say what it is with --kind subject or motion")
    if kind not in LORA_KINDS:
        raise DvkitError(f"--kind {kind!r}: not a LoRA kind; choose subject or motion")
    if embedding is not None and kind != "subject":
        raise DvkitError("--embedding pairs a LoRA with a learned token: only for --kind subject")
    if name is None and (path.stem in GENERIC_STEMS or not name_from_text(path.stem)):
        raise DvkitError(
            f"{path}: no name to register it under ({path.stem!r} is not one: diffusers and "
            "peft give every LoRA file their generic name); pass --name NAME"
        )
    name = validate_name(name or name_from_text(path.stem))
    catalog.check_kind(name, kind)
    components, record = open_base(catalog, base)
    if components.unet_2 is not None:
        raise DvkitError(f"{path}: " + TWO_EXPERTS.format(base=record.name))
    lora = read_lora(path, family_pipeline(components.architecture))
    roots = {"unet": components.unet, "text_encoder": components.text_encoder}
    lora.tensors = model_names(lora.tensors, components.text_encoder)
    try:
        weights = LoraWeights.from_tensors(
            kind, lora.tensors, roots, f"base {record.name}", lora.added
        )
    except LoraMismatchError as exc:
        raise LoraMismatchError(f"{path} ({lora.layout} layout): {exc}") from None
    _check_kind(path, kind, components, list(weights.modules_by_path))
    tensors = weights.tensors()
    training: dict[str, Any] = {
        "source": "lora",
        "layout": lora.layout,
        "file": path.name,
        "sha256": hash_file(path),
    }
    if embedding is not None:
        learned = read_embedding(embedding)
        token = token or f"<{name}>"
        check_fits(learned.vectors, components, record.name, token)
        tensors[TOKEN_EMBEDDING_KEY] = learned.vectors
        training.update(embedding_file=learned.path.name, num_vectors=learned.vectors.shape[0])
    alphas = Counter(module.alpha for module in weights.modules_by_path.values())
    info = AdapterFileInfo(
        kind=kind,
        name=name,
        base=record.name,
        base_fingerprint=record.fingerprint,
        architecture=record.architecture,
        token=token if embedding is not None else None,
        hidden_ratio=DEFAULT_HIDDEN_RATIO,
        placement=sorted({lora_target(p) for p in weights.modules_by_path}),
        training=training,
        description=description
        if description is not None
        else f"{lora.layout} LoRA imported from {path.name}",
        method="lora",
        rank=weights.rank,
        alpha=next(iter(alphas)) if len(alphas) == 1 else None,
    )
    return PreparedImport(path, info, tensors)


def _check_kind(path: Path, kind: str, components: BaseComponents, layers: list[str]) -> None:
    """Refuse a subject LoRA whose layers all sit in the family's motion (temporal) containers
    (e.g. a MotionLoRA): it is a motion LoRA. Families without a spatial/temporal split (Wan)
    accept either kind."""
    family = components.family
    if kind != "subject" or family.sites["subject"] == family.sites["motion"]:
        return
    motion = family.containers("motion")
    inside = [f"unet.{name}." for name, module in components.unet.named_modules()
              if isinstance(module, motion)]  # fmt: skip
    if all(layer.startswith(tuple(inside)) for layer in layers):
        raise DvkitError(
            f"{path}: a motion LoRA (all its {len(layers)} layers are in the base's temporal "
            "motion modules); import it with --kind motion"
        )
