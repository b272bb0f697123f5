"""`compose`: any subject × any motion (or either alone) → videos, recorded in the catalog."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dvkit.bases import choose_base, open_base
from dvkit.catalog import Catalog
from dvkit.catalog.records import AdapterRecord, EvaluationRecord
from dvkit.errors import DvkitError, DvkitWarning, NotFoundError
from dvkit.generate.outputs import is_folder_output, video_label, video_targets
from dvkit.generate.sampler import Row, SamplerSettings, check_size, sample
from dvkit.io.adapter_file import AdapterTensors, load_adapter_tensors
from dvkit.io.video import VIDEO_FORMATS, to_uint8, write_video
from dvkit.models.builtin import BUILTINS, motion_uncond_strength, sampler_choices, sampling_default
from dvkit.models.components import BaseComponents
from dvkit.models.injection import AdapterInjector
from dvkit.models.loading import quiet_libraries, resolve_device, resolve_dtype
from dvkit.models.text import check_prompts
from dvkit.models.textual_inversion import apply_token_embedding, expand_placeholder
from dvkit.ranges import (
    ADAPTER_SCALE,
    FRAME_RATE,
    FRAMES,
    GUIDANCE_SCALE,
    IMAGE_STRENGTH,
    SAMPLING_STEPS,
    SEED,
    SIZE,
)


class BaseMismatchError(DvkitError):
    """Adapters trained on different bases, or on a base that has changed since."""


@dataclass
class Composition:
    """What `compose` made: uint8 frames (seeds, F, H, W, 3) and the files written."""

    frames: np.ndarray
    prompt: str
    seeds: list[int]
    files: list[Path] = field(default_factory=list)
    evaluation_ids: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """The sampler settings used (as recorded in the catalog): steps, guidance_scale, frames,
    height, width, motion_until, offset_noise, scales, strengths, fps, base."""


@dataclass
class LoadedAdapter:
    record: AdapterRecord
    step: int | None
    tensors: AdapterTensors

    @property
    def label(self) -> str:
        return self.record.ref + (f":{self.step}" if self.step is not None else "")


def compose(
    subject: str | None = None,
    motion: str | None = None,
    prompt: str | None = None,
    *,
    catalog: Catalog | None = None,
    base: str | None = None,
    merged: str | Path | None = None,
    subject_scale: float | None = None,
    motion_scale: float | None = None,
    subject_step: int | None = None,
    motion_step: int | None = None,
    seeds: Sequence[int] = (0,),
    negative_prompt: str = "",
    steps: int | None = None,
    guidance: float | None = None,
    frames: int | None = None,
    size: int | None = None,
    fps: float = 8.0,
    image_strength: float | None = None,
    image_strength_uncond: float | None = None,
    guidance_image: str | Path | None = None,
    motion_until: float | None = None,
    offset_noise: float | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("mp4",),
    device: str = "auto",
    dtype: str = "auto",
    record: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> Composition:
    """Generate videos of a subject doing a motion (either may be None), one per seed.

    `merged` is a file from `dvkit export --merged`: its subject and motion are used and its
    recipe gives the scales, guidance, steps, appearance strengths, `motion_until` and
    `offset_noise` not passed here.
    `motion_until` switches the motion adapter off below that fraction of the noise schedule
    (default: the base's, 0.4 on `sprites`, else 0: it acts at every step). `offset_noise` is
    the strength of the per-frame offset added to the starting noise (default: the base's, 0.1
    as the official inference; 0 on the built-in bases). `image_strength_uncond` defaults to the
    motion adapter's own (its preset's: 0 for `official`, 1 for `official-carturn`; 1 for
    adapters that record none). Frames default to the motion adapter's training frames.
    A motion composed with no guidance image (no `guidance_image`, no subject reference image)
    gets a zero appearance embedding, with a `DvkitWarning`.

    Writes MP4/GIF files to `out` (a file for one seed, a folder, or by default the catalog's
    videos/ folder) and returns the frames; `record=False` writes nothing unless `out` is given
    and leaves the catalog alone.

    A prompt longer than the text encoder reads is cut with a DvkitWarning; one whose subject
    token would be cut raises PromptTooLongError before anything is generated.
    """
    quiet_libraries()
    catalog = catalog or Catalog.open()
    recipe: dict = {}
    if merged is not None:
        if subject is not None or motion is not None:
            raise DvkitError("give either a merged file or --subject/--motion, not both")
        chosen, recipe = _from_merged(merged)
    subject_scale = _pick(subject_scale, recipe.get("subject", {}).get("scale"), 1.0)
    motion_scale = _pick(motion_scale, recipe.get("motion", {}).get("scale"), 1.0)
    steps = _pick(steps, recipe.get("steps"), None)
    guidance = _pick(guidance, recipe.get("guidance_scale"), None)
    image_strength = _pick(image_strength, recipe.get("image_strength"), 1.0)
    image_strength_uncond = _pick(image_strength_uncond, recipe.get("image_strength_uncond"), None)
    motion_until = _pick(motion_until, recipe.get("motion_until"), None)
    offset_noise = _pick(offset_noise, recipe.get("offset_noise"), None)
    check_counts(seeds, steps, frames, size)
    _check_options(
        formats, subject_scale=subject_scale, motion_scale=motion_scale,
        guidance=guidance, image_strength=image_strength,
        image_strength_uncond=image_strength_uncond, fps=fps,
    )  # fmt: skip
    if merged is None:
        chosen = [
            load_adapter(catalog, ref, step, kind)
            for ref, step, kind in (
                (subject, subject_step, "subject"),
                (motion, motion_step, "motion"),
            )
            if ref is not None
        ]
    writes = record or out is not None
    targets = _targets(catalog, out, seeds, formats, chosen) if writes else [[] for _ in seeds]
    components, _ = open_matching_base(catalog, chosen, base)
    steps, guidance, motion_until, offset_noise = sampler_choices(
        components.name, steps, guidance, motion_until, offset_noise, components.architecture
    )
    run_device = resolve_device(device)
    run_dtype = resolve_dtype(dtype, run_device)
    components.freeze(run_device, run_dtype)
    by_kind = {adapter.record.kind: adapter for adapter in chosen}
    subject_adapter, motion_adapter = by_kind.get("subject"), by_kind.get("motion")
    if image_strength_uncond is None:
        training = motion_adapter.record.training if motion_adapter else {}
        image_strength_uncond = motion_uncond_strength(training)
    if frames is None:
        default_frames = sampling_default(components.name, "frames", components.architecture)
        frames = _trained(motion_adapter, "frames", int(default_frames))
    if size is None:
        default_size = _default_size(components)
        size = _trained(subject_adapter or motion_adapter, "resolution", default_size)
    settings = SamplerSettings(
        steps=steps,
        guidance_scale=guidance,
        frames=frames,
        height=check_size(components, size),
        width=size,
        motion_until=motion_until,
        offset_noise=offset_noise,
    )
    injector = AdapterInjector(components.unet, components.unet_2)
    scales: dict[str, float] = {}
    if subject_adapter:
        install_subject(components, injector, subject_adapter)
        scales["subject"] = subject_scale
    if motion_adapter:
        load_weights(components, injector, "motion", motion_adapter)
        scales["motion"] = motion_scale
    shown_prompt = prompt or default_prompt(subject_adapter, motion_adapter)
    text = shown_prompt
    if subject_adapter:
        token = subject_adapter.record.token or ""
        text = expand_placeholder(text, token, subject_adapter.record.num_vectors or 1)
    check_prompts(components.tokenizer, [text], [negative_prompt])  # before any encoder loads
    embed = None
    if motion_adapter:
        embed = guidance_embedding(
            motion_adapter, subject_adapter, guidance_image, settings.height, run_device
        )
        if embed is None and takes_appearance(motion_adapter):
            warn_zero_embedding(motion_adapter, subject_adapter)
    rows = [
        Row(text, seed, negative_prompt, scales, embed, image_strength, image_strength_uncond)
        for seed in seeds
    ]
    for name in injector.loaded:
        injector.get(name).to(dtype=run_dtype)
    try:
        videos = to_uint8(sample(components, rows, settings, injector, on_step).numpy())
    finally:
        injector.detach()
    used = {
        **settings.__dict__, "negative_prompt": negative_prompt, "subject_scale": subject_scale,
        "motion_scale": motion_scale, "image_strength": image_strength,
        "image_strength_uncond": image_strength_uncond, "fps": fps, "base": components.name,
        "guidance_image": None if guidance_image is None else str(guidance_image),
    }  # fmt: skip
    result = Composition(frames=videos, prompt=shown_prompt, seeds=list(seeds), settings=used)
    for index, seed in enumerate(seeds):
        written = [write_video(videos[index], path, fps) for path in targets[index]]
        result.files += written
        if record:
            result.evaluation_ids.append(
                catalog.add_evaluation(
                    EvaluationRecord(
                        subject_id=subject_adapter.record.id if subject_adapter else None,
                        motion_id=motion_adapter.record.id if motion_adapter else None,
                        subject=subject_adapter.label if subject_adapter else None,
                        motion=motion_adapter.label if motion_adapter else None,
                        prompt=result.prompt,
                        seed=seed,
                        sampler=used,
                        files=[str(path) for path in written],
                    )
                )
            )
    return result


def default_prompt(subject: LoadedAdapter | None, motion: LoadedAdapter | None) -> str:
    """'a <cat> surfing' from the subject's token and the motion's caption (or name)."""
    words = ["a"]
    words.append(subject.record.token if subject and subject.record.token else "video")
    if motion:
        caption = motion.record.training.get("caption") or motion.record.name
        words.append(caption.replace("_", " ").replace("-", " "))
    return " ".join(words)


def _pick(given: float | None, recipe: float | None, default: float | None) -> float | None:
    return given if given is not None else recipe if recipe is not None else default


def _from_merged(path: str | Path) -> tuple[list[LoadedAdapter], dict]:
    """Both adapters of a merged export, with records built from their headers."""
    from dvkit.io.export import load_merged

    merged = load_merged(path)
    parts = []
    for kind, info, tensors in (
        ("subject", merged.subject_info, AdapterTensors(
            merged.subject_tensors, merged.token_embedding, merged.reference_images)),
        ("motion", merged.motion_info, AdapterTensors(merged.motion_tensors)),
    ):  # fmt: skip
        entry = merged.recipe[kind]
        record = AdapterRecord(
            kind=kind, name=info.name, version=entry["version"], base=merged.base,
            base_fingerprint=merged.base_fingerprint, token=info.token,
            num_vectors=entry.get("num_vectors"), hidden_ratio=info.hidden_ratio,
            method=info.method, rank=info.rank, alpha=info.alpha,
            training=info.training, blob="", size=0, weights_hash=entry["weights_hash"],
            params=0,
        )  # fmt: skip
        parts.append(LoadedAdapter(record, entry.get("step"), tensors))
    return parts, merged.recipe


_RANGES = {
    "subject_scale": ADAPTER_SCALE,
    "motion_scale": ADAPTER_SCALE,
    "guidance": GUIDANCE_SCALE,
    "image_strength": IMAGE_STRENGTH,
    "image_strength_uncond": IMAGE_STRENGTH,
    "fps": FRAME_RATE,
}


def check_counts(
    seeds: Sequence[int], steps: int | None, frames: int | None, size: int | None
) -> None:
    """Refuse, before any model is loaded, whole numbers that cannot be sampled: no seeds or a
    seed out of range, and `steps`, `frames` or `size` (where given) out of range (`compose`
    and `bench`; the base's own multiple of `size` is checked once it is open)."""
    if not seeds:
        raise DvkitError("give at least one seed")
    for seed in seeds:
        SEED.check("seed", seed)
    for what, value, bounds in (
        ("steps", steps, SAMPLING_STEPS), ("frames", frames, FRAMES), ("size", size, SIZE)
    ):  # fmt: skip
        if value is not None:
            bounds.check(what, value)


def _check_options(formats: Sequence[str], **numbers: float | None) -> None:
    """Refuse, before any model is loaded, unknown formats and `numbers` (keys of `_RANGES`,
    given or from a merged recipe) outside their range."""
    for key, value in numbers.items():
        if value is not None:
            _RANGES[key].check(key.replace("_", " "), value)
    unknown = [f for f in formats if f not in VIDEO_FORMATS]
    if unknown or not formats:
        raise DvkitError(f"unknown video format {', '.join(unknown) or '(none)'} (use mp4 or gif)")


def _targets(
    catalog: Catalog,
    out: str | Path | None,
    seeds: Sequence[int],
    formats: Sequence[str],
    chosen: Sequence[LoadedAdapter],
) -> list[list[Path]]:
    """Output files per seed: `out` as one file or a folder, or the catalog's videos folder;
    in a folder, named after what they show (`video_targets`)."""
    names = {adapter.record.kind: adapter.record.name for adapter in chosen}
    label = video_label(names.get("subject"), names.get("motion"))
    folder = Path(out) if out is not None else catalog.home / "videos"
    return video_targets(folder, seeds, formats, label, out is None or is_folder_output(folder))


def load_adapter(catalog: Catalog, ref: str, step: int | None, kind: str) -> LoadedAdapter:
    """An adapter version (or one of its kept checkpoints) with its hash-checked tensors."""
    record = catalog.show(ref)
    if record.kind != kind:
        raise DvkitError(f"{record.ref} is a {record.kind} adapter, not a {kind}")
    blob = record.blob
    if step is not None:
        kept = catalog.checkpoint_steps(record.ref)
        if step not in kept:
            steps = ", ".join(map(str, kept)) or "none"
            raise NotFoundError(f"{record.ref} has no checkpoint at step {step} (kept: {steps})")
        blob = kept[step]
    return LoadedAdapter(record, step, load_adapter_tensors(catalog.read_blob(blob)))


def open_matching_base(
    catalog: Catalog, chosen: list[LoadedAdapter], default: str | None
) -> tuple[BaseComponents, object]:
    """The base all `chosen` adapters were trained on (when none is chosen: `default`, or the
    one `choose_base` gives)."""
    by_base = {a.record.base_fingerprint: a for a in reversed(chosen)}
    if len(by_base) > 1:
        first, second = list(by_base.values())[-2:][::-1]
        raise BaseMismatchError(
            f"{first.record.ref} was trained on base {_base_label(first.record)} but "
            f"{second.record.ref} on base {_base_label(second.record)}; adapters compose only "
            "onto the base they were trained on"
        )
    name = chosen[0].record.base if chosen else choose_base(catalog, default)
    components, base_record = open_base(catalog, name)
    check_trained_on(chosen, base_record.architecture, base_record.fingerprint, "in this catalog")
    return components, base_record


def check_trained_on(
    chosen: Sequence[LoadedAdapter], architecture: str, fingerprint: str, where: str
) -> None:
    """Raise `BaseMismatchError` for the first of `chosen` not trained on the base of this
    `architecture` and `fingerprint` (the base as found `where`, e.g. "in this catalog")."""
    for adapter in chosen:
        if adapter.record.base_fingerprint != fingerprint:
            raise BaseMismatchError(
                f"{adapter.record.ref} was trained on base {_base_label(adapter.record)}, but "
                f"base {adapter.record.base} {where} is {architecture}, {fingerprint[:12]}"
            )


def _default_size(components: BaseComponents) -> int:
    """A built-in base's own size (the tiny ones work at 16), else the size the denoiser was
    configured for."""
    if components.name in BUILTINS:
        return int(sampling_default(components.name, "size", components.architecture))
    return components.family.native_size(components)


def _base_label(record: AdapterRecord) -> str:
    """`NAME (FAMILY, FINGERPRINT)` of the base an adapter was trained on."""
    family = f"{record.architecture}, " if record.architecture else ""
    return f"{record.base} ({family}{record.base_fingerprint[:12]})"


def install_subject(
    components: BaseComponents,
    injector: AdapterInjector,
    subject: LoadedAdapter,
    name: str = "subject",
    token: str | None = None,
) -> None:
    """Teach the text encoder the subject's embedding under `token` (default: its own token)
    and load its identity adapter or LoRA as `name` (see `load_weights`; a LoRA subject may have
    no learned token, its trigger words being ordinary ones)."""
    embedding = subject.tensors.token_embedding
    if embedding is not None and subject.record.token:
        apply_token_embedding(
            components.tokenizer, components.text_encoder, token or subject.record.token, embedding
        )
    elif subject.record.method != "lora":
        raise DvkitError(f"{subject.record.ref} has no token embedding")
    load_weights(components, injector, name, subject)


def load_weights(
    components: BaseComponents, injector: AdapterInjector, name: str, adapter: LoadedAdapter
) -> None:
    """Load an adapter version's weights into `injector` as `name`: DreamVideo adapters beside
    their layers, a LoRA on its layers of the UNet and text encoder (`dvkit.models.lora`), a
    token-only subject (an imported textual inversion) as an empty adapter. Raises
    `LoraMismatchError` for a LoRA whose tensors do not fit the base, `DvkitError` for a LoRA
    on a two-expert base."""
    record, tensors = adapter.record, adapter.tensors.adapters
    if record.method == "lora":
        from dvkit.models.lora import TWO_EXPERTS, LoraWeights

        if components.unet_2 is not None:
            raise DvkitError(TWO_EXPERTS.format(base=components.name))
        roots = {"unet": components.unet, "text_encoder": components.text_encoder}
        weights = LoraWeights.from_tensors(record.kind, tensors, roots, f"base {components.name}")
        injector.load_lora(name, weights, components.text_encoder)
    elif not tensors:
        injector.load_empty(name, record.kind)
    else:
        injector.load(name, record.kind, tensors, record.hidden_ratio)


def guidance_embedding(
    motion: LoadedAdapter,
    subject: LoadedAdapter | None,
    guidance_image: str | Path | None,
    size: int,
    device: torch.device,
) -> torch.Tensor | None:
    """The appearance-guidance embedding: the given image (read whole, as a frame of a training
    clip), else the subject's first stored reference image, embedded as motion training embeds
    a frame (`appearance_embedding`, at the motion's training resolution, else `size`)."""
    from PIL import Image

    from dvkit.io.folders import collect_files
    from dvkit.io.images import IMAGE_EXTENSIONS, read_image
    from dvkit.models.image_encoder import load_image_encoder
    from dvkit.train.data import appearance_embedding

    if guidance_image is not None:
        if Path(guidance_image).is_dir():
            raise DvkitError(f"--guidance-image takes one image file, not folder {guidance_image}")
        found = collect_files([guidance_image], IMAGE_EXTENSIONS, "images")
        image = read_image(found.paths[0])
    elif subject is not None and subject.tensors.reference_images is not None:
        image = Image.fromarray(subject.tensors.reference_images[0].numpy())
    else:
        return None
    spec = motion.record.training.get("image_encoder") or "tiny"
    resolution = int(motion.record.training.get("resolution") or size)
    return appearance_embedding(load_image_encoder(spec, device), image, resolution)


def takes_appearance(motion: LoadedAdapter) -> bool:
    """Whether `motion` reads an appearance embedding: a DreamVideo motion adapter does, a LoRA
    motion does not (no zero-embedding warning for it)."""
    return motion.record.method != "lora"


def warn_zero_embedding(motion: LoadedAdapter, subject: LoadedAdapter | None) -> None:
    """Say (as a `DvkitWarning`) that `motion` composes with no appearance image, and how to
    give one."""
    how = "give one with --guidance-image"
    if subject is not None:
        how += f", or re-import {subject.record.ref} with --references DIR"
    warnings.warn(
        f"no guidance image for {motion.label}: the motion adapter gets a zero appearance "
        f"embedding; {how}",
        DvkitWarning,
        stacklevel=2,
    )


def _trained(adapter: LoadedAdapter | None, key: str, default: int) -> int:
    value = adapter.record.training.get(key) if adapter else None
    return int(value) if value else default
