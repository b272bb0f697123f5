"""Attach DreamVideo adapters to a base's denoiser without changing it.

Placement (DESIGN §1, §7): the base's family names, per adapter kind, the containers and the
class of the blocks adapters sit in, the slots of each block, and per slot the submodule that
reads the block's hidden states `h` (the norm feeding the layer) and the layer itself
(`Family.sites`, `block`, `slots`, `slot_modules`). On the UNet families identity ("subject")
adapters sit beside `attn2` of every `BasicTransformerBlock` inside the spatial containers (e.g.
`Transformer2DModel`) and motion adapters beside `attn1`, `attn2` and `ff` of every block inside
the temporal ones (`TransformerTemporalModel` with `transformer_in` on ModelScope,
`AnimateDiffTransformer3D` on AnimateDiff); on `wan` they sit in every `WanTransformerBlock`
(see `dvkit.families.wan`). A block then computes `h + layer(norm(h)) + A(h)`: a forward
pre-hook on the norm that feeds the layer records `h`, and a forward hook on the layer adds
`A(h)` to its output (in the layer's dtype). Where the block multiplies the layer's output by a
gate, as Wan's adaLN blocks do for `attn1` and `ffn`, the hook adds `A(h) / gate`, so the
adapter still acts outside the gate (see `dvkit.families.wan` for why; where |gate| < 1e-6 it
divides by ±1e-6 instead, `_outside_gate`).
Where a block adds positional embeddings to its layers' input (the `sprites` base gives its
temporal blocks frame positions), the adapter reads `h` with them added: otherwise a per-token
adapter in a temporal block could not tell one frame from another.
Adapters live outside the UNet, so its module tree and state dict never change; `detach()`
removes every hook. LoRAs (`dvkit.models.lora`, `load_lora`) are held and selected per row the
same way; they hook their own layers.

Tensor names (the file format): `<block path>.<slot>_adapter.<down|up|cond>.<weight|bias>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dvkit.errors import ConflictError, DvkitError, NotFoundError
from dvkit.families import family_of_denoiser
from dvkit.models.adapters import (
    ADAPTER_KINDS,
    DEFAULT_COND_DIM,
    DEFAULT_HIDDEN_RATIO,
    Adapter,
    AdapterKind,
)
from dvkit.models.lora import LoraWeights

_NAMES_SHOWN = 3
GATE_EPSILON = 1e-6
"""Smallest gate magnitude an adapter's output is divided by (see `_outside_gate`)."""


class AdapterMismatchError(DvkitError):
    """Adapter tensors whose names or shapes do not fit the base's UNet."""


@dataclass(frozen=True)
class AdapterSlot:
    """One adapter position: the transformer block's module path, the layer beside it, the width."""

    block: str
    slot: str
    channels: int

    @property
    def prefix(self) -> str:
        """The tensor-name prefix of the adapter in this slot."""
        return f"{self.block}.{self.slot}_adapter"


SECOND_EXPERT = "transformer_2"
"""Block-path prefix of the adapters on a base's second denoiser (Wan 2.2 A14B's low-noise
expert, `BaseComponents.unet_2`); adapters on the first keep their plain block paths."""

Denoisers = nn.Module | Mapping[str, nn.Module]
"""A denoiser, or denoisers by block-path prefix ("" for the first, `SECOND_EXPERT`)."""


def adapter_slots(unet: Denoisers, kind: AdapterKind) -> list[AdapterSlot]:
    """Every slot an adapter of `kind` occupies in `unet`, in module order: the family's slots
    for `kind` in each of its blocks inside the containers it names for `kind` (`Family.sites`,
    `Family.block`, `Family.slots`). For several denoisers, each one's slots in turn, their
    block paths under the denoiser's prefix."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {ADAPTER_KINDS}")
    if isinstance(unet, Mapping):
        return [
            AdapterSlot(".".join(part for part in (label, slot.block) if part), slot.slot,
                        slot.channels)
            for label, module in unet.items()
            for slot in adapter_slots(module, kind)
        ]  # fmt: skip
    family = family_of_denoiser(unet)
    containers, block_class = family.containers(kind), family.block_class()
    slots = []
    for path, container in unet.named_modules():
        if not isinstance(container, containers):
            continue
        for sub_path, block in container.named_modules():
            if isinstance(block, block_class):
                block_path = ".".join(part for part in (path, sub_path) if part)
                width = family.block_width(block)
                slots += [AdapterSlot(block_path, slot, width) for slot in family.slots[kind]]
    return slots


class AdapterWeights(nn.Module):
    """The adapters of one kind for every slot of one UNet (one trained subject or motion).

    Its own `state_dict()` names are internal; `tensors()` gives the file-format names.
    """

    def __init__(
        self,
        kind: AdapterKind,
        slots: Sequence[AdapterSlot],
        hidden_ratio: float = DEFAULT_HIDDEN_RATIO,
        cond_dim: int | None = None,
    ) -> None:
        if (kind == "motion") != (cond_dim is not None):
            raise ValueError("motion adapters need a cond_dim and identity adapters take none")
        super().__init__()
        self.kind = kind
        self.slots = list(slots)
        self.hidden_ratio = hidden_ratio
        self.cond_dim = cond_dim
        self.adapters = nn.ModuleDict(
            {_module_key(s.prefix): Adapter(s.channels, hidden_ratio, cond_dim) for s in self.slots}
        )

    @classmethod
    def create(
        cls,
        unet: Denoisers,
        kind: AdapterKind,
        hidden_ratio: float = DEFAULT_HIDDEN_RATIO,
        cond_dim: int | None = None,
        seed: int | None = None,
    ) -> AdapterWeights:
        """Fresh (zero-output) adapters for `unet`; motion ones default to `DEFAULT_COND_DIM`."""
        if kind == "motion" and cond_dim is None:
            cond_dim = DEFAULT_COND_DIM
        slots = adapter_slots(unet, kind)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return cls(kind, slots, hidden_ratio, cond_dim)

    @classmethod
    def from_tensors(
        cls,
        unet: Denoisers,
        kind: AdapterKind,
        tensors: Mapping[str, torch.Tensor],
        hidden_ratio: float = DEFAULT_HIDDEN_RATIO,
    ) -> AdapterWeights:
        """Adapters holding `tensors` (file-format names), checked against `unet`'s slots.

        The condition width of motion adapters is read from the tensors. Raises
        `AdapterMismatchError` naming what is missing, unexpected or of the wrong shape.
        """
        slots = adapter_slots(unet, kind)
        cond_dim = _cond_dim(tensors) if kind == "motion" else None
        with torch.device("meta"):
            expected = cls(kind, slots, hidden_ratio, cond_dim).tensors()
        _check_tensors({key: tuple(value.shape) for key, value in expected.items()}, tensors)
        weights = cls(kind, slots, hidden_ratio, cond_dim)
        for slot in slots:
            adapter = weights.adapter(slot.prefix)
            adapter.load_state_dict(
                {key: tensors[f"{slot.prefix}.{key}"] for key in adapter.state_dict()}
            )
        return weights

    def adapter(self, prefix: str) -> Adapter | None:
        """The adapter at a slot prefix, or None if this set has no adapter there."""
        key = _module_key(prefix)
        return self.adapters[key] if key in self.adapters else None

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The parameters under their file-format names."""
        return {
            f"{slot.prefix}.{key}": value
            for slot in self.slots
            for key, value in self.adapters[_module_key(slot.prefix)].named_parameters()
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """All weights under their file-format names (sharing storage with the modules)."""
        return {name: value.detach() for name, value in self.parameters_by_name().items()}


def create_adapter_state(
    unet: Denoisers,
    kind: AdapterKind,
    hidden_ratio: float = DEFAULT_HIDDEN_RATIO,
    cond_dim: int | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of fresh adapters of `kind` for `unet` (see `AdapterWeights.create`)."""
    return AdapterWeights.create(unet, kind, hidden_ratio, cond_dim, seed).tensors()


@dataclass
class _Selection:
    """Where one loaded adapter acts in the next UNet calls.

    `rows` lists the video rows that use it with one scale each in `scales`; `rows` None means
    every row, at the single scale `scales`.
    """

    rows: torch.Tensor | None
    scales: torch.Tensor | float


class AdapterInjector:
    """Adapters, keyed by name, hooked into one UNet (or both experts of a Wan 2.2 A14B base:
    `unet_2`, whose adapters' names start with `SECOND_EXPERT`) and selected per row of the
    video batch.

    Nothing is active after `load`: call `set_active` (same adapters on every row) or `set_rows`
    (a choice per row) before running the UNet. Each adapter runs only on the rows that use it.
    Adapters and their conditions live on `device`, by default the UNet's; give it where the
    UNet's weights are elsewhere while it runs (`--memory offload` keeps them on the CPU).
    """

    def __init__(
        self,
        unet: nn.Module,
        unet_2: nn.Module | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.unet = unet
        self._device = device
        self._denoisers = {"": unet, **({SECOND_EXPERT: unet_2} if unet_2 is not None else {})}
        self._family = family_of_denoiser(unet)
        self._gates: dict[str, torch.Tensor] = {}
        self._weights: dict[str, AdapterWeights | LoraWeights] = {}
        self._hooks: dict[str, list[RemovableHandle]] = {}
        self._lora_hooks: dict[str, list[RemovableHandle]] = {}
        self._captured: dict[str, torch.Tensor] = {}
        self._active: dict[str, _Selection] = {}
        self._videos: int | None = None
        self._cond: torch.Tensor | None = None
        self._strength: torch.Tensor | None = None
        self._shifts: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where adapters and their conditions live: the one given, else the UNet's now."""
        return self.unet.device if self._device is None else self._device

    @property
    def loaded(self) -> dict[str, AdapterKind]:
        """The kind of each loaded adapter, by name."""
        return {name: weights.kind for name, weights in self._weights.items()}

    def get(self, name: str) -> AdapterWeights | LoraWeights:
        """The weights of a loaded adapter."""
        if name not in self._weights:
            raise NotFoundError(f"no adapter named {name!r} is loaded")
        return self._weights[name]

    def load(
        self,
        name: str,
        kind: AdapterKind,
        tensors: Mapping[str, torch.Tensor],
        hidden_ratio: float = DEFAULT_HIDDEN_RATIO,
    ) -> AdapterWeights:
        """Load adapter tensors under `name` (inactive until selected) and hook their slots."""
        if name in self._weights:
            raise ConflictError(f"an adapter named {name!r} is already loaded")
        weights = AdapterWeights.from_tensors(
            self._denoisers_of(tensors), kind, tensors, hidden_ratio
        )
        self._weights[name] = weights.to(self.device)
        for slot in weights.slots:
            if slot.prefix not in self._hooks:
                self._hooks[slot.prefix] = self._hook(slot)
        return weights

    def load_empty(self, name: str, kind: AdapterKind) -> AdapterWeights:
        """Register `name` with no adapter weights (a token-only subject): it can be selected
        like any loaded adapter and changes nothing in the UNet."""
        if name in self._weights:
            raise ConflictError(f"an adapter named {name!r} is already loaded")
        cond_dim = DEFAULT_COND_DIM if kind == "motion" else None
        self._weights[name] = AdapterWeights(kind, [], cond_dim=cond_dim)
        return self._weights[name]

    def load_lora(
        self, name: str, weights: LoraWeights, text_encoder: nn.Module | None = None
    ) -> LoraWeights:
        """Load a LoRA under `name` (inactive until selected, like adapters) and hook its layers
        in the UNet and, where it has text-encoder layers, in `text_encoder`."""
        if name in self._weights:
            raise ConflictError(f"an adapter named {name!r} is already loaded")
        self._weights[name] = weights.to(self.unet.device)
        roots = {"unet": self.unet, "text_encoder": text_encoder}
        self._lora_hooks[name] = weights.hook(
            roots, lambda: self.selection(name), self.rows_per_video
        )
        return weights

    def selection(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | float] | None:
        """Where adapter `name` acts in the next calls: None when inactive, else (the rows that
        use it, or None for every row; their scales (rows,), or the one scale)."""
        chosen = self._active.get(name)
        return None if chosen is None else (chosen.rows, chosen.scales)

    def unload(self, name: str) -> None:
        """Remove an adapter, and the hooks of slots no other loaded adapter uses."""
        self.get(name)
        del self._weights[name]
        self._active.pop(name, None)
        for handle in self._lora_hooks.pop(name, []):
            handle.remove()
        used = {slot.prefix for weights in self._weights.values() for slot in weights.slots}
        for prefix in [prefix for prefix in self._hooks if prefix not in used]:
            for handle in self._hooks.pop(prefix):
                handle.remove()

    def detach(self) -> None:
        """Unload every adapter and remove every hook: the UNet is exactly as before."""
        for name in list(self._weights):
            self.unload(name)
        self.clear()

    def clear(self) -> None:
        """Deactivate every adapter: the UNet gives its base output."""
        self._select({}, None, None, 1.0)

    def set_active(
        self,
        scales: Mapping[str, float],
        image_embeds: torch.Tensor | None = None,
        strength: float | torch.Tensor = 1.0,
    ) -> None:
        """Activate adapters on every row, each at its scale (the training and single-combo case).

        `image_embeds` (B, cond_dim) is the appearance guidance of each video for motion adapters,
        `strength` its λ (a number or (B,)). Without it motion adapters see the zero embedding.
        """
        for name in scales:
            self.get(name)
        active = {name: _Selection(None, float(s)) for name, s in scales.items() if s != 0}
        self._select(active, None, image_embeds, strength)

    def set_rows(
        self,
        rows: Sequence[Mapping[str, float]],
        image_embeds: torch.Tensor | None = None,
        strength: float | torch.Tensor = 1.0,
    ) -> None:
        """Choose adapters per video row: `rows[b]` maps adapter names to scales for video `b`.

        The next UNet calls must run on exactly `len(rows)` videos. Rows without adapters (or at
        scale 0) give the base output; `image_embeds` and `strength` are as in `set_active`, with
        one entry per row.
        """
        uses: dict[str, tuple[list[int], list[float]]] = {}
        for row, scales in enumerate(rows):
            for name, scale in scales.items():
                self.get(name)
                if scale != 0:
                    indices, row_scales = uses.setdefault(name, ([], []))
                    indices.append(row)
                    row_scales.append(float(scale))
        device = self.device
        active = {}
        for name, (indices, row_scales) in uses.items():
            if len(indices) == len(rows) and len(set(row_scales)) == 1:
                active[name] = _Selection(None, row_scales[0])
            else:
                active[name] = _Selection(
                    torch.tensor(indices, device=device), torch.tensor(row_scales, device=device)
                )
        self._select(active, len(rows), image_embeds, strength)

    def train_adapter(self, name: str) -> list[nn.Parameter]:
        """Make `name` the only trainable part and activate it alone on every row, at scale 1.

        Freezes the UNet and every other adapter; returns the parameters to optimise. For motion
        adapters, pass each step's image embeddings with `set_active({name: 1.0}, embeds)`.
        """
        weights = self.get(name)
        for denoiser in self._denoisers.values():
            denoiser.requires_grad_(False)
        for other in self._weights.values():
            other.requires_grad_(False)
        weights.requires_grad_(True)
        self.set_active({name: 1.0})
        return list(weights.parameters())

    def _denoisers_of(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
        """The denoisers adapter `tensors` sit on, by their names: the second expert's under
        `SECOND_EXPERT`, the first's plain (the first alone on a base with one)."""
        second = {key.startswith(f"{SECOND_EXPERT}.") for key in tensors}
        if SECOND_EXPERT not in self._denoisers:
            return {"": self.unet}
        return {label: module for label, module in self._denoisers.items()
                if (label == SECOND_EXPERT) in second}  # fmt: skip

    def _select(
        self,
        active: dict[str, _Selection],
        videos: int | None,
        image_embeds: torch.Tensor | None,
        strength: float | torch.Tensor,
    ) -> None:
        """Install a selection and its condition after checking the condition's batch size."""
        cond = strength_per_video = None
        if image_embeds is not None:
            count = image_embeds.shape[0]
            if videos is not None and count != videos:
                raise ValueError(f"{count} image embeddings for {videos} rows")
            cond = image_embeds.to(self.device)
            strength_per_video = torch.as_tensor(strength, device=cond.device, dtype=cond.dtype)
            if strength_per_video.ndim == 0:
                strength_per_video = strength_per_video.expand(count)
            elif strength_per_video.shape != (count,):
                raise ValueError(f"strength must be a number or hold {count} values")
        self._active, self._videos = active, videos
        self._cond, self._strength = cond, strength_per_video
        self._shifts = {}

    def _hook(self, slot: AdapterSlot) -> list[RemovableHandle]:
        """Hook one slot: record the norm's input, add the adapters' output to the layer's.

        Where the block multiplies the layer's output by a gate (`Family.gated_slots`), a
        pre-hook on the block records that gate from the block's arguments and the adapters'
        output enters divided by it, so that the block adds exactly `A(h)`: outside the gate,
        as beside an ungated layer. The layer's output then stays in float32 (the gated Wan
        blocks add it in float32 anyway), so the division loses nothing in half precision.
        """
        label, _, rest = slot.block.partition(".")
        if label in self._denoisers and label:
            block = self._denoisers[label].get_submodule(rest)
        else:
            block = self.unet.get_submodule(slot.block)
        prefix = slot.prefix
        positions = getattr(block, "pos_embed", None)
        family = self._family

        def capture(_module: nn.Module, args: tuple) -> None:
            self._captured[prefix] = args[0] if positions is None else positions(args[0])

        def add(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            gate = self._gates.pop(prefix, None)
            total = self._add_adapters(prefix, self._captured.pop(prefix), output, gate)
            return total if gate is not None else total.to(output.dtype)

        def keep_gate(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._gates[prefix] = family.slot_gate(module, slot.slot, args, kwargs)

        norm_name, layer_name = family.slot_modules[slot.slot]
        norm, layer = block.get_submodule(norm_name), block.get_submodule(layer_name)
        hooks = [norm.register_forward_pre_hook(capture), layer.register_forward_hook(add)]
        if slot.slot in family.gated_slots:
            hooks.append(block.register_forward_pre_hook(keep_gate, with_kwargs=True))
        return hooks

    def _add_adapters(
        self, prefix: str, h: torch.Tensor, output: torch.Tensor, gate: torch.Tensor | None
    ) -> torch.Tensor:
        """`output` plus, on the rows that use them, the scaled outputs of the active adapters
        (each divided by `gate`, (N, 1 or L, C) in float32, when the layer is gated; see
        `_outside_gate`)."""
        if gate is not None:
            output = output.float()
            gate = _outside_gate(gate)
        for name, selection in self._active.items():
            adapter = self._weights[name].adapter(prefix)
            if adapter is None:
                continue
            shift = None
            if adapter.cond is not None and self._cond is not None:
                shift = self._shift(name, prefix, adapter, selection.rows)
            if selection.rows is None:
                delta = adapter(h, shift=shift)
                output = output + selection.scales * (delta if gate is None else delta / gate)
                continue
            per_video = self.rows_per_video(h.shape[0])
            offsets = torch.arange(per_video, device=h.device)
            index = (selection.rows[:, None] * per_video + offsets).reshape(-1)
            delta = adapter(h[index], shift=shift)
            if gate is not None:
                delta = delta / gate[index]
            output = output.to(torch.promote_types(output.dtype, delta.dtype))
            row_scales = selection.scales.to(output.dtype).repeat_interleave(per_video)
            output = output.index_add(0, index, delta.to(output.dtype) * row_scales[:, None, None])
        return output

    def _shift(
        self, name: str, prefix: str, adapter: Adapter, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """The condition shift of a motion adapter; without gradients (sampling) it is computed
        once per selection and reused at every denoising step."""
        assert self._cond is not None and self._strength is not None
        cond, strength = self._cond, self._strength
        if rows is not None:
            cond, strength = cond[rows], strength[rows]
        if torch.is_grad_enabled():
            return adapter.condition_shift(cond, strength)
        key = (name, prefix)
        if key not in self._shifts:
            self._shifts[key] = adapter.condition_shift(cond, strength)
        return self._shifts[key]

    def rows_per_video(self, rows: int) -> int:
        """Hidden-state rows per video under a per-row selection (`rows` along dim 0 of a
        layer's input, video-major)."""
        assert self._videos is not None
        if rows % self._videos:
            raise RuntimeError(
                f"the UNet ran on {rows} hidden-state rows, not a multiple of the "
                f"{self._videos} videos the adapter selection was set for"
            )
        return rows // self._videos


def _outside_gate(gate: torch.Tensor) -> torch.Tensor:
    """The divisor that puts an adapter's output outside `gate` (any shape, float32): `gate`
    itself where |gate| ≥ `GATE_EPSILON`, else ±`GATE_EPSILON` with the gate's sign (+ for an
    exact 0). The block multiplies the hook's float32 output `y + A(h) / divisor` by `gate` in
    float32 (`WanTransformerBlock.forward`), so it adds `A(h)` to within float32 rounding of
    `A(h)` wherever |gate| ≥ `GATE_EPSILON` (the quotient's relative error survives the
    product; real gates that small occur: 1.4e-4 in a channel of `tiny-wan`), and
    `A(h) · gate / GATE_EPSILON`, smaller than `A(h)` and 0 where the gate is exactly 0, below
    it: finite for every gate, never inf or NaN, and the quotient at most 1e6 · |A(h)|."""
    tiny = gate.abs() < GATE_EPSILON
    return torch.where(tiny, torch.copysign(torch.full_like(gate, GATE_EPSILON), gate), gate)


def _module_key(prefix: str) -> str:
    """A slot prefix as a ModuleDict key (module names cannot contain dots)."""
    return prefix.replace(".", "/")


def _cond_dim(tensors: Mapping[str, torch.Tensor]) -> int:
    """The condition width in motion-adapter tensors (the default when they hold none)."""
    for key, value in tensors.items():
        if key.endswith("_adapter.cond.weight") and value.ndim == 2:
            return value.shape[1]
    return DEFAULT_COND_DIM


def _check_tensors(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, torch.Tensor]
) -> None:
    """Raise `AdapterMismatchError` unless `given` has exactly the expected names and shapes."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong_shape = [
        f"{key} {list(given[key].shape)} (expected {list(expected[key])})"
        for key in sorted(expected.keys() & given.keys())
        if tuple(given[key].shape) != expected[key]
    ]
    if not (missing or unexpected or wrong_shape):
        return
    matching = len(expected) - len(missing) - len(wrong_shape)
    parts = [
        f"{matching} of {len(given)} adapter tensors match this base ({len(expected)} expected)"
    ]
    for label, names in (
        ("unexpected", unexpected),
        ("missing", missing),
        ("wrong shape", wrong_shape),
    ):
        if names:
            shown = ", ".join(names[:_NAMES_SHOWN])
            more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
            parts.append(f"{label}: {shown}{more}")
    raise AdapterMismatchError("; ".join(parts))
