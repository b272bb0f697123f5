"""LoRA weights on a base's frozen layers through forward hooks, selected per row of a batch.

A LoRA of rank r on a layer with weight W adds ΔW = (α / r) · B · A (Hu et al. 2021, "LoRA",
eq. 3). As peft computes it (`peft/tuners/lora/layer.py`: `Linear.forward`, `Conv2d`), for an
`nn.Linear` the layer's output gains `s · (α / r) · B(A(x))`; for an `nn.Conv2d`, A is a
convolution with the layer's kernel, stride, padding and dilation (r output channels) and B a
1 × 1 convolution. `s` is the scale the LoRA is composed at (diffusers' `set_adapters` weight).

Like DreamVideo adapters (`dvkit.models.injection`), LoRAs live outside the base: a forward hook
on each target layer adds its term to the layer's output, so module tree and state dict never
change, and `AdapterInjector.set_rows` chooses LoRAs and scales per video row.

Tensor names (dvkit's file format, peft's with the component first):
`<component>.<module path>.lora_A.weight` [r, in] or [r, in, kh, kw],
`<component>.<module path>.lora_B.weight` [out, r] or [out, r, 1, 1] and
`<component>.<module path>.alpha` [] (α), with component `unet` or `text_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from dvkit.errors import DvkitError
from dvkit.models.adapters import AdapterKind

COMPONENTS = ("unet", "text_encoder")
PARTS = ("lora_A.weight", "lora_B.weight", "alpha")
_NAMES_SHOWN = 3

Selection = Callable[[], "tuple[torch.Tensor | None, torch.Tensor | float] | None"]
"""The current selection of one LoRA: None when inactive, else (rows or None for every row,
their scales or one scale); see `AdapterInjector.selection`."""
RowsPerVideo = Callable[[int], int]


TWO_EXPERTS = (
    "base {base} has two experts (Wan 2.2 A14B); dvkit applies LoRAs to one-denoiser bases only"
)
"""Why a LoRA is refused on a two-expert base: diffusers loads a Wan 2.2 LoRA into each expert
separately (`load_lora_weights(…, load_into_transformer_2=True)`), and which expert a file is
for is not written in it."""


class LoraMismatchError(DvkitError):
    """LoRA tensors whose names or shapes do not fit the base's layers."""


@dataclass(frozen=True)
class LoraModule:
    """One layer a LoRA acts on: `<component>.<module path>`, its rank and alpha."""

    path: str
    rank: int
    alpha: float

    @property
    def component(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def module_path(self) -> str:
        return self.path.split(".", 1)[1]


def group_lora_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors by layer (`<component>.<module path>`), each as {"lora_A.weight": …, …}; names that
    are not LoRA tensors are grouped under themselves with no part (the caller refuses them)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        part = next((p for p in PARTS if name.endswith(f".{p}")), None)
        layer = name[: -len(part) - 1] if part else name
        grouped.setdefault(layer, {})[part or ""] = tensor
    return grouped


def expected_shapes(layer: nn.Module, rank: int) -> dict[str, tuple[int, ...]] | None:
    """The shapes of A and B of a rank-`rank` LoRA on `layer`, or None for a layer LoRAs do
    not take (only `nn.Linear` and ungrouped `nn.Conv2d`, as dvkit's hooks compute them)."""
    if isinstance(layer, nn.Linear):
        return {
            "lora_A.weight": (rank, layer.in_features),
            "lora_B.weight": (layer.out_features, rank),
        }
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return {
            "lora_A.weight": (rank, layer.in_channels, *layer.kernel_size),
            "lora_B.weight": (layer.out_channels, rank, 1, 1),
        }
    return None


class LoraWeights(nn.Module):
    """One LoRA (a subject or a motion) for the layers of one base.

    `kind` and the empty `slots` let `AdapterInjector` hold it beside DreamVideo adapters;
    `adapter()` is always None (it has no DreamVideo slot).
    """

    slots: tuple = ()

    def __init__(self, kind: AdapterKind, modules: Iterable[LoraModule]) -> None:
        super().__init__()
        self.kind = kind
        self.modules_by_path = {module.path: module for module in modules}
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()

    @classmethod
    def from_tensors(
        cls,
        kind: AdapterKind,
        tensors: Mapping[str, torch.Tensor],
        roots: Mapping[str, nn.Module],
        base: str = "the base",
        added: Collection[str] = (),
    ) -> LoraWeights:
        """The LoRA in `tensors` (dvkit names) checked against the layers of `roots` (component
        name → module, e.g. {"unet": unet, "text_encoder": encoder}).

        Raises `LoraMismatchError` naming how many tensors fit `base` out of how many, and the
        first that do not: an unknown component or layer, a layer LoRAs do not take, a part
        missing, or a shape that differs. Tensors named in `added` (alphas dvkit added to a
        file's) are not counted.
        """
        fitting, misfits, modules = 0, [], []
        for layer_path, parts in group_lora_tensors(tensors).items():
            problem = _misfit(layer_path, parts, roots)
            if problem is not None:
                misfits.append(problem)
                continue
            fitting += len([part for part in parts if f"{layer_path}.{part}" not in added])
            alpha = float(parts["alpha"]) if "alpha" in parts else None
            rank = parts["lora_A.weight"].shape[0]
            modules.append(LoraModule(layer_path, rank, rank if alpha is None else alpha))
        if misfits or not modules:
            shown = "; ".join(misfits[:_NAMES_SHOWN])
            more = f" and {len(misfits) - _NAMES_SHOWN} more" if len(misfits) > _NAMES_SHOWN else ""
            raise LoraMismatchError(
                f"{fitting} of {len(tensors) - len(added)} LoRA tensors fit {base}"
                + (f" ({shown}{more})" if misfits else "")
            )
        weights = cls(kind, modules)
        for module in modules:
            key = _module_key(module.path)
            weights.down[key] = nn.Parameter(tensors[f"{module.path}.lora_A.weight"].float())
            weights.up[key] = nn.Parameter(tensors[f"{module.path}.lora_B.weight"].float())
        return weights

    def adapter(self, prefix: str) -> None:
        """No DreamVideo adapter sits anywhere in a LoRA (see `AdapterWeights.adapter`)."""
        return None

    @property
    def rank(self) -> int:
        """The largest rank of its layers."""
        return max(module.rank for module in self.modules_by_path.values())

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """A and B of every layer under their file-format names (what training optimises)."""
        named = {}
        for path in self.modules_by_path:
            key = _module_key(path)
            named[f"{path}.lora_A.weight"] = self.down[key]
            named[f"{path}.lora_B.weight"] = self.up[key]
        return named

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every weight under its file-format name (A and B share storage with the module)."""
        tensors = {name: value.detach() for name, value in self.parameters_by_name().items()}
        for path, module in self.modules_by_path.items():
            tensors[f"{path}.alpha"] = torch.tensor(module.alpha)
        return tensors

    def delta(self, path: str, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        """(α / r) · B(A(x)) of the layer at `path` for input `x` (the layer's own input)."""
        module = self.modules_by_path[path]
        key = _module_key(path)
        down, up = self.down[key], self.up[key]
        x = x.to(down.dtype)
        if isinstance(layer, nn.Conv2d):
            hidden = F.conv2d(x, down, None, layer.stride, layer.padding, layer.dilation)
            out = F.conv2d(hidden, up)
        else:
            out = F.linear(F.linear(x, down), up)
        return out * (module.alpha / module.rank)

    def weight_delta(self, path: str) -> torch.Tensor:
        """ΔW = (α / r) · B · A of the layer at `path`, shaped like its weight (for fusing)."""
        module = self.modules_by_path[path]
        key = _module_key(path)
        down, up = self.down[key], self.up[key]
        product = up.flatten(1) @ down.flatten(1)
        return (product * (module.alpha / module.rank)).reshape(up.shape[0], *down.shape[1:])

    def hook(
        self,
        roots: Mapping[str, nn.Module],
        selection: Selection,
        rows_per_video: RowsPerVideo,
    ) -> list[RemovableHandle]:
        """Hook every target layer of `roots`: while `selection()` is not None, add the LoRA's
        term, scaled per row, to the layer's output (rows index dim 0 of the layer's input,
        `rows_per_video` of them per video)."""
        handles = []
        for path in self.modules_by_path:
            component, module_path = path.split(".", 1)
            if roots.get(component) is None:
                raise ValueError(f"{path}: no {component} given to hook")
            layer = roots[component].get_submodule(module_path)
            add = self._adder(path, selection, rows_per_video)
            handles.append(layer.register_forward_hook(add, with_kwargs=True))
        return handles

    def _adder(
        self, path: str, selection: Selection, rows_per_video: RowsPerVideo
    ) -> Callable[[nn.Module, tuple, dict, torch.Tensor], torch.Tensor | None]:
        def add(
            layer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor
        ) -> torch.Tensor | None:
            chosen = selection()
            if chosen is None:
                return None
            rows, scales = chosen
            x = args[0] if args else kwargs["input"]
            if rows is None:
                return output + (scales * self.delta(path, x, layer)).to(output.dtype)
            per_video = rows_per_video(x.shape[0])
            offsets = torch.arange(per_video, device=x.device)
            index = (rows[:, None] * per_video + offsets).reshape(-1)
            delta = self.delta(path, x[index], layer)
            row_scales = scales.to(delta.dtype).repeat_interleave(per_video)
            delta = delta * row_scales.view(-1, *([1] * (delta.ndim - 1)))
            return output.index_add(0, index, delta.to(output.dtype))

        return add


def _misfit(
    layer_path: str, parts: Mapping[str, torch.Tensor], roots: Mapping[str, nn.Module]
) -> str | None:
    """Why the tensors of one layer do not fit `roots`, or None when they do."""
    component, _, module_path = layer_path.partition(".")
    if "" in parts or set(parts) - set(PARTS):
        return f"{layer_path} is not a LoRA tensor"
    if component not in roots:
        return f"{layer_path}: no component {component!r}"
    try:
        layer = roots[component].get_submodule(module_path)
    except AttributeError:
        return f"{layer_path}: no such layer"
    missing = [part for part in PARTS[:2] if part not in parts]
    if missing:
        return f"{layer_path} lacks {missing[0]}"
    rank = parts["lora_A.weight"].shape[0]
    shapes = expected_shapes(layer, rank)
    if shapes is None:
        return f"{layer_path} is a {type(layer).__name__}, which takes no LoRA"
    for part, shape in shapes.items():
        if tuple(parts[part].shape) != shape:
            return f"{layer_path}.{part} is {list(parts[part].shape)}, expected {list(shape)}"
    if "alpha" in parts and parts["alpha"].numel() != 1:
        return f"{layer_path}.alpha holds {parts['alpha'].numel()} values, expected 1"
    return None


def _module_key(path: str) -> str:
    """A layer path as a ParameterDict key (keys cannot contain dots)."""
    return path.replace(".", "/")
