"""The tensor layout of dvkit adapter files, and the header fields it determines.

An adapter file holds, per adapter, `<block>.<slot>_adapter.<down|up|cond>.<weight|bias>`
(`slot` is the layer the adapter sits beside: attn1, attn2 or ff; down [h, C], up [C, h] and,
in motion adapters, cond [C, d]); a subject file also holds `token_embedding` [vectors, dim] and
may hold `reference_images` (uint8 [N, H, W, 3]). A token-only subject (an imported textual
inversion) holds no adapter at all, only those two, and its placement is empty.
`check_tensors` compares a header with that.
Light: no torch (the shapes come from the safetensors header).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dvkit.errors import AdapterFileError

if TYPE_CHECKING:
    from dvkit.io.adapter_file import AdapterFileInfo
    from dvkit.io.safetensors_header import TensorInfo

TOKEN_EMBEDDING_KEY = "token_embedding"
REFERENCE_IMAGES_KEY = "reference_images"
"""Subject files may carry their training images (uint8 [N, H, W, 3]) for guidance and scoring."""
EXTRA_KEYS = (TOKEN_EMBEDDING_KEY, REFERENCE_IMAGES_KEY)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
LAYER_SLOTS = ("attn1", "attn2", "ff")
"""The layers of a transformer block an adapter can sit beside, in block order."""
_LORA_TENSOR = re.compile(
    r"(?P<layer>(?:unet|text_encoder)\..+)\.(?P<part>lora_A\.weight|lora_B\.weight|alpha)"
)
_ADAPTER_TENSOR = re.compile(
    r"(?P<block>.+)\.(?P<slot>attn1|attn2|ff)_adapter\.(?P<part>(?:down|up|cond)\.(?:weight|bias))"
)


def check_tensors(
    source: str | Path, info: AdapterFileInfo, tensors: Mapping[str, TensorInfo]
) -> None:
    """Check the header fields the tensors determine; fill in `num_vectors`, `token_width` and
    `params`.

    `tensors` maps file-format names to their dtype and shape. Checked: every name is an adapter
    weight (`<block>.<attn1|attn2|ff>_adapter.<down|up|cond>.<weight|bias>`), the token
    embedding or the reference images; each adapter is complete with consistent shapes
    (down [h, C], up [C, h], cond [C, d]) in a float dtype; kind (a subject has a token
    embedding and no `cond`, every motion adapter has one); placement (the layers the adapters
    sit beside, in every block); hidden ratio (h = int(C · ratio), as
    `dvkit.models.adapters.hidden_width`); the condition width against `training.cond_dim`;
    the vector count against `training.num_vectors`; reference images uint8 [N, H, W, 3].
    Raises `AdapterFileError` naming the field and both values. LoRA files
    (`dvkit.method` lora) are checked by `_check_lora`.
    """
    if info.method == "lora":
        _check_lora(source, info, tensors)
        return
    adapters = _group_adapters(source, tensors)
    if not adapters and not is_token_only(info.kind, tensors):
        raise AdapterFileError(f"{source}: adapter file holds no adapter tensors")
    _check_kind(source, info, adapters, tensors)
    _check_placement(source, info, adapters)
    cond_widths = {}
    for (block, slot), parts in adapters.items():
        prefix = f"{block}.{slot}_adapter"
        hidden, channels = _check_shapes(source, prefix, parts, info.kind)
        if hidden != _hidden_width(channels, info.hidden_ratio):
            raise AdapterFileError(
                f"{source}: dvkit.hidden_ratio is {info.hidden_ratio!r}, but {prefix}.down.weight "
                f"is [{hidden}, {channels}], a hidden width of {hidden} over {channels} channels "
                f"(ratio {hidden / channels:g})"
            )
        if "cond.weight" in parts:
            cond_widths[prefix] = parts["cond.weight"].shape[1]
    if cond_widths:
        _check_cond_width(source, info, cond_widths)
    embedding = tensors.get(TOKEN_EMBEDDING_KEY)
    if embedding is not None:
        _check_embedding(source, info, embedding)
    references = tensors.get(REFERENCE_IMAGES_KEY)
    if references is not None and (
        references.dtype != "U8"
        or len(references.shape) != 4
        or references.shape[3] != 3
        or 0 in references.shape
    ):
        raise AdapterFileError(
            f"{source}: {REFERENCE_IMAGES_KEY!r} is {references.dtype} {list(references.shape)}, "
            "expected uint8 [N, H, W, 3]"
        )
    info.params = sum(t.numel for key, t in tensors.items() if key != REFERENCE_IMAGES_KEY)


def lora_target(layer_path: str) -> str:
    """The target name of a LoRA layer as peft's `target_modules` names it: the last part of
    its path, or the last two where the last is an index (`to_out.0`)."""
    parts = layer_path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def _check_lora(
    source: str | Path, info: AdapterFileInfo, tensors: Mapping[str, TensorInfo]
) -> None:
    """A LoRA file: `<unet|text_encoder>.<layer>.lora_A.weight` [r, in(, kh, kw)],
    `.lora_B.weight` [out, r(, 1, 1)] and optionally `.alpha` [] per layer, in a float dtype,
    plus, for a subject, an optional token embedding and reference images. Checks the header's
    rank (the largest) and placement (the target names, `lora_target`); fills in `params`."""
    form = "a LoRA weight (<unet|text_encoder>.<layer>.<lora_A.weight|lora_B.weight|alpha>)"
    layers = {key[0]: parts for key, parts in _group(source, tensors, _LORA_TENSOR, form).items()}
    if not layers:
        raise AdapterFileError(f"{source}: LoRA file holds no LoRA tensors")
    if info.kind == "motion" and any(key in tensors for key in EXTRA_KEYS):
        raise AdapterFileError(f"{source}: a motion LoRA holds a token embedding or images")
    ranks = []
    for layer, parts in layers.items():
        down, up = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        if down is None or up is None:
            raise AdapterFileError(f"{source}: LoRA layer {layer} lacks lora_A or lora_B")
        rank = down.shape[0] if down.shape else 0
        if (
            len(down.shape) not in (2, 4)
            or len(up.shape) != len(down.shape)
            or up.shape[1] != rank
            or list(up.shape[2:]) not in ([], [1, 1])
        ):
            raise AdapterFileError(
                f"{source}: LoRA layer {layer}: lora_A {list(down.shape)} and lora_B "
                f"{list(up.shape)} are not [r, in(, kh, kw)] and [out, r(, 1, 1)]"
            )
        ranks.append(rank)
    if info.rank != max(ranks):
        raise AdapterFileError(
            f"{source}: dvkit.lora's rank is {info.rank!r}, but the largest lora_A has "
            f"{max(ranks)} rows"
        )
    targets = sorted({lora_target(layer) for layer in layers})
    if sorted(info.placement) != targets:
        raise AdapterFileError(
            f"{source}: dvkit.placement is {info.placement}, but the LoRA's layers are {targets}"
        )
    embedding = tensors.get(TOKEN_EMBEDDING_KEY)
    if embedding is not None:
        if not info.token:
            raise AdapterFileError(f"{source}: a LoRA with a token embedding needs dvkit.token")
        _check_embedding(source, info, embedding)
    info.params = sum(t.numel for key, t in tensors.items() if key != REFERENCE_IMAGES_KEY)


def is_token_only(kind: str, names: Collection[str]) -> bool:
    """Whether tensors `names` are a token-only subject: a learned token and no identity adapter
    (an imported textual inversion; its `dvkit.placement` is empty)."""
    return kind == "subject" and TOKEN_EMBEDDING_KEY in names and not (set(names) - set(EXTRA_KEYS))


def _group_adapters(
    source: str | Path, tensors: Mapping[str, TensorInfo]
) -> dict[tuple[str, ...], dict[str, TensorInfo]]:
    """Adapter tensors by (block, slot), each as {"down.weight": ..., ...}."""
    form = "an adapter weight (<block>.<attn1|attn2|ff>_adapter.<down|up|cond>.<weight|bias>)"
    return _group(source, tensors, _ADAPTER_TENSOR, form)


def _group(
    source: str | Path, tensors: Mapping[str, TensorInfo], pattern: re.Pattern[str], form: str
) -> dict[tuple[str, ...], dict[str, TensorInfo]]:
    """The tensors but `EXTRA_KEYS` by the groups of `pattern` before its `part` group, each
    as {part: tensor}, sorted; a name that does not fit `pattern` (`form` describes it) or a
    tensor that is not floating point is an `AdapterFileError`."""
    grouped: dict[tuple[str, ...], dict[str, TensorInfo]] = {}
    for name, tensor in tensors.items():
        if name in EXTRA_KEYS:
            continue
        match = pattern.fullmatch(name)
        if match is None:
            raise AdapterFileError(
                f"{source}: tensor {name[:120]!r} is not {form}, "
                f"{TOKEN_EMBEDDING_KEY} or {REFERENCE_IMAGES_KEY}"
            )
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterFileError(
                f"{source}: tensor {name!r} is {tensor.dtype}; adapter weights are floating point "
                f"({', '.join(FLOAT_DTYPES)})"
            )
        key = tuple(value for group, value in match.groupdict().items() if group != "part")
        grouped.setdefault(key, {})[match["part"]] = tensor
    return dict(sorted(grouped.items()))


def _check_kind(
    source: str | Path,
    info: AdapterFileInfo,
    adapters: Mapping[tuple[str, str], Mapping[str, TensorInfo]],
    tensors: Mapping[str, TensorInfo],
) -> None:
    with_cond = [key for key, parts in adapters.items() if "cond.weight" in parts]
    if info.kind == "subject":
        if with_cond:
            block, slot = with_cond[0]
            raise AdapterFileError(
                f"{source}: dvkit.kind is 'subject', but the tensors are a motion adapter's "
                f"({block}.{slot}_adapter has a cond layer, which only motion adapters have)"
            )
        if TOKEN_EMBEDDING_KEY not in tensors:
            raise AdapterFileError(
                f"{source}: dvkit.kind is 'subject', but the file lacks its "
                f"{TOKEN_EMBEDDING_KEY!r} tensor [vectors, dim]"
            )
        return
    extra = [key for key in EXTRA_KEYS if key in tensors]
    if extra:
        raise AdapterFileError(
            f"{source}: dvkit.kind is 'motion', but the file holds {extra[0]!r}, which only "
            "subject adapters have"
        )
    without = [key for key in adapters if key not in with_cond]
    if without:
        block, slot = without[0]
        raise AdapterFileError(
            f"{source}: dvkit.kind is 'motion', but {block}.{slot}_adapter has no cond layer "
            "(every motion adapter takes the appearance condition)"
        )


def _check_placement(
    source: str | Path, info: AdapterFileInfo, adapters: Mapping[tuple[str, str], object]
) -> None:
    found = [slot for slot in LAYER_SLOTS if any(key[1] == slot for key in adapters)]
    if sorted(info.placement) != sorted(found):
        raise AdapterFileError(
            f"{source}: dvkit.placement is {info.placement}, but the tensors hold adapters "
            f"beside {found}"
        )
    blocks: dict[str, list[str]] = {}
    for block, slot in adapters:
        blocks.setdefault(block, []).append(slot)
    for block, slots in blocks.items():
        if len(slots) != len(found):
            raise AdapterFileError(
                f"{source}: {block} has adapters beside {sorted(slots)} only; dvkit.placement "
                f"puts them beside {info.placement} in every block"
            )


def _check_shapes(
    source: str | Path, prefix: str, parts: Mapping[str, TensorInfo], kind: str
) -> tuple[int, int]:
    """(hidden width, channels) of one adapter whose tensors are complete and consistent."""
    expected = ["down.weight", "down.bias", "up.weight", "up.bias"]
    if kind == "motion":
        expected += ["cond.weight", "cond.bias"]
    for part in expected:
        if part not in parts:
            raise AdapterFileError(f"{source}: adapter {prefix} lacks its {part} tensor")
    extra = sorted(set(parts) - set(expected))
    if extra:
        raise AdapterFileError(f"{source}: adapter {prefix} has an unexpected {extra[0]} tensor")
    down = parts["down.weight"].shape
    if len(down) != 2:
        raise AdapterFileError(
            f"{source}: {prefix}.down.weight is {list(down)}, expected [hidden, channels]"
        )
    hidden, channels = down
    shapes = {"down.bias": [hidden], "up.weight": [channels, hidden], "up.bias": [channels]}
    if kind == "motion":
        cond = parts["cond.weight"].shape
        if len(cond) != 2:
            raise AdapterFileError(
                f"{source}: {prefix}.cond.weight is {list(cond)}, expected [channels, width]"
            )
        shapes.update({"cond.weight": [channels, cond[1]], "cond.bias": [channels]})
    for part, shape in shapes.items():
        if list(parts[part].shape) != shape:
            raise AdapterFileError(
                f"{source}: {prefix}.{part} is {list(parts[part].shape)}, expected {shape} "
                f"(down.weight is [{hidden}, {channels}])"
            )
    if channels == 0:
        raise AdapterFileError(f"{source}: adapter {prefix} has 0 channels")
    return hidden, channels


def _hidden_width(channels: int, ratio: float) -> int | None:
    """`dvkit.models.adapters.hidden_width` without torch (a test keeps the two equal); None
    where `channels · ratio` overflows."""
    product = channels * ratio
    return int(product) if math.isfinite(product) else None


def _check_cond_width(source: str | Path, info: AdapterFileInfo, widths: Mapping[str, int]) -> None:
    values = sorted(set(widths.values()))
    if len(values) > 1:
        first = next(prefix for prefix, width in widths.items() if width == values[0])
        other = next(prefix for prefix, width in widths.items() if width == values[1])
        raise AdapterFileError(
            f"{source}: the condition widths differ: {first}.cond.weight takes {values[0]}, "
            f"{other}.cond.weight {values[1]}"
        )
    declared = info.training.get("cond_dim")
    if declared is not None and declared != values[0]:
        raise AdapterFileError(
            f"{source}: dvkit.training's cond_dim is {declared!r}, but the cond layers take "
            f"{values[0]}-wide image embeddings"
        )


def _check_embedding(source: str | Path, info: AdapterFileInfo, embedding: TensorInfo) -> None:
    if len(embedding.shape) != 2 or 0 in embedding.shape:
        raise AdapterFileError(
            f"{source}: {TOKEN_EMBEDDING_KEY!r} is {list(embedding.shape)}, expected [vectors, dim]"
        )
    if embedding.dtype not in FLOAT_DTYPES:
        raise AdapterFileError(
            f"{source}: {TOKEN_EMBEDDING_KEY!r} is {embedding.dtype}; it must be floating point"
        )
    vectors, width = embedding.shape
    declared = info.training.get("num_vectors")
    if declared is not None and declared != vectors:
        raise AdapterFileError(
            f"{source}: dvkit.training's num_vectors is {declared!r}, but {TOKEN_EMBEDDING_KEY} "
            f"holds {vectors}"
        )
    info.num_vectors = vectors
    info.token_width = width
