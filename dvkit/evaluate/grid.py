"""Evaluation grids: every subject × motion × prompt × seed, with the paper's baselines.

Each cell is one video: the pair's subject and motion together ("joint"), the subject alone,
the motion alone, or the bare base ("base"; subject-less cells are prompted with the subject's
initializer word). Cells are generated several at a time in one UNet batch (per-row adapters),
scored once with the encoders loaded once (reference and text embeddings cached per grid),
and stored in the catalog with their cell key, so a re-run skips finished cells.

Two ways to split a grid: `shard` splits it over processes of one host that share the catalog
(SQLite's locking is not safe on network filesystems); a `world` of several ranks (`torchrun`,
`accelerate launch`) splits it over GPUs and hosts, with rank 0 alone opening the catalog and
the other ranks running `serve` (see `dvkit.evaluate.ranks`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dvkit.bases import BaseSource, base_source
from dvkit.catalog import Catalog
from dvkit.catalog.records import EvaluationRecord
from dvkit.distributed import World, rank_device
from dvkit.errors import DvkitError, DvkitWarning, Terminated
from dvkit.evaluate import metrics
from dvkit.evaluate.encoders import DEFAULT_CLIP, DEFAULT_DINO
from dvkit.evaluate.ranks import POLL, Link, RankStopped, assign, share
from dvkit.evaluate.score import Scorer
from dvkit.generate.compose import (
    LoadedAdapter,
    check_counts,
    check_trained_on,
    guidance_embedding,
    install_subject,
    load_adapter,
    load_weights,
    open_matching_base,
    takes_appearance,
    warn_zero_embedding,
)
from dvkit.generate.sampler import Row, SamplerSettings, check_size, sample
from dvkit.io.video import to_uint8, write_video
from dvkit.models.builtin import motion_uncond_strength, sampler_choices, sampling_default
from dvkit.models.components import BaseComponents
from dvkit.models.injection import AdapterInjector
from dvkit.models.loading import quiet_libraries, resolve_device, resolve_dtype
from dvkit.models.text import check_prompts
from dvkit.models.textual_inversion import expand_placeholder, initializer_word
from dvkit.sprites.base import SPRITES_BASES
from dvkit.templates import check_template
from dvkit.wording import plural

ROLES = ("joint", "subject", "motion", "base")
STOP_WAIT = 3.0
"""Seconds rank 0, stopped by a signal, waits at most to hear from each other rank (a beat, or
that it was stopped too); each working rank beats every `dvkit.evaluate.ranks.BEAT` seconds."""
DEFAULT_TEMPLATE = "a {subject} {motion}"
_OPTIONS = {
    "steps": "--steps", "guidance_scale": "--guidance", "frames": "--frames", "height": "--size",
    "motion_until": "--motion-until", "offset_noise": "--offset-noise", "clip": "--clip",
    "dino": "--dino",
}  # fmt: skip
"""The `bench` option of each setting a report can be chosen by."""


class GridInterrupted(DvkitError):
    """A grid stopped by Ctrl-C or SIGTERM; the cells made before are stored."""

    def __init__(self, signal: KeyboardInterrupt, made: int, stored: int, cells: int) -> None:
        self.exit_code = 143 if isinstance(signal, Terminated) else 130
        reason = "stopped by SIGTERM" if isinstance(signal, Terminated) else "interrupted"
        super().__init__(
            f"{reason}: {plural(made, 'new cell')} stored ({stored}/{cells} in the catalog); "
            "re-run the same command to make the rest"
        )


@dataclass(frozen=True)
class Cell:
    """One video of the grid: which adapters act, for which subject × motion pair."""

    pair_subject: str
    pair_motion: str
    role: str
    template: str
    seed: int

    @property
    def subject(self) -> str | None:
        return self.pair_subject if self.role in ("joint", "subject") else None

    @property
    def motion(self) -> str | None:
        return self.pair_motion if self.role in ("joint", "motion") else None

    def key(self, sampler: dict) -> str:
        text = json.dumps({**asdict(self), "sampler": sampler}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class GridResult:
    cells: int = 0
    skipped: int = 0
    generated: int = 0
    rows: list[dict] = field(default_factory=list)
    """The stored evaluation of every cell of this grid (this shard's cells)."""


@dataclass
class _Plan:
    """One base's part of the grid: its adapters, sampler, cells and the ones still to do."""

    base: str
    source: BaseSource
    subjects: dict[str, LoadedAdapter]
    motions: dict[str, LoadedAdapter]
    settings: SamplerSettings
    sampler: dict
    uncond: dict[str, float]
    cells: list[Cell]
    keys: dict[str, Cell]
    todo: list[Cell]


def bench(
    catalog: Catalog,
    subjects: Sequence[str] | None = None,
    motions: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    base: str | None = None,
    baselines: bool = True,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 4,
    settings: SamplerSettings | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    frames: int | None = None,
    size: int | None = None,
    motion_until: float | None = None,
    offset_noise: float | None = None,
    image_strength_uncond: float | None = None,
    fps: float = 8.0,
    clip: str | None = None,
    dino: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    generate: bool = True,
    on_cell: Callable[[int, int], None] | None = None,
    world: World | None = None,
    rank_timeout: float = 60.0,
) -> GridResult:
    """Generate, score and store every missing cell of the grid; return all its evaluations.

    The grid is grouped by base: each base's subjects × its motions, with its own baselines and
    sampler defaults (adapters compose only onto their own base; `base` keeps one base's
    adapters). A base with subjects but no motions (or the reverse) is left out with a
    `DvkitWarning`.

    `templates` default to `DEFAULT_TEMPLATE`, `seeds` to 0, the encoders `clip` and `dino`
    (part of each cell's key: cells scored with other encoders are scored anew) to
    `DEFAULT_CLIP` and `DEFAULT_DINO`. `settings` fixes the whole sampler; otherwise `steps`,
    `guidance`, `frames`, `size`, `motion_until` and `offset_noise` override the defaults (the
    adapters' training frames and resolution, the base's own sampling defaults). Cells with a
    motion use its own `image_strength_uncond` (see `compose`) unless one is given here. Joint
    cells of a subject without reference images get a zero appearance embedding, with a
    `DvkitWarning`. Subjects that share a token are each given their own while the grid runs
    (one subject acts per cell). Before the first cell, every prompt of the grid is checked: a
    learned token past the text encoder's length raises PromptTooLongError, a cut prompt warns.
    `on_cell(done, total)` counts the cells of every base together: it is called once with the
    cells already stored before the first cell is made, then after each cell.

    With a `world` of several ranks (`dvkit.distributed.current_world("gloo")`; this is rank
    0, the others run `serve`), rank 0 sends the adapters to the other ranks and deals them the
    missing cells' batches balanced by cost (cells × frames × steps); each rank generates and
    scores its batches on its own device (`device` auto: the GPU of its local rank) and sends
    each cell back as it is done, and rank 0 stores it and counts it in `on_cell`. The batches
    are the ones a single process makes, so the cells and scores are the same. A rank that
    fails, dies or gives no word for `rank_timeout` seconds stops the run with `RankStopped`
    (cells stored so far are kept); on any error or KeyboardInterrupt rank 0 stops the others.
    Stopped by a signal (Ctrl-C, or SIGTERM from a launcher whose other rank died), rank 0
    first waits `STOP_WAIT` seconds at most to hear from the other ranks: one that neither says
    it was stopped too nor beats has died, and the run stops with `RankStopped` naming it.
    Ctrl-C or SIGTERM (see `dvkit.cli.progress.interrupt_on_terminate`) otherwise raises
    `GridInterrupted`, saying how many cells are stored.

    With `generate=False` nothing is generated: the result holds the stored cells of the chosen
    adapters, roles, and of the templates, seeds and settings given (any where not given), as
    long as each base's were made with one set of settings; a `DvkitError` names the stored
    settings when no base's match or one base's cells have several.
    """
    spread = world is not None and world.size > 1
    options = {
        "steps": steps, "guidance": guidance, "frames": frames, "size": size,
        "motion_until": motion_until, "offset_noise": offset_noise,
        "image_strength_uncond": image_strength_uncond, "clip": clip, "dino": dino,
    }  # fmt: skip
    try:
        plans = _plans(catalog, subjects, motions, templates, seeds, base, baselines, shard,
                       batch_size, settings, options, generate, spread)  # fmt: skip
    except BaseException:
        if spread:
            share(world, None)  # the other ranks wait for a grid: there is none
        raise
    if isinstance(plans, GridResult):
        if spread:
            share(world, None)
        return plans
    result = GridResult(
        cells=sum(len(plan.keys) for plan in plans),
        skipped=sum(len(plan.keys) - len(plan.todo) for plan in plans),
    )

    def store(plan: _Plan, cell: Cell, frames: np.ndarray, scores: dict[str, float]) -> None:
        _store(catalog, plan, cell, frames, scores, fps)
        result.generated += 1
        if on_cell:
            on_cell(result.skipped + result.generated, result.cells)

    if on_cell and result.skipped < result.cells:
        on_cell(result.skipped, result.cells)  # the clock of the cells made here starts
    try:
        if spread:
            assert world is not None
            _spread(plans, batch_size, device, dtype, store, world, rank_timeout)
        for plan in plans:
            if plan.todo and not spread:
                chosen = [*plan.subjects.values(), *plan.motions.values()]
                components, _ = open_matching_base(catalog, chosen, plan.base)
                _generate(plan, components, _batches(plan.todo, batch_size), device, dtype,
                          partial(store, plan))  # fmt: skip
    except KeyboardInterrupt as exc:
        stored = result.skipped + result.generated
        raise GridInterrupted(exc, result.generated, stored, result.cells) from None
    result.rows = [row for plan in plans for row in catalog.evaluation_rows(list(plan.keys))]
    return result


def _plans(
    catalog: Catalog,
    subjects: Sequence[str] | None,
    motions: Sequence[str] | None,
    templates: Sequence[str] | None,
    seeds: Sequence[int] | None,
    base: str | None,
    baselines: bool,
    shard: tuple[int, int],
    batch_size: int,
    settings: SamplerSettings | None,
    options: dict,
    generate: bool,
    spread: bool,
) -> list[_Plan] | GridResult:
    """`bench`'s arguments checked, and one plan per base (with `generate`), else the stored
    cells; `options` holds `bench`'s sampler and encoder options by name."""
    quiet_libraries()
    index, count = shard
    if not 0 <= index < count:
        raise DvkitError(f"shard {index}/{count}: the index must be between 0 and {count - 1}")
    if spread and count > 1:
        raise DvkitError(
            "shard splits a grid over processes of one host; under torchrun or accelerate "
            "launch the ranks split it: give no shard"
        )
    if batch_size < 1:
        raise DvkitError("the batch size must be at least 1")
    templates = [DEFAULT_TEMPLATE] if templates is None and generate else templates
    seeds = [0] if seeds is None and generate else seeds
    for template in templates or ():
        check_template(template, ["subject", "motion"])
    check_counts([0] if seeds is None else seeds, options["steps"], options["frames"],
                 options["size"])  # fmt: skip
    groups = _by_base(
        _adapters(catalog, subjects, "subject", base), _adapters(catalog, motions, "motion", base)
    )
    roles = ROLES if baselines else ("joint",)
    if not generate:
        given = asdict(settings) if settings is not None else {
            "steps": options["steps"], "guidance_scale": options["guidance"],
            "frames": options["frames"], "height": options["size"],
            "motion_until": options["motion_until"], "offset_noise": options["offset_noise"],
        }  # fmt: skip
        given.update({key: options[key] for key in ("clip", "dino", "image_strength_uncond")})
        rows = _stored_groups(catalog, groups, roles, templates, seeds, given)
        return GridResult(cells=len(rows), skipped=len(rows), rows=rows)
    options = {**options, "clip": options["clip"] or DEFAULT_CLIP,
               "dino": options["dino"] or DEFAULT_DINO}  # fmt: skip
    return [
        _plan(catalog, group, settings, options, roles, templates, seeds, shard) for group in groups
    ]


@dataclass
class _Job:
    """What rank 0 sends the other ranks: the plans (adapters, sampler, cells), their missing
    cells' batches as (plan index, cells), which batches each rank makes, and how."""

    run: str
    plans: list[_Plan]
    batches: list[tuple[int, list[Cell]]]
    shares: list[list[int]]
    device: str
    dtype: str
    timeout: float


def _spread(
    plans: list[_Plan],
    batch_size: int,
    device: str,
    dtype: str,
    store: Callable[[_Plan, Cell, np.ndarray, dict[str, float]], None],
    world: World,
    timeout: float,
) -> None:
    """Rank 0's part of a grid over several ranks: deal the batches, make its own, `store`
    every rank's cells as they arrive; `RankStopped` when a rank stops early."""
    batches = [(index, batch) for index, plan in enumerate(plans)
               for batch in _batches(plan.todo, batch_size)]  # fmt: skip
    costs = [len(batch) * plans[i].settings.frames * plans[i].settings.steps
             for i, batch in batches]  # fmt: skip
    job = _Job(uuid.uuid4().hex, plans, batches, assign(costs, world.size), device, dtype, timeout)
    share(world, job)
    link = Link(world, job.run, timeout)
    left = {rank: sum(len(batches[i][1]) for i in job.shares[rank])
            for rank in range(1, world.size)}  # fmt: skip

    def keep() -> None:
        for rank, message in link.received():
            cell = Cell(**message["cell"])
            store(plans[message["index"]], cell, message["frames"], message["scores"])
            left[rank] -= 1

    def collect() -> None:
        keep()
        link.check(rank for rank, count in left.items() if count)

    try:
        _work(job, world, lambda index: partial(store, plans[index]), collect)
        while any(left.values()):
            collect()
            time.sleep(POLL)
    except KeyboardInterrupt:
        dead = link.silent([rank for rank, count in left.items() if count], STOP_WAIT, keep)
        link.stop()
        keep()
        if dead is not None:
            raise RankStopped(
                f"rank {dead} stopped (its process ended; the launcher stopped the others): "
                "the cells finished so far are stored, re-run to make the rest"
            ) from None
        raise
    except BaseException:
        link.stop()
        keep()
        raise


def serve(world: World) -> None:
    """The part of a rank other than 0 in a grid that rank 0 runs with `bench(world=...)`:
    receive the grid, make this rank's batches on its own device and send each cell to rank 0,
    without opening any catalog (bases load from this host's Hugging Face cache or folders).

    Returns when its cells are sent, when rank 0 has no grid (an error there) or when rank 0
    stops the run; raises `RankStopped` when rank 0 is gone before sending the grid, and any
    error of its own work (after telling rank 0).
    """
    job = share(world, None)
    if not isinstance(job, _Job):
        return
    link = Link(world, job.run, job.timeout)
    link.beat()

    def send(index: int, cell: Cell, frames: np.ndarray, scores: dict[str, float]) -> None:
        link.send({"index": index, "cell": asdict(cell), "frames": frames, "scores": scores})

    try:
        try:
            _work(job, world, lambda index: partial(send, index), None)
        finally:
            link.close()  # a stop from rank 0 that came before is raised here at the latest
    except KeyboardInterrupt:
        if not link.stopped:
            link.told()  # a signal (the launcher's, when another rank died): rank 0 hears it
            raise
    except Exception as exc:
        link.fail(" ".join(str(exc).split()) or type(exc).__name__)
        raise


_Deliver = Callable[[Cell, np.ndarray, dict[str, float]], None]
"""What takes each finished cell: its uint8 frames (F, H, W, 3) and its scores."""


def _work(
    job: _Job,
    world: World,
    deliver: Callable[[int], _Deliver],
    between: Callable[[], None] | None,
) -> None:
    """Make this rank's batches of `job`, base by base (each loaded here and checked against
    the adapters' base); `deliver(plan index)` takes each cell, `between` runs after each
    batch."""
    run_device = rank_device(job.device, world)
    if run_device.type == "cuda" and run_device.index is not None:
        torch.cuda.set_device(run_device)  # what libraries put on "cuda" goes to this rank's GPU
    device = str(run_device)
    mine = [job.batches[i] for i in job.shares[world.rank]]
    for index, plan in enumerate(job.plans):
        batches = [batch for i, batch in mine if i == index]
        if batches:
            components = plan.source.load()
            chosen = [*plan.subjects.values(), *plan.motions.values()]
            check_trained_on(chosen, components.architecture, components.fingerprint(),
                             f"on the host of rank {world.rank}")  # fmt: skip
            _generate(plan, components, batches, device, job.dtype, deliver(index), between)


def _batches(cells: list[Cell], size: int) -> list[list[Cell]]:
    """`cells` in runs of `size` (the last one shorter), as a single process makes them."""
    return [cells[start : start + size] for start in range(0, len(cells), size)]


_Group = tuple[dict[str, LoadedAdapter], dict[str, LoadedAdapter]]


def _by_base(subjects: dict[str, LoadedAdapter], motions: dict[str, LoadedAdapter]) -> list[_Group]:
    """The adapters split by the base they were trained on (name and fingerprint), in order of
    base name; a base lacking subjects or motions is left out with a `DvkitWarning`, and a
    `DvkitError` when no base has both."""
    groups: dict[tuple[str, str], _Group] = {}
    for kind, adapters in enumerate((subjects, motions)):
        for ref, adapter in adapters.items():
            key = (adapter.record.base, adapter.record.base_fingerprint)
            groups.setdefault(key, ({}, {}))[kind][ref] = adapter
    complete = [group for _, group in sorted(groups.items()) if all(group)]
    for (name, _), (group_subjects, group_motions) in sorted(groups.items()):
        if not (group_subjects and group_motions):
            lacking, having = ("motions", group_subjects) if group_subjects else (
                "subjects", group_motions)  # fmt: skip
            message = f"base {name} has no {lacking} to pair with {', '.join(having)}: left out"
            if complete:
                warnings.warn(message, DvkitWarning, stacklevel=3)
    if not complete:
        bases = ", ".join(sorted({name for name, _ in groups}))
        raise DvkitError(
            f"no subject and motion share a base (bases: {bases}); adapters compose only onto "
            "the base they were trained on"
        )
    return complete


def _plan(
    catalog: Catalog,
    group: _Group,
    settings: SamplerSettings | None,
    options: dict,
    roles: Sequence[str],
    templates: Sequence[str],
    seeds: Sequence[int],
    shard: tuple[int, int],
) -> _Plan:
    """One base's cells, sampler and the cells of this shard still to do."""
    subject_adapters, motion_adapters = group
    chosen = [*subject_adapters.values(), *motion_adapters.values()]
    base = chosen[0].record.base
    if settings is None:
        settings = _default_settings(base, chosen[0].record.architecture, group, options)
    sampler = {
        **asdict(settings), "base": base, "image_strength_uncond": options["image_strength_uncond"],
        "clip": options["clip"], "dino": options["dino"],
    }  # fmt: skip
    uncond = {ref: motion_uncond_strength(a.record.training) for ref, a in motion_adapters.items()}
    if options["image_strength_uncond"] is not None:
        uncond = dict.fromkeys(uncond, options["image_strength_uncond"])
    cells = sorted(
        (Cell(s, m, role, t, seed) for s in subject_adapters for m in motion_adapters
         for role in roles for t in templates for seed in seeds),
        key=lambda cell: cell.key(sampler),
    )  # fmt: skip
    index, count = shard
    mine = [cell for position, cell in enumerate(cells) if position % count == index]
    keys = {cell.key(sampler): cell for cell in mine}
    done = {row["cell"] for row in catalog.evaluation_rows(list(keys))}
    todo = [cell for key, cell in keys.items() if key not in done]
    return _Plan(base, base_source(catalog, base), subject_adapters, motion_adapters, settings,
                 sampler, uncond, cells, keys, todo)  # fmt: skip


def _default_settings(
    base: str, architecture: str | None, group: _Group, options: dict
) -> SamplerSettings:
    """The sampler of one base's cells: the options given, else the adapters' training frames
    and size (subjects without one, imported ones, go by the motions'), else the base's."""
    subject_adapters, motion_adapters = group
    size, frames = options["size"], options["frames"]
    if size is None:
        default_size = int(sampling_default(base, "size", architecture))
        motion_size = _trained(motion_adapters, "resolution", default_size)
        size = _trained(subject_adapters, "resolution", motion_size)
    if frames is None:
        default_frames = int(sampling_default(base, "frames", architecture))
        frames = _trained(motion_adapters, "frames", default_frames)
    steps, guidance, motion_until, offset_noise = sampler_choices(
        base, options["steps"], options["guidance"], options["motion_until"],
        options["offset_noise"], architecture,
    )  # fmt: skip
    return SamplerSettings(
        steps=steps, guidance_scale=guidance, frames=frames, height=size, width=size,
        motion_until=motion_until, offset_noise=offset_noise,
    )  # fmt: skip


def _generate(
    plan: _Plan,
    components: BaseComponents,
    batches: list[list[Cell]],
    device: str,
    dtype: str,
    deliver: _Deliver,
    between: Callable[[], None] | None = None,
) -> None:
    """Generate and score `batches` of the plan's cells on `components` (one UNet batch each),
    handing each cell to `deliver`; `between` runs after each batch."""
    subject_adapters, motion_adapters, settings = plan.subjects, plan.motions, plan.settings
    check_size(components, settings.height)
    tokens = _generation_tokens(subject_adapters)
    run_device = resolve_device(device)
    run_dtype = resolve_dtype(dtype, run_device)
    components.freeze(run_device, run_dtype)
    injector = AdapterInjector(components.unet, components.unet_2)
    for ref, adapter in subject_adapters.items():
        install_subject(components, injector, adapter, f"subject:{ref}", tokens[ref])
    check_prompts(  # every cell of the grid, so each shard refuses the same templates
        components.tokenizer,
        sorted({_generation_prompt(cell, subject_adapters, motion_adapters, tokens)
                for cell in plan.cells}),
    )  # fmt: skip
    for ref, adapter in motion_adapters.items():
        load_weights(components, injector, f"motion:{ref}", adapter)
    for name in injector.loaded:
        injector.get(name).to(dtype=run_dtype)
    guidance = {
        (s, m): guidance_embedding(motion_adapters[m], subject_adapters[s], None,
                                   settings.height, run_device)
        for s in subject_adapters for m in motion_adapters
    }  # fmt: skip
    todo = [cell for batch in batches for cell in batch]
    for s in subject_adapters:
        missing = [
            m
            for m, motion in motion_adapters.items()
            if guidance[(s, m)] is None and takes_appearance(motion)
        ]
        if missing and any(c.role == "joint" and c.pair_subject == s for c in todo):
            warn_zero_embedding(motion_adapters[missing[0]], subject_adapters[s])
    scorer = _CachedScorer(
        Scorer(plan.sampler["clip"], plan.sampler["dino"], device), subject_adapters,
        motion_adapters, plan.base in SPRITES_BASES,
    )  # fmt: skip
    try:
        for batch in batches:
            rows = [
                _row(cell, subject_adapters, motion_adapters, tokens, guidance, plan.uncond)
                for cell in batch
            ]
            videos = sample(components, rows, settings, injector)
            for cell, video in zip(batch, videos, strict=True):
                deliver(cell, to_uint8(video.numpy()), scorer.score(cell, video))
            if between:
                between()
    finally:
        injector.detach()


def _store(
    catalog: Catalog,
    plan: _Plan,
    cell: Cell,
    frames: np.ndarray,
    scores: dict[str, float],
    fps: float,
) -> None:
    """Write a finished cell's uint8 frames (F, H, W, 3) as its GIF and store its evaluation."""
    key = cell.key(plan.sampler)
    folder = catalog.home / "videos" / "grid"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_video(frames, folder / f"{key}.gif", fps)
    strength = plan.uncond[cell.motion] if cell.motion else None
    used = {**plan.sampler, "image_strength_uncond": strength}
    catalog.add_evaluation(_record(cell, key, used, plan.subjects, plan.motions, scores, path))


def prompt_text(cell: Cell, subjects: dict, motions: dict, for_scoring: bool) -> str:
    """The cell's prompt: the subject's token when its adapter acts (for generation), else its
    initializer word (`initializer_word`; always, for CLIP-T: CLIP does not know the token)."""
    subject = subjects[cell.pair_subject].record
    word = initializer_word(subject.initializer, subject.name)
    if cell.subject is not None and not for_scoring:
        word = subject.token or word
    return _filled(cell, word, motions)


def _filled(cell: Cell, word: str, motions: dict) -> str:
    """The cell's template with `word` for the subject and the motion's caption (or name)."""
    record = motions[cell.pair_motion].record
    caption = record.training.get("caption") or record.name
    return cell.template.format(subject=word, motion=caption.replace("_", " ").replace("-", " "))


class _CachedScorer:
    """Scores videos with text and reference embeddings computed once per grid; on the sprites
    base also with the ground-truth metrics, against the pair's subject and motion."""

    def __init__(
        self,
        scorer: Scorer,
        subjects: dict[str, LoadedAdapter],
        motions: dict[str, LoadedAdapter],
        ground_truth: bool = False,
    ) -> None:
        self.scorer, self.subjects, self.motions = scorer, subjects, motions
        self._texts: dict[str, torch.Tensor] = {}
        self._references: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._targets = _sprites_targets(subjects, motions) if ground_truth else None

    def score(self, cell: Cell, frames: torch.Tensor) -> dict[str, float]:
        """Metrics of a generated video's frames (F, H, W, 3), floats in [0, 1]."""
        clip_frames = self.scorer.clip.images(frames)
        result = {"t_cons": metrics.temporal_consistency(clip_frames)}
        prompt = prompt_text(cell, self.subjects, self.motions, for_scoring=True)
        if prompt not in self._texts:
            self._texts[prompt] = self.scorer.clip.texts([prompt])[0]
        result["clip_t"] = metrics.text_alignment(self._texts[prompt], clip_frames)
        references = self._reference_embeddings(cell.pair_subject)
        if references is not None:
            clip_refs, dino_refs = references
            result["clip_i"] = metrics.image_similarity(clip_refs, clip_frames)
            dino_frames = self.scorer.dino.images(frames)
            result["dino_i"] = metrics.image_similarity(dino_refs, dino_frames)
        if self._targets is not None:
            from dvkit.sprites.metrics import ground_truth

            subjects, motions = self._targets
            targets = subjects[cell.pair_subject], motions[cell.pair_motion]
            result.update(ground_truth(frames.float().cpu().numpy(), *targets))
        return result

    def _reference_embeddings(self, ref: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if ref not in self._references:
            images = self.subjects[ref].tensors.reference_images
            self._references[ref] = None if images is None else (
                self.scorer.clip.images(images), self.scorer.dino.images(images))  # fmt: skip
        return self._references[ref]


def _sprites_targets(
    subjects: dict[str, LoadedAdapter], motions: dict[str, LoadedAdapter]
) -> tuple[dict[str, tuple[str, str] | None], dict[str, str | None]]:
    """Each subject's colour and shape (read from its reference images) and each motion's
    sprites motion (named by the adapter's name or caption), where known."""
    from dvkit.sprites.metrics import describe, motion_named

    subject_targets: dict[str, tuple[str, str] | None] = {}
    for ref, adapter in subjects.items():
        images = adapter.tensors.reference_images
        try:
            subject_targets[ref] = (
                None if images is None else describe(images.float().numpy() / 255)
            )
        except ValueError:
            subject_targets[ref] = None
    motion_targets = {
        ref: motion_named(a.record.name, a.record.training.get("caption") or "")
        for ref, a in motions.items()
    }
    return subject_targets, motion_targets


def _generation_prompt(cell: Cell, subjects: dict, motions: dict, tokens: dict) -> str:
    """The cell's prompt as the text encoder gets it (the subject's token from `tokens`, see
    `_generation_tokens`, expanded)."""
    if cell.subject is None:
        return prompt_text(cell, subjects, motions, for_scoring=False)
    token = tokens[cell.subject]
    num_vectors = subjects[cell.subject].record.num_vectors or 1
    return expand_placeholder(_filled(cell, token, motions), token, num_vectors)


def _generation_tokens(subjects: dict[str, LoadedAdapter]) -> dict[str, str]:
    """The token each subject is installed under: its own ("" for a LoRA without one), but for
    a later subject with the token of an earlier one a stand-in `<NAME-N>` (one subject acts per
    cell, so stored prompts keep each subject's own token)."""
    taken = {adapter.record.token for adapter in subjects.values()}
    tokens: dict[str, str] = {}
    for ref, adapter in subjects.items():
        token = adapter.record.token or ""
        if token and token in tokens.values():
            stand_ins = (f"<{adapter.record.name}-{n}>" for n in itertools.count(2))
            token = next(t for t in stand_ins if t not in taken and t not in tokens.values())
        tokens[ref] = token
    return tokens


def _row(
    cell: Cell, subjects: dict, motions: dict, tokens: dict, guidance: dict, uncond: dict
) -> Row:
    text = _generation_prompt(cell, subjects, motions, tokens)
    adapters: dict[str, float] = {}
    if cell.subject is not None:
        adapters[f"subject:{cell.subject}"] = 1.0
    embed = None
    if cell.motion is not None:
        adapters[f"motion:{cell.motion}"] = 1.0
        if cell.role == "joint":
            embed = guidance[(cell.pair_subject, cell.pair_motion)]
    return Row(text, cell.seed, "", adapters, embed, image_strength_uncond=uncond[cell.pair_motion])


def _record(
    cell: Cell, key: str, sampler: dict, subjects: dict, motions: dict, scores: dict, path: Path
) -> EvaluationRecord:
    subject = subjects[cell.subject].record if cell.subject else None
    motion = motions[cell.motion].record if cell.motion else None
    return EvaluationRecord(
        subject_id=subject.id if subject else None,
        motion_id=motion.id if motion else None,
        subject=subject.ref if subject else None,
        motion=motion.ref if motion else None,
        prompt=prompt_text(cell, subjects, motions, for_scoring=False),
        seed=cell.seed,
        sampler={
            **sampler,
            "role": cell.role,
            "pair": [cell.pair_subject, cell.pair_motion],
            "template": cell.template,
        },  # fmt: skip
        metrics=scores,
        files=[str(path)],
        cell=key,
    )


def _adapters(
    catalog: Catalog, refs: Sequence[str] | None, kind: str, base: str | None = None
) -> dict[str, LoadedAdapter]:
    """The chosen adapters of `kind` (all when `refs` is None), only those of `base` if given."""
    if refs is None:
        refs = [record.ref for record in catalog.list(kind=kind, base=base)]
    loaded = [load_adapter(catalog, ref, None, kind) for ref in refs]
    other = [a for a in loaded if base is not None and a.record.base != base]
    if other:
        raise DvkitError(f"{other[0].record.ref} was trained on base {other[0].record.base}, "
                         f"not on {base}")  # fmt: skip
    if not loaded:
        of = f" of base {base}" if base else ""
        raise DvkitError(f"no {kind} adapters{of} to evaluate (train or import some first)")
    return {adapter.record.ref: adapter for adapter in loaded}


def _stored_groups(
    catalog: Catalog,
    groups: list[_Group],
    roles: Sequence[str],
    templates: Sequence[str] | None,
    seeds: Sequence[int] | None,
    given: dict[str, object],
) -> list[dict]:
    """The stored cells of each base's grid (see `_stored`); the bases with none that match are
    left out, and the first base's `DvkitError` is raised when no base has any."""
    rows: list[dict] = []
    errors: list[DvkitError] = []
    for subjects, motions in groups:
        try:
            rows += _stored(catalog, subjects, motions, roles, templates, seeds, given)
        except DvkitError as exc:
            errors.append(exc)
    if not rows and errors:
        raise errors[0]
    return rows


def _stored(
    catalog: Catalog,
    subjects: dict[str, LoadedAdapter],
    motions: dict[str, LoadedAdapter],
    roles: Sequence[str],
    templates: Sequence[str] | None,
    seeds: Sequence[int] | None,
    given: dict[str, object],
) -> list[dict]:
    """The stored cells of these adapters and roles (and templates and seeds, where given)
    whose settings are the `given` ones not None; a `DvkitError` naming the stored settings
    when none match or they span several."""
    grid = [
        row for row in catalog.evaluation_rows()
        if row.get("cell") and (pair := row["sampler"].get("pair")) and pair[0] in subjects
        and pair[1] in motions and row["sampler"].get("role") in roles
        and (templates is None or row["sampler"].get("template") in templates)
        and (seeds is None or row["seed"] in seeds)
    ]  # fmt: skip
    wanted = {key: value for key, value in given.items() if value is not None}
    rows = [row for row in grid if all(row["sampler"].get(k) == v for k, v in wanted.items())]
    chosen = {_described(row["sampler"]) for row in rows}
    if len(chosen) == 1:
        return rows
    if not grid:
        raise DvkitError("no stored cells of this grid: run dvkit bench without --report first")
    if not rows:
        stored = "; ".join(sorted({_described(row["sampler"]) for row in grid}))
        raise DvkitError(f"no stored cells of this grid match these settings (stored: {stored})")
    raise DvkitError(
        f"the stored cells of this grid have several settings: {'; '.join(sorted(chosen))}; "
        "give the options of one"
    )


def _described(sampler: dict) -> str:
    """A stored cell's settings as the `bench` options that choose them."""
    return " ".join(f"{option} {_shown(sampler.get(key))}" for key, option in _OPTIONS.items())


def _shown(value: object) -> str:
    return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _trained(adapters: dict[str, LoadedAdapter], key: str, default: int) -> int:
    values = {a.record.training.get(key) for a in adapters.values()} - {None}
    return int(max(values)) if values else default
