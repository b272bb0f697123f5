"""Exporting adapters from the catalog, and reading merged exports.

- `export_adapter`: one adapter version (or one of its kept checkpoints) as a standalone dvkit
  adapter file. The bytes are the catalog's blob, checked against its address, so the header and
  `modelspec.hash_sha256` are the registered ones; `dvkit import` of the file gives back the same
  tensors and weights hash.
- `export_merged`: a subject and a motion adapter in one safetensors file: tensors prefixed
  `subject.` and `motion.` (the token embedding is `subject.token_embedding`), ModelSpec keys
  (architecture `<base arch>/dreamvideo-pair`, hash of the tensor data, trigger phrase) and
  `dvkit.kind = "merged"` with `dvkit.recipe`, a JSON composition recipe: both parts (name,
  version, step, scale, hidden ratio, own header metadata), token, base, and the sampling
  settings: those given, else the base's own defaults (steps, guidance, `motion_until`,
  `offset_noise`, see `sampler_choices`) and the motion's own unconditional λ.
- `load_merged`: reads such a file back into `MergedAdapters`, validating header, recipe and hash.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.errors import AdapterFileError, ConflictError, DvkitError, NotFoundError
from dvkit.io.adapter_file import (
    MODELSPEC_VERSION,
    REFERENCE_IMAGES_KEY,
    TOKEN_EMBEDDING_KEY,
    AdapterFileInfo,
    check_header,
    info_from_metadata,
    serialize_with_hash,
)
from dvkit.io.adapter_layout import check_tensors
from dvkit.io.files import write_atomically
from dvkit.models.builtin import (
    DEFAULT_IMAGE_STRENGTH,
    check_motion_until,
    check_offset_noise,
    motion_uncond_strength,
    sampler_choices,
)
from dvkit.ranges import ADAPTER_SCALE, GUIDANCE_SCALE, IMAGE_STRENGTH, SAMPLING_STEPS, Range

if TYPE_CHECKING:
    import torch

    from dvkit.catalog import Catalog
    from dvkit.catalog.records import AdapterRecord
    from dvkit.io.safetensors_header import TensorInfo

EXPORT_SUFFIX = ".safetensors"
MERGED_KIND = "merged"
MERGED_FORMAT = 1
PAIR_SUFFIX = "dreamvideo-pair"
PREFIXES = {"subject": "subject.", "motion": "motion."}
_MERGED_REQUIRED = (
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.hash_sha256",
    "dvkit.format",
    "dvkit.kind",
    "dvkit.base",
    "dvkit.base_fingerprint",
    "dvkit.recipe",
)


@dataclass
class ExportResult:
    """What an export wrote."""

    path: Path
    refs: list[str]
    weights_hash: str
    size: int
    embedding: Path | None = None
    """The subject's token file written beside a LoRA export (`NAME.embedding.safetensors`)."""


@dataclass
class MergedAdapters:
    """A merged export read back: both adapters (dvkit tensor names), the word and the recipe."""

    path: Path
    recipe: dict[str, Any] = field(repr=False)
    subject_tensors: dict[str, torch.Tensor] = field(repr=False)
    motion_tensors: dict[str, torch.Tensor] = field(repr=False)
    token_embedding: torch.Tensor = field(repr=False)
    subject_info: AdapterFileInfo = field(repr=False)
    motion_info: AdapterFileInfo = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    weights_hash: str
    reference_images: torch.Tensor | None = field(default=None, repr=False)
    """The subject's training images (uint8 [N, H, W, 3]) when its file carried them."""

    @property
    def token(self) -> str:
        return self.recipe["token"]

    @property
    def base(self) -> str:
        return self.recipe["base"]["name"]

    @property
    def base_fingerprint(self) -> str:
        return self.recipe["base"]["fingerprint"]

    @property
    def subject_scale(self) -> float:
        return self.recipe["subject"]["scale"]

    @property
    def motion_scale(self) -> float:
        return self.recipe["motion"]["scale"]

    @property
    def guidance_scale(self) -> float:
        return self.recipe["guidance_scale"]

    @property
    def image_strength(self) -> float:
        return self.recipe["image_strength"]

    @property
    def image_strength_uncond(self) -> float:
        return self.recipe["image_strength_uncond"]

    @property
    def steps(self) -> int:
        return self.recipe["steps"]

    @property
    def motion_until(self) -> float | None:
        return self.recipe.get("motion_until")

    @property
    def offset_noise(self) -> float | None:
        return self.recipe.get("offset_noise")


# ---- single adapters ------------------------------------------------------------------------


def export_adapter(
    catalog: Catalog,
    ref: str,
    out: str | Path,
    *,
    step: int | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write one adapter version (or its kept checkpoint at `step`) to `out` (.safetensors)."""
    out = check_out_path(out, overwrite)
    record = catalog.show(ref)
    data = catalog.read_blob(_blob(catalog, record, step))
    write_atomically(out, data)
    weights_hash = _split(data, out)[0].get("modelspec.hash_sha256", "")
    label = record.ref if step is None else f"{record.ref} step {step}"
    return ExportResult(out, [label], weights_hash, len(data))


def _blob(catalog: Catalog, record: AdapterRecord, step: int | None) -> str:
    if step is None:
        return record.blob
    steps = catalog.checkpoint_steps(record.ref)
    if step not in steps:
        kept = ", ".join(str(s) for s in steps)
        listed = f"kept steps: {kept}" if kept else "it kept no checkpoints"
        raise NotFoundError(f"{record.ref} has no checkpoint at step {step} ({listed})")
    return steps[step]


def check_out_path(out: str | Path, overwrite: bool = False) -> Path:
    """`out` if an export may be written there; else a one-line error saying why not."""
    out = Path(out).expanduser()
    if out.suffix.lower() != EXPORT_SUFFIX:
        raise DvkitError(f"cannot export to {out}: the file name must end in {EXPORT_SUFFIX}")
    folder = out.parent
    if not folder.exists():
        raise DvkitError(f"cannot export to {out}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DvkitError(f"cannot export to {out}: {folder} is not a folder")
    if out.is_dir():
        raise DvkitError(f"cannot export to {out}: it is a folder")
    if out.exists() and not overwrite:
        raise DvkitError(f"cannot export to {out}: the file exists (--force overwrites it)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DvkitError(f"cannot export to {out}: folder {folder} is not writable")
    return out


def _split(data: bytes, source: object) -> tuple[dict[str, str], dict[str, Any], bytes]:
    """Header metadata, tensor entries and tensor data of safetensors bytes."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except (struct.error, ValueError) as exc:
        raise AdapterFileError(f"{source}: unreadable safetensors header ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    return metadata, header, data[8 + length :]


# ---- merged pairs ---------------------------------------------------------------------------


@dataclass
class _Part:
    record: AdapterRecord
    step: int | None
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]


def export_merged(
    catalog: Catalog,
    subject: str,
    motion: str,
    out: str | Path,
    *,
    subject_step: int | None = None,
    motion_step: int | None = None,
    subject_scale: float = 1.0,
    motion_scale: float = 1.0,
    guidance_scale: float | None = None,
    image_strength: float = DEFAULT_IMAGE_STRENGTH,
    image_strength_uncond: float | None = None,
    steps: int | None = None,
    motion_until: float | None = None,
    offset_noise: float | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write a subject and a motion adapter (same base) and their recipe to one file.

    Sampling settings not given (None) are recorded as the base's own defaults: `steps`,
    `guidance_scale`, `motion_until` and `offset_noise` from `sampler_choices`, and
    `image_strength_uncond` the motion's own (see `motion_uncond_strength`). Every given value
    is checked before any adapter is read."""
    out = check_out_path(out, overwrite)
    _check_given(guidance_scale, image_strength, image_strength_uncond, steps, motion_until,
                 offset_noise)  # fmt: skip
    scales = {
        "subject": ADAPTER_SCALE.check("subject scale", subject_scale),
        "motion": ADAPTER_SCALE.check("motion scale", motion_scale),
    }
    parts = {
        "subject": _load_part(catalog, subject, "subject", subject_step),
        "motion": _load_part(catalog, motion, "motion", motion_step),
    }
    s, m = parts["subject"].record, parts["motion"].record
    if s.base_fingerprint != m.base_fingerprint:
        raise ConflictError(
            f"cannot merge {s.ref} and {m.ref}: they were trained on different bases "
            f"({s.base} {s.base_fingerprint[:12]} and {m.base} {m.base_fingerprint[:12]})"
        )
    chosen = sampler_choices(s.base, steps, guidance_scale, motion_until, offset_noise,
                             s.architecture)  # fmt: skip
    settings = dict(zip(("steps", "guidance_scale", "motion_until", "offset_noise"), chosen,
                        strict=True))  # fmt: skip
    settings["image_strength"] = image_strength
    settings["image_strength_uncond"] = (
        motion_uncond_strength(m.training) if image_strength_uncond is None
        else image_strength_uncond
    )  # fmt: skip
    tensors = {
        PREFIXES[kind] + name: tensor
        for kind, part in parts.items()
        for name, tensor in part.tensors.items()
    }
    recipe = {
        "format": MERGED_FORMAT,
        "base": {"name": s.base, "fingerprint": s.base_fingerprint, "architecture": s.architecture},
        "token": s.token,
        "subject": _part_recipe(parts["subject"], scales["subject"]),
        "motion": _part_recipe(parts["motion"], scales["motion"]),
        **settings,
    }
    from dvkit import __version__

    metadata = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{s.architecture}/{PAIR_SUFFIX}",
        "modelspec.implementation": "dvkit",
        "modelspec.title": f"{_label(parts['subject'])} + {_label(parts['motion'])}",
        "modelspec.date": date.today().isoformat(),
        "modelspec.description": (
            f"DreamVideo subject {_label(parts['subject'])} with motion {_label(parts['motion'])}"
        ),
        "modelspec.trigger_phrase": s.token or "",
        "dvkit.format": str(MERGED_FORMAT),
        "dvkit.version": __version__,
        "dvkit.kind": MERGED_KIND,
        "dvkit.base": s.base,
        "dvkit.base_fingerprint": s.base_fingerprint,
        "dvkit.subject": _label(parts["subject"]),
        "dvkit.motion": _label(parts["motion"]),
        "dvkit.recipe": json.dumps(recipe, sort_keys=True),
    }
    payload, weights_hash = serialize_with_hash(tensors, metadata)
    write_atomically(out, payload)
    return ExportResult(
        out, [_label(parts["subject"]), _label(parts["motion"])], weights_hash, len(payload)
    )


def _check_given(
    guidance_scale: float | None,
    image_strength: float,
    image_strength_uncond: float | None,
    steps: int | None,
    motion_until: float | None,
    offset_noise: float | None,
) -> None:
    """Refuse a given recipe setting out of its range (a `DvkitError` naming it)."""
    IMAGE_STRENGTH.check("image strength", image_strength)
    for check, value in (
        (lambda v: GUIDANCE_SCALE.check("guidance scale", v), guidance_scale),
        (lambda v: IMAGE_STRENGTH.check("unconditional image strength", v), image_strength_uncond),
        (lambda v: SAMPLING_STEPS.check("sampling steps", v), steps),
        (check_motion_until, motion_until),
        (check_offset_noise, offset_noise),
    ):
        if value is not None:
            check(value)


def _label(part: _Part) -> str:
    return part.record.ref if part.step is None else f"{part.record.ref} step {part.step}"


def _load_part(catalog: Catalog, ref: str, kind: str, step: int | None) -> _Part:
    from safetensors.torch import load

    record = catalog.show(ref)
    if record.kind != kind:
        raise DvkitError(f"{record.ref} is a {record.kind} adapter, not a {kind} adapter")
    data = catalog.read_blob(_blob(catalog, record, step))
    metadata, _, _ = _split(data, record.ref)
    tensors = load(data)
    if kind == "subject" and TOKEN_EMBEDDING_KEY not in tensors:
        raise AdapterFileError(f"{record.ref}: its weights file lacks the token embedding")
    return _Part(record, step, metadata, tensors)


def _part_recipe(part: _Part, scale: float) -> dict[str, Any]:
    record = part.record
    entry: dict[str, Any] = {
        "name": record.name,
        "version": record.version,
        "ref": record.ref,
        "step": part.step,
        "scale": scale,
        "hidden_ratio": record.hidden_ratio,
        "placement": record.placement,
        "weights_hash": part.metadata.get("modelspec.hash_sha256", ""),
        "metadata": part.metadata,
    }
    if record.kind == "subject":
        embedding = part.tensors[TOKEN_EMBEDDING_KEY]
        entry.update(token=record.token, initializer=record.initializer)
        entry["num_vectors"] = embedding.shape[0]
    else:
        entry["image_encoder"] = record.training.get("image_encoder", "")
    return entry


# ---- reading merged files -------------------------------------------------------------------


def is_merged_file(path: str | Path) -> bool:
    """Whether `path` is a readable safetensors file whose header says it is a merged export."""
    from dvkit.io.safetensors_header import read_header

    try:
        return read_header(Path(path)).metadata.get("dvkit.kind") == MERGED_KIND
    except AdapterFileError:
        return False


def load_merged(path: str | Path) -> MergedAdapters:
    """Read a merged export; raise `AdapterFileError` saying exactly what is wrong with it.

    Checked before any tensor is loaded: the header (as any safetensors header, see
    `read_header`), the recipe's types and ranges (`dvkit.recipe`), each part's own header
    metadata against that part's tensors (`check_tensors`: kind, hidden ratio, placement,
    condition width, vectors), the recipe's copies of those fields, and the data hash.
    """
    from safetensors.torch import load

    from dvkit.io.safetensors_header import data_sha256, read_header

    path = Path(path)
    header = read_header(path)
    meta = header.metadata
    kind = meta.get("dvkit.kind")
    if kind in PREFIXES:
        raise AdapterFileError(
            f"{path}: a single {kind} adapter file, not a merged subject + motion export"
        )
    if kind != MERGED_KIND:
        raise AdapterFileError(f"{path}: not a dvkit merged export (dvkit.kind is {kind!r})")
    check_header(path, meta, _MERGED_REQUIRED, MERGED_FORMAT, "merged export")
    if not meta["modelspec.architecture"].endswith(f"/{PAIR_SUFFIX}"):
        raise AdapterFileError(
            f"{path}: modelspec.architecture is {meta['modelspec.architecture']!r}, but a merged "
            f"export's ends in /{PAIR_SUFFIX}"
        )
    recipe = _read_recipe(path, meta)
    infos = _check_parts(path, meta, recipe, header.tensors)
    actual = data_sha256(path, header)
    if actual != meta["modelspec.hash_sha256"]:
        raise AdapterFileError(
            f"{path}: corrupt merged export (tensor data hash {actual[:14]}… does not match the "
            f"header's {meta['modelspec.hash_sha256'][:14]}…)"
        )
    try:
        tensors = load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error type
        raise AdapterFileError(f"{path}: unreadable tensors ({exc})") from None
    parts = {kind: _part(tensors, prefix) for kind, prefix in PREFIXES.items()}
    embedding = parts["subject"].pop(TOKEN_EMBEDDING_KEY)
    references = parts["subject"].pop(REFERENCE_IMAGES_KEY, None)
    return MergedAdapters(
        path=path,
        recipe=recipe,
        subject_tensors=parts["subject"],
        motion_tensors=parts["motion"],
        token_embedding=embedding,
        subject_info=infos["subject"],
        motion_info=infos["motion"],
        metadata=meta,
        weights_hash=actual,
        reference_images=references,
    )


def _read_recipe(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """`dvkit.recipe`, each entry checked for its type and range."""
    from dvkit.io.safetensors_header import parse_json

    recipe = parse_json(meta["dvkit.recipe"], f"{path}: unreadable dvkit.recipe")
    if not isinstance(recipe, dict):
        raise AdapterFileError(f"{path}: dvkit.recipe is not a JSON object")
    for kind in PREFIXES:
        part = recipe.get(kind)
        if not isinstance(part, dict) or not isinstance(part.get("metadata"), dict):
            raise AdapterFileError(f"{path}: dvkit.recipe lacks the {kind} part and its metadata")
        _recipe_number(path, f"{kind} scale", part.get("scale"), ADAPTER_SCALE)
    for key, valid in _RECIPE_RANGES.items():
        _recipe_number(path, key, recipe.get(key), valid)
    try:
        SAMPLING_STEPS.check("sampling steps", recipe.get("steps"))
    except DvkitError as exc:
        raise AdapterFileError(f"{path}: dvkit.recipe's steps: {exc}") from None
    try:
        check_motion_until(recipe.get("motion_until", 0.0))
    except DvkitError:
        raise AdapterFileError(
            f"{path}: dvkit.recipe's motion_until is not a fraction from 0 to 1"
        ) from None
    try:
        check_offset_noise(recipe.get("offset_noise", 0.0))
    except DvkitError:
        raise AdapterFileError(
            f"{path}: dvkit.recipe's offset_noise is not a number from 0 to 1"
        ) from None
    base = recipe.get("base")
    if not isinstance(base, dict) or base.get("fingerprint") != meta["dvkit.base_fingerprint"]:
        raise AdapterFileError(
            f"{path}: dvkit.recipe's base does not match the header's dvkit.base_fingerprint"
        )
    if base.get("name") != meta["dvkit.base"]:
        raise AdapterFileError(
            f"{path}: dvkit.recipe's base is {base.get('name')!r}, the header's dvkit.base "
            f"{meta['dvkit.base']!r}"
        )
    if not isinstance(recipe.get("token"), str) or not recipe["token"]:
        raise AdapterFileError(f"{path}: dvkit.recipe has no token")
    trigger = meta.get("modelspec.trigger_phrase")
    if trigger is not None and trigger != recipe["token"]:
        raise AdapterFileError(
            f"{path}: modelspec.trigger_phrase {trigger!r} is not the recipe's token "
            f"{recipe['token']!r}"
        )
    return recipe


_RECIPE_RANGES = {
    "guidance_scale": GUIDANCE_SCALE,
    "image_strength": IMAGE_STRENGTH,
    "image_strength_uncond": IMAGE_STRENGTH,
}


def _recipe_number(path: Path, name: str, value: Any, valid: Range) -> None:
    """The recipe's `name`, checked against the range `export_merged` checks it with."""
    if value is None:
        raise AdapterFileError(f"{path}: dvkit.recipe has no numeric {name}")
    try:
        valid.check(name, value)
    except DvkitError as exc:
        raise AdapterFileError(f"{path}: dvkit.recipe's {exc}") from None


def _check_parts(
    path: Path, meta: dict[str, str], recipe: dict[str, Any], tensors: dict[str, TensorInfo]
) -> dict[str, AdapterFileInfo]:
    """Each part's header metadata (kept in the recipe) checked against its tensors and against
    the recipe's copies of its fields; returns the parts' `AdapterFileInfo`."""
    foreign = sorted(name for name in tensors if not name.startswith(tuple(PREFIXES.values())))
    if foreign:
        raise AdapterFileError(
            f"{path}: tensor {foreign[0]!r} belongs to neither the subject. nor the motion. part"
        )
    infos = {}
    for kind, prefix in PREFIXES.items():
        source = f"{path}: the {kind} part"
        info = info_from_metadata(source, recipe[kind]["metadata"])
        if info.kind != kind:
            raise AdapterFileError(f"{path}: the recipe's {kind} part is a {info.kind!r} adapter")
        check_tensors(source, info, _part(tensors, prefix))
        if info.base_fingerprint != meta["dvkit.base_fingerprint"]:
            raise AdapterFileError(
                f"{path}: the {kind} part was trained on base {info.base} "
                f"({info.base_fingerprint[:12]}), not on the export's base {meta['dvkit.base']} "
                f"({meta['dvkit.base_fingerprint'][:12]})"
            )
        entry = recipe[kind]
        copies = {"hidden_ratio": info.hidden_ratio, "placement": info.placement}
        if kind == "subject":
            copies.update(num_vectors=info.num_vectors, token=info.token)
        for key, value in copies.items():
            if key in entry and entry[key] != value:
                raise AdapterFileError(
                    f"{path}: dvkit.recipe's {kind} {key} is {entry[key]!r}, but the {kind} "
                    f"part's header and tensors say {value!r}"
                )
        infos[kind] = info
    if infos["subject"].token != recipe["token"]:
        raise AdapterFileError(
            f"{path}: the recipe's token {recipe['token']!r} is not the subject's "
            f"{infos['subject'].token!r}"
        )
    return infos


def _part(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of one part, under their names in that part's own adapter file."""
    return {
        name.removeprefix(prefix): value
        for name, value in tensors.items()
        if name.startswith(prefix)
    }
