"""`add_subject` and `add_motion`: validate everything, train, then register in the catalog.

Nothing is registered until training has finished; an interrupted run leaves only its
checkpoint folder under `<catalog>/runs/`, from which `resume=True` continues.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from dvkit.bases import open_base
from dvkit.catalog import Catalog
from dvkit.catalog.blobs import StagedBlob
from dvkit.catalog.records import AdapterRecord, BaseModelRecord, RunRecord
from dvkit.catalog.store import adapter_record
from dvkit.errors import DvkitError
from dvkit.io.adapter_file import (
    REFERENCE_IMAGES_KEY,
    TOKEN_EMBEDDING_KEY,
    AdapterFileInfo,
    write_adapter_file,
)
from dvkit.models.loading import quiet_libraries, resolve_device, resolve_dtype
from dvkit.names import validate_name, validate_tag
from dvkit.train import data
from dvkit.train.distributed import World, barrier, current_world
from dvkit.train.loop import Reporter, SilentReporter
from dvkit.train.settings import (
    MotionSettings,
    Preset,
    SubjectSettings,
    default_image_encoder,
    preset_values,
)
from dvkit.train.setup import run_key

SettingsT = TypeVar("SettingsT", SubjectSettings, MotionSettings)


def add_subject(
    name: str,
    images: Sequence[str | Path],
    *,
    catalog: Catalog | None = None,
    base: str = "tiny",
    masks: str | Path | None = None,
    preset: Preset = "official",
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    notify: Callable[[str], None] = data.log_note,
    **overrides: Any,
) -> AdapterRecord:
    """Learn a subject from 3–5 images (textual inversion + identity adapter) and register it.

    Its token (default `<name>`) starts from the `initializer` word when one is given (it must
    be one token), else from the name: itself, the mean of its sub-tokens, or a generic word
    (see `choose_initializer`); the record's `initializer` says which. `notify` receives a line
    saying which files were used (and skipped).
    """
    catalog = catalog or Catalog.open()
    tags = _check_request(catalog, name, "subject", tags)
    overrides["token"] = overrides.get("token") or f"<{name}>"
    settings = _settings(SubjectSettings, "subject", preset, overrides, use_masks=masks is not None)
    world = current_world()
    run_device = _device(device, world)
    run_dtype = resolve_dtype(dtype, run_device)
    notify = notify if world.main else _quiet
    pixels, paths = data.load_images(images, settings.resolution, notify)
    mask_pixels = data.load_masks(masks, paths, settings.resolution, notify) if masks else None
    fingerprints = data.fingerprint(paths)
    components, base_record = open_base(catalog, base)
    folder = _run_folder(
        catalog, "subject", name, settings, fingerprints, base_record, resume, world
    )

    from dvkit.train.subject import train_subject

    start = time.perf_counter()
    result = train_subject(
        components, pixels, mask_pixels, settings, run_device, run_dtype, folder,
        _reporter(reporter, world), resume, world, name,
    )  # fmt: skip
    extra = {TOKEN_EMBEDDING_KEY: result.embedding, REFERENCE_IMAGES_KEY: reference_images(pixels)}
    return _finish(
        catalog, world, folder, "subject", name, base_record, settings, description,
        {**result.identity, **extra},
        {step: {**tensors, **extra} for step, tensors in result.kept.items()},
        fingerprints, tags, result.loss_curves, time.perf_counter() - start, run_device,
        token=settings.token, initializer=result.initializer, placement=["attn2"],
    )  # fmt: skip


def add_motion(
    name: str,
    videos: Sequence[str | Path],
    *,
    catalog: Catalog | None = None,
    base: str = "tiny",
    preset: Preset = "official",
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    notify: Callable[[str], None] = data.log_note,
    **overrides: Any,
) -> AdapterRecord:
    """Learn a motion from a few videos (motion adapters with appearance guidance); register it.

    `notify` receives a line saying which files were used (and skipped), and a warning for each
    clip shorter than a training window."""
    catalog = catalog or Catalog.open()
    tags = _check_request(catalog, name, "motion", tags)
    overrides["caption"] = overrides.get("caption") or name.replace("_", " ").replace("-", " ")
    if not overrides.get("image_encoder"):
        overrides["image_encoder"] = default_image_encoder(base)
    settings = _settings(MotionSettings, "motion", preset, overrides)
    world = current_world()
    run_device = _device(device, world)
    run_dtype = resolve_dtype(dtype, run_device)
    from dvkit.models.image_encoder import load_image_encoder
    from dvkit.train.motion import train_motion

    notify = notify if world.main else _quiet
    encoder = load_image_encoder(settings.image_encoder, run_device)  # embeds frames as read
    clips, paths = data.load_videos(
        videos, settings.frames, settings.resolution, settings.fps, encoder,
        settings.clip_windows, notify,
    )  # fmt: skip
    fingerprints = data.fingerprint(paths)
    components, base_record = open_base(catalog, base)
    folder = _run_folder(
        catalog, "motion", name, settings, fingerprints, base_record, resume, world
    )
    start = time.perf_counter()
    result = train_motion(
        components, clips, encoder, settings, run_device, run_dtype, folder,
        _reporter(reporter, world), resume, world,
    )  # fmt: skip
    return _finish(
        catalog, world, folder, "motion", name, base_record, settings, description,
        result.tensors, result.kept, fingerprints, tags, result.loss_curves,
        time.perf_counter() - start, run_device, placement=["attn1", "attn2", "ff"],
    )  # fmt: skip


def reference_images(pixels: torch.Tensor) -> torch.Tensor:
    """A subject's images as an adapter file stores them: [N, 3, S, S] in [-1, 1] → uint8
    [N, S, S, 3] (`REFERENCE_IMAGES_KEY`: the guidance image when composing, the references
    when scoring)."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _device(name: str, world: World) -> torch.device:
    """In a data-parallel run, `auto` gives each process the GPU of its local rank."""
    if name == "auto" and world.size > 1 and torch.cuda.is_available():
        return torch.device(f"cuda:{world.local_rank}")
    return resolve_device(name)


def _quiet(line: str) -> None:
    """Where other processes of a data-parallel run send their notes: rank 0 says them."""


def _reporter(reporter: Reporter | None, world: World) -> Reporter:
    return reporter if reporter is not None and world.main else SilentReporter()


def _check_request(catalog: Catalog, name: str, kind: str, tags: Sequence[str]) -> list[str]:
    """Cheap checks before any data is read or model loaded (a read-only catalog included)."""
    quiet_libraries()
    catalog.require_writable(f"register the {kind} {name}")
    validate_name(name)
    catalog.check_kind(name, kind)
    return [validate_tag(tag) for tag in tags]


def _settings(
    cls: type[SettingsT], kind: str, preset: Preset, overrides: dict[str, Any], **extra: Any
) -> SettingsT:
    values = {**preset_values(preset, kind), **extra}
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
) -> Path:
    key = run_key(
        {"kind": kind, "name": name, "settings": settings.model_dump(mode="json"),
         "data": fingerprints, "base": base.fingerprint}
    )  # fmt: skip
    folder = catalog.home / "runs" / f"{kind}-{name}-{key}"
    if resume and not folder.is_dir():
        raise DvkitError(
            f"nothing to resume: no interrupted {kind} run of {name!r} with these settings and data"
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
