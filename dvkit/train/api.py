"""`add_subject` and `add_motion`: validate everything, train, then register in the catalog.

Nothing is registered until training has finished; an interrupted run leaves only its
checkpoint folder under `<catalog>/runs/`, from which `resume=True` continues.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from dvkit.bases import base_architecture, choose_base, open_base
from dvkit.catalog import Catalog
from dvkit.catalog.blobs import StagedBlob
from dvkit.catalog.records import AdapterRecord, BaseModelRecord, RunRecord
from dvkit.catalog.runs import has_checkpoint
from dvkit.catalog.store import adapter_record
from dvkit.distributed import World, barrier, current_world, rank_device
from dvkit.errors import DvkitError, DvkitWarning
from dvkit.families import family
from dvkit.families.base import SizeError
from dvkit.io.adapter_file import (
    REFERENCE_IMAGES_KEY,
    TOKEN_EMBEDDING_KEY,
    AdapterFileInfo,
    load_adapter_tensors,
    read_adapter_info,
    write_adapter_file,
)
from dvkit.models.builtin import training_defaults
from dvkit.models.components import BaseComponents
from dvkit.models.loading import quiet_libraries, resolve_dtype
from dvkit.names import validate_name, validate_tag
from dvkit.train import data
from dvkit.train.loop import Reporter, SilentReporter
from dvkit.train.settings import (
    MotionSettings,
    Preset,
    SubjectSettings,
    default_image_encoder,
    preset_values,
)
from dvkit.train.setup import run_key
from dvkit.train.weights import file_fields
from dvkit.wording import plural

SettingsT = TypeVar("SettingsT", SubjectSettings, MotionSettings)


def add_subject(
    name: str,
    images: Sequence[str | Path],
    *,
    catalog: Catalog | None = None,
    base: str | None = None,
    masks: str | Path | None = None,
    preset: Preset = "official",
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    restart: bool = False,
    reporter: Reporter | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    notify: Callable[[str], None] = data.log_note,
    from_embedding: str | Path | None = None,
    **overrides: Any,
) -> AdapterRecord:
    """Learn a subject from 3–5 images (textual inversion + identity adapter) and register it.

    Its token (default `<name>`) starts from the `initializer` word when one is given (it must
    be one token), else from the name: itself, the mean of its sub-tokens, or a generic word
    (see `choose_initializer`); the record's `initializer` says which. `notify` receives a line
    saying which files were used (and skipped).

    A run interrupted earlier with the same settings and data is continued with `resume=True`
    or discarded with `restart=True`; with neither, its checkpoint is kept and a `DvkitError`
    says so.

    `from_embedding` (a subject of the catalog, or a textual-inversion or dvkit subject file)
    gives the token's vectors instead: textual inversion is skipped and they stay exactly as
    given while only the identity adapter trains; the training settings record the source.
    """
    catalog = catalog or Catalog.open()
    tags = _check_request(catalog, name, "subject", tags, resume, restart)
    overrides["token"] = overrides.get("token") or f"<{name}>"
    base = choose_base(catalog, base)
    given = None
    if from_embedding is not None:
        given = given_embedding(catalog, from_embedding)
        overrides.update(_embedding_overrides(overrides, given))
        _warn_other_base(from_embedding, given, base)
    defaults = training_defaults(base, base_architecture(catalog, base))
    settings = _settings(
        SubjectSettings, "subject", preset, overrides, defaults, use_masks=masks is not None
    )
    world = current_world()
    run_device = rank_device(device, world)
    run_dtype = resolve_dtype(dtype, run_device)
    notify = notify if world.main else _quiet
    pixels, paths = data.load_images(images, settings.resolution, notify)
    mask_pixels = data.load_masks(masks, paths, settings.resolution, notify) if masks else None
    notify(subject_summary(len(paths), settings, base, run_device))
    fingerprints = data.fingerprint(paths)
    components, base_record = open_base(catalog, base)
    _check_resolution(components, settings.resolution)
    if given is not None:
        from dvkit.io.embeddings import check_fits

        check_fits(given.vectors, components, base_record.name, settings.token)
    folder = _run_folder(
        catalog,
        "subject",
        name,
        settings,
        fingerprints,
        base_record,
        resume,
        world,
        restart,
    )

    from dvkit.train.subject import train_subject

    start = time.perf_counter()
    result = train_subject(
        components, pixels, mask_pixels, settings, run_device, run_dtype, folder,
        _reporter(reporter, world), resume, world, name,
        given.vectors if given is not None else None,
    )  # fmt: skip
    extra = {TOKEN_EMBEDDING_KEY: result.embedding, REFERENCE_IMAGES_KEY: reference_images(pixels)}
    initializer = given.initializer if given is not None else result.initializer
    return _finish(
        catalog, world, folder, "subject", name, base_record, settings, description,
        {**result.identity, **extra},
        {step: {**tensors, **extra} for step, tensors in result.kept.items()},
        fingerprints, tags, result.loss_curves, time.perf_counter() - start, run_device,
        token=settings.token, initializer=initializer,
        **file_fields("subject", settings, result.identity, components.family),
    )  # fmt: skip


@dataclass
class GivenEmbedding:
    """Fixed token vectors to train an identity adapter on (`add_subject(from_embedding=)`)."""

    vectors: torch.Tensor
    """float32 [vectors, width]."""
    source: dict[str, Any]
    """Where they come from, as the new subject's training settings record it."""
    initializer: str | None = None
    """The source subject's initializer, if it has one (bench's baselines use it as a word)."""


INVERSION_OPTIONS = ("initializer", "num_vectors", "inversion_steps", "inversion_lr")
"""Settings of the textual-inversion stage, which a given embedding replaces."""


def given_embedding(catalog: Catalog, source: str | Path) -> GivenEmbedding:
    """The vectors of `source`: a file (an embedding in any format `dvkit import` reads, or a
    dvkit subject file), else a subject of the catalog (`NAME` or `NAME@VERSION`)."""
    from dvkit.io.embeddings import import_kind

    path = Path(source)
    if path.is_file() or not _REF.fullmatch(str(source)):
        kind, embedding = import_kind(path)
        if embedding is not None:
            origin = {"file": path.name, "sha256": embedding.sha256, "format": embedding.format}
            return GivenEmbedding(embedding.vectors, origin)
        if kind != "dvkit":
            raise DvkitError(f"{path}: an adapter checkpoint, not a textual-inversion embedding")
        staged = read_adapter_info(path)
        data = path.read_bytes()
        origin = {
            "file": path.name, "weights_hash": staged.weights_hash, "format": "dvkit",
            "base": staged.base,
        }  # fmt: skip
        return _subject_embedding(str(path), staged.kind, data, origin, staged.initializer)
    record = catalog.show(str(source))
    origin = {"subject": record.ref, "weights_hash": record.weights_hash, "base": record.base}
    data = catalog.read_blob(record.blob)
    return _subject_embedding(record.ref, record.kind, data, origin, record.initializer)


def _warn_other_base(source: str | Path, given: GivenEmbedding, base: str) -> None:
    """A DvkitWarning when the vectors were learnt on another base than `base` (only their
    width is checked: they fit, but need not mean the subject there)."""
    learnt_on = given.source.get("base")
    if learnt_on and learnt_on != base:
        warnings.warn(
            f"--from-embedding {source}: its vectors were learnt on base {learnt_on}, not {base}; "
            "they fit its text encoder but may not mean the subject there",
            DvkitWarning,
            stacklevel=2,
        )


_REF = re.compile(r"[a-z0-9][a-z0-9_-]*(@\d+)?")


def _subject_embedding(
    what: str, kind: str, data: bytes, origin: dict[str, Any], initializer: str | None
) -> GivenEmbedding:
    """The token vectors of a subject adapter file's bytes (already checked)."""
    if kind != "subject":
        raise DvkitError(f"{what} is a {kind} adapter; it has no learned token")
    vectors = load_adapter_tensors(data).token_embedding
    if vectors is None:
        raise DvkitError(f"{what} has no token embedding")
    return GivenEmbedding(vectors.float().contiguous(), origin, initializer)


def _embedding_overrides(overrides: dict[str, Any], given: GivenEmbedding) -> dict[str, Any]:
    """Settings for a run on given vectors: no inversion stage, their count, their source."""
    chosen = [key for key in INVERSION_OPTIONS if overrides.get(key) is not None]
    if chosen:
        option = "--" + chosen[0].replace("_", "-").replace("num-vectors", "vectors")
        raise DvkitError(
            f"{option} applies to textual inversion, which --from-embedding skips (the token's "
            "vectors come from the embedding)"
        )
    return {
        "inversion_steps": 0,
        "num_vectors": given.vectors.shape[0],
        "from_embedding": given.source,
    }


def add_motion(
    name: str,
    videos: Sequence[str | Path],
    *,
    catalog: Catalog | None = None,
    base: str | None = None,
    preset: Preset = "official",
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    restart: bool = False,
    reporter: Reporter | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    notify: Callable[[str], None] = data.log_note,
    **overrides: Any,
) -> AdapterRecord:
    """Learn a motion from a few videos (motion adapters with appearance guidance); register it.

    `notify` receives a line saying which files were used (and skipped), and a warning for each
    clip shorter than a training window. `resume` and `restart` as in `add_subject`."""
    catalog = catalog or Catalog.open()
    tags = _check_request(catalog, name, "motion", tags, resume, restart)
    overrides["caption"] = overrides.get("caption") or name.replace("_", " ").replace("-", " ")
    base = choose_base(catalog, base)
    if not overrides.get("image_encoder"):
        overrides["image_encoder"] = default_image_encoder(base)
    architecture = base_architecture(catalog, base)
    defaults = training_defaults(base, architecture)
    settings = _settings(MotionSettings, "motion", preset, overrides, defaults)
    base_family = family(architecture)
    if overrides.get("frames") is None:  # a preset's count, made one the base's VAE takes
        frames = base_family.frames_at_least(settings.frames)
        settings = settings.model_copy(update={"frames": frames})
    base_family.check_frames(settings.frames, "--frames")
    world = current_world()
    run_device = rank_device(device, world)
    run_dtype = resolve_dtype(dtype, run_device)
    from dvkit.models.image_encoder import load_image_encoder
    from dvkit.train.motion import train_motion

    notify = notify if world.main else _quiet
    encoder = load_image_encoder(settings.image_encoder, run_device)  # embeds frames as read
    clips, paths = data.load_videos(
        videos, settings.frames, settings.resolution, settings.fps, encoder,
        settings.clip_windows, notify, base_family.frames_at_most,
    )  # fmt: skip
    notify(motion_summary(clips, len(paths), settings, base, run_device))
    fingerprints = data.fingerprint(paths)
    components, base_record = open_base(catalog, base)
    _check_resolution(components, settings.resolution)
    folder = _run_folder(
        catalog,
        "motion",
        name,
        settings,
        fingerprints,
        base_record,
        resume,
        world,
        restart,
    )
    start = time.perf_counter()
    result = train_motion(
        components, clips, encoder, settings, run_device, run_dtype, folder,
        _reporter(reporter, world), resume, world,
    )  # fmt: skip
    return _finish(
        catalog, world, folder, "motion", name, base_record, settings, description,
        result.tensors, result.kept, fingerprints, tags, result.loss_curves,
        time.perf_counter() - start, run_device,
        **file_fields("motion", settings, result.tensors, components.family),
    )  # fmt: skip


def _check_resolution(components: BaseComponents, resolution: int) -> None:
    """A `SizeError` naming the nearest sizes when the base cannot train at `resolution`."""
    try:
        components.family.latent_shape(components, 1, resolution, resolution)
    except SizeError as exc:
        raise SizeError(f"--resolution: {exc}") from None


def subject_summary(images: int, settings: SubjectSettings, base: str, device: torch.device) -> str:
    """The line that says what a subject run trains on: images, size, steps per stage."""
    stages = [
        f"textual inversion {plural(settings.inversion_steps, 'step')}"
        if settings.inversion_steps
        else "no textual inversion (the token's vectors are given)",
        f"identity adapter {plural(settings.identity_steps, 'step')}",
    ]
    return (
        f"training on {base} ({device}): {plural(images, 'image')} at "
        f"{settings.resolution}×{settings.resolution}; {', '.join(stages)}, batch "
        f"{settings.batch_size}"
    )


def motion_summary(
    clips: data.MotionClips, videos: int, settings: MotionSettings, base: str, device: torch.device
) -> str:
    """The line that says what a motion run trains on: clips, windows, frames, size, steps."""
    rate = f" at {settings.fps:g} fps" if settings.fps else ""
    windows = plural(len(clips.windows), "window")
    return (
        f"training on {base} ({device}): {plural(videos, 'clip')}, {windows} of "
        f"{plural(settings.frames, 'frame')}{rate} ({plural(len(clips.frames), 'frame')} "
        f"kept) at {settings.resolution}×{settings.resolution}; motion adapter "
        f"{plural(settings.steps, 'step')}, batch {settings.batch_size}"
    )


def reference_images(pixels: torch.Tensor) -> torch.Tensor:
    """A subject's images as an adapter file stores them: [N, 3, S, S] in [-1, 1] → uint8
    [N, S, S, 3] (`REFERENCE_IMAGES_KEY`: the guidance image when composing, the references
    when scoring)."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _quiet(line: str) -> None:
    """Where other processes of a data-parallel run send their notes: rank 0 says them."""


def _reporter(reporter: Reporter | None, world: World) -> Reporter:
    return reporter if reporter is not None and world.main else SilentReporter()


def _check_request(
    catalog: Catalog, name: str, kind: str, tags: Sequence[str], resume: bool, restart: bool
) -> list[str]:
    """Cheap checks before any data is read or model loaded (a read-only catalog included)."""
    quiet_libraries()
    if resume and restart:
        raise DvkitError("--resume continues the saved run and --restart discards it: give one")
    catalog.require_writable(f"register the {kind} {name}")
    validate_name(name)
    catalog.check_kind(name, kind)
    return [validate_tag(tag) for tag in tags]


def _settings(
    cls: type[SettingsT],
    kind: str,
    preset: Preset,
    overrides: dict[str, Any],
    base_defaults: dict[str, Any],
    **extra: Any,
) -> SettingsT:
    """Settings from, in rising precedence: the class defaults (the official recipe), the base's
    own data defaults (`training_defaults`: resolution, clip frames and fps), the preset, `extra`
    and the user's `overrides`."""
    values = {key: value for key, value in base_defaults.items() if key in cls.model_fields}
    values.update({**preset_values(preset, kind), **extra})
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:
            raise DvkitError(f"invalid training settings: {message}") from None
        where = ".".join(str(part) for part in first["loc"])
        raise DvkitError(f"invalid training setting {where}: {message}") from None


def _run_folder(
    catalog: Catalog,
    kind: str,
    name: str,
    settings: SubjectSettings | MotionSettings,
    fingerprints: list[str],
    base: BaseModelRecord,
    resume: bool,
    world: World,
    restart: bool = False,
) -> Path:
    """The run's checkpoint folder. A saved checkpoint is continued with `resume`, discarded
    with `restart`, and otherwise kept: the run stops, saying how to go on."""
    key = run_key(
        {"kind": kind, "name": name, "settings": settings.model_dump(mode="json"),
         "data": fingerprints, "base": base.fingerprint}
    )  # fmt: skip
    folder = catalog.home / "runs" / f"{kind}-{name}-{key}"
    if resume and not folder.is_dir():
        raise DvkitError(
            f"nothing to resume: no interrupted {kind} run of {name!r} with these settings and data"
        )
    if not resume and not restart and has_checkpoint(folder):
        raise DvkitError(
            f"an interrupted {kind} run of {name!r} with these settings and data is saved in "
            f"{folder}: add --resume to continue it, or --restart to discard it"
        )
    if not resume and folder.exists() and world.main:
        shutil.rmtree(folder)
    barrier(world)
    return folder


def _finish(
    catalog: Catalog,
    world: World,
    folder: Path,
    kind: str,
    name: str,
    base: BaseModelRecord,
    settings: SubjectSettings | MotionSettings,
    description: str,
    tensors: dict[str, torch.Tensor],
    kept: dict[int, dict[str, torch.Tensor]],
    fingerprints: list[str],
    tags: Sequence[str],
    loss_curves: dict[str, list[tuple[int, float]]],
    wall_seconds: float,
    device: torch.device,
    **file_fields: Any,
) -> AdapterRecord:
    """Describe a finished run (file header and run record) and register its weights."""
    info = AdapterFileInfo(
        kind=kind,
        name=name,
        base=base.name,
        base_fingerprint=base.fingerprint,
        architecture=base.architecture,
        hidden_ratio=settings.hidden_ratio,
        training=settings.model_dump(mode="json"),
        description=description,
        **file_fields,
    )
    run = RunRecord(
        kind=kind,
        settings=info.training,
        data_fingerprints=fingerprints,
        loss_curves=loss_curves,
        base=base.name,
        wall_seconds=wall_seconds,
        device=str(device),
        status="finished",
    )
    return _register(catalog, world, folder, info, tensors, kept, fingerprints, tags, run)


def _register(
    catalog: Catalog,
    world: World,
    folder: Path,
    info: AdapterFileInfo,
    tensors: dict[str, torch.Tensor],
    kept: dict[int, dict[str, torch.Tensor]],
    fingerprints: list[str],
    tags: Sequence[str],
    run: RunRecord,
) -> AdapterRecord:
    """Write the final and kept adapter files, register them with the run, drop the run folder.

    In a data-parallel run rank 0 registers; the others wait and return the same record.
    """
    if not world.main:
        barrier(world)
        return catalog.show(info.name)
    final, final_info = _stage(catalog, folder / "final.safetensors", tensors, info)
    checkpoints = {}
    for step, step_tensors in kept.items():
        staged, step_info = _stage(
            catalog, folder / f"step-{step:06d}.safetensors", step_tensors, info
        )
        checkpoints[step] = (staged, step_info.weights_hash)
    record = adapter_record(final_info, final, data_fingerprints=fingerprints)
    result = catalog.register(record, final, tags, run=run, checkpoints=checkpoints)
    shutil.rmtree(folder, ignore_errors=True)
    barrier(world)
    return result.adapter


def _stage(
    catalog: Catalog, path: Path, tensors: dict[str, torch.Tensor], info: AdapterFileInfo
) -> tuple[StagedBlob, AdapterFileInfo]:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_adapter_file(path, tensors, info)
    return catalog.stage_adapter_file(path)
