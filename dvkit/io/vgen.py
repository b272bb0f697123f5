"""Import of official DreamVideo checkpoints (the `ali-vilab/VGen` implementation, DESIGN §6).

VGen saves adapters as `*_adapter_{step:08d}.pth` holding `{"state_dict": {...}, "step": n}` with
keys `<vgen block>.transformer_blocks.0.<attn_adapter|cross_attn_adapter|ff_adapter>.
<down_linear|up_linear|condition_linear>.<weight|bias>`, and the learned word as
`text_embedding_of_{name}_{step:07d}.pth` holding `{"string_to_token": {"*": tensor},
"string_to_param": nn.ParameterDict({"*": [1, dim]})}`.

Files are read only with `torch.load(weights_only=True)`: nothing in them can run code. The
embedding file pickles an `nn.ParameterDict`, the one class allowed beyond plain tensors and
containers (through `torch.serialization.safe_globals`); anything else is refused.

VGen numbers its UNet blocks in one sequence per direction; `vgen_block_map` derives the mapping
onto diffusers' `UNet3DConditionModel` module paths from the UNet config (block types and layers
per block), so it serves any base of that architecture, the built-in `tiny` one included.
The imported weights are validated against the chosen base's adapter slots and registered as an
ordinary dvkit adapter (safetensors, dvkit tensor names). VGen files carry no images, so an
imported subject takes its reference images (the official inference's guidance image is the
subject's first) from `references`; an imported motion records the official inference's 32
frames as its training frames, the count `compose` and `bench` default to.
"""

from __future__ import annotations

import pickle
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.catalog.blobs import hash_file
from dvkit.errors import AdapterFileError, DvkitError
from dvkit.io.adapter_file import non_finite
from dvkit.names import name_from_text, validate_name, validate_tag, validate_token

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dvkit.catalog import Catalog
    from dvkit.catalog.records import BaseModelRecord
    from dvkit.catalog.store import ImportResult
    from dvkit.io.adapter_file import AdapterFileInfo
    from dvkit.models.components import BaseComponents

VGEN_SUFFIX = ".pth"
SLOT_NAMES = {"attn_adapter": "attn1", "cross_attn_adapter": "attn2", "ff_adapter": "ff"}
LAYER_NAMES = {"down_linear": "down", "up_linear": "up", "condition_linear": "cond"}
PLACEMENT = {"subject": ["attn2"], "motion": ["attn1", "attn2", "ff"]}
OFFICIAL_IMAGE_ENCODER = "ViT-H-14:laion2b_s32b_b79k"
OFFICIAL_COND_DIM = 1024
OFFICIAL_FRAMES = 32
"""Frames of the official motion training and inference (`frame_lens`, `gen_frames`)."""
DEFAULT_HIDDEN_RATIO = 0.5

_KEY = re.compile(
    r"(?P<block>input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+)"
    r"\.(?P<inner>transformer_blocks\.\d+)"
    r"\.(?P<slot>attn_adapter|cross_attn_adapter|ff_adapter)"
    r"\.(?P<layer>down_linear|up_linear|condition_linear)"
    r"\.(?P<param>weight|bias)"
)
_DVKIT_KEY = re.compile(
    r"(?P<block>.+?)\.(?P<inner>transformer_blocks\.\d+)\.(?P<slot>attn1|attn2|ff)_adapter"
    r"\.(?P<layer>down|up|cond)\.(?P<param>weight|bias)"
)
_ADAPTER_FILE = re.compile(r"(?P<name>.+?)_adapter_(?P<step>\d+)")
_EMBEDDING_FILE = re.compile(r"text_embedding_of_(?P<name>.+)_(?P<step>\d+)")
_NAMES_SHOWN = 3


class UnsafeCheckpointError(AdapterFileError):
    """A `.pth` file that holds Python objects other than tensors (refused, never executed)."""


class CheckpointMismatchError(DvkitError):
    """An official checkpoint whose keys or shapes do not fit the chosen base."""


# ---- block mapping ---------------------------------------------------------------------------


def vgen_block_map(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """VGen transformer block names → diffusers module paths, derived from a UNet3D config.

    VGen numbers `input_blocks.0` = conv_in with `transformer_in` at `.1`; then, for down level
    `l` and layer `j`, `input_blocks.{1 + l*(L+1) + j}` with the spatial transformer at `.1` and
    the temporal one at `.2` (L = layers_per_block; slot L of each level is its downsampler);
    `middle_block.1` / `.2`; and `output_blocks.{u*(L+1) + j}` for up level `u`, layer `j` < L+1.
    Only levels whose block type has attention (`CrossAttn…`) carry transformers.
    """
    layers = unet_config["layers_per_block"]
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise DvkitError(
            f"cannot map official checkpoints onto a UNet with layers_per_block={layers!r}"
        )
    mapping = {"input_blocks.0.1": "transformer_in"}
    for level, block_type in enumerate(unet_config["down_block_types"]):
        if _has_attention(block_type):
            for j in range(layers):
                index = 1 + level * (layers + 1) + j
                mapping[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{j}"
                mapping[f"input_blocks.{index}.2"] = f"down_blocks.{level}.temp_attentions.{j}"
    mapping["middle_block.1"] = "mid_block.attentions.0"
    mapping["middle_block.2"] = "mid_block.temp_attentions.0"
    for level, block_type in enumerate(unet_config["up_block_types"]):
        if _has_attention(block_type):
            for j in range(layers + 1):
                index = level * (layers + 1) + j
                mapping[f"output_blocks.{index}.1"] = f"up_blocks.{level}.attentions.{j}"
                mapping[f"output_blocks.{index}.2"] = f"up_blocks.{level}.temp_attentions.{j}"
    return mapping


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def vgen_to_dvkit(key: str, block_map: Mapping[str, str]) -> str | None:
    """The dvkit tensor name of a VGen adapter key, or None if it names no known adapter."""
    match = _KEY.fullmatch(key)
    if match is None or match["block"] not in block_map:
        return None
    slot, layer = SLOT_NAMES[match["slot"]], LAYER_NAMES[match["layer"]]
    return f"{block_map[match['block']]}.{match['inner']}.{slot}_adapter.{layer}.{match['param']}"


def dvkit_to_vgen(name: str, block_map: Mapping[str, str]) -> str | None:
    """The VGen key of a dvkit adapter tensor name (the inverse of `vgen_to_dvkit`)."""
    match = _DVKIT_KEY.fullmatch(name)
    inverse = {block: vgen for vgen, block in block_map.items()}
    if match is None or match["block"] not in inverse:
        return None
    slot = {v: k for k, v in SLOT_NAMES.items()}[match["slot"]]
    layer = {v: k for k, v in LAYER_NAMES.items()}[match["layer"]]
    return f"{inverse[match['block']]}.{match['inner']}.{slot}.{layer}.{match['param']}"


# ---- reading files -----------------------------------------------------------------------------


@dataclass
class VgenAdapter:
    """An official adapter file, read and mapped onto one base's UNet."""

    path: Path
    kind: str
    tensors: dict[str, torch.Tensor]
    hidden_ratio: float
    cond_dim: int | None
    step: int | None
    sha256: str


@dataclass
class VgenEmbedding:
    """An official textual-inversion file: the learned vectors `[vectors, dim]`."""

    path: Path
    vectors: torch.Tensor
    step: int | None
    sha256: str


def name_from_filename(path: str | Path) -> str | None:
    """The adapter name in an official file name: `carTurn_adapter_00001500.pth` → `carturn`."""
    match = _ADAPTER_FILE.fullmatch(Path(path).stem)
    if match is None:
        return None
    return name_from_text(match["name"])


def _file_step(path: Path, pattern: re.Pattern[str]) -> int | None:
    match = pattern.fullmatch(path.stem)
    return int(match["step"]) if match else None


def read_vgen_adapter(path: str | Path, unet: nn.Module) -> VgenAdapter:
    """Read an official adapter file and map it onto `unet`; refuse what does not fit exactly.

    Raises `UnsafeCheckpointError` for pickles of arbitrary objects, `AdapterFileError` for files
    that are not adapter checkpoints and `CheckpointMismatchError` (with counts and a few names)
    when the keys or shapes do not fit the UNet's adapter slots.
    """
    return _map_checkpoint(_read_checkpoint(Path(path)), unet)


@dataclass
class _Checkpoint:
    path: Path
    state: dict[str, torch.Tensor]
    step: int | None
    sha256: str


def _read_checkpoint(path: Path) -> _Checkpoint:
    """The state dict and step of an official adapter file (safely loaded, not yet mapped)."""
    _refuse_embedding_file(path)
    state, step = _state_dict(path, load_weights_only(path))
    if step is None:
        step = _file_step(path, _ADAPTER_FILE)
    return _Checkpoint(path, state, step, hash_file(path))


def _map_checkpoint(checkpoint: _Checkpoint, unet: nn.Module) -> VgenAdapter:
    mapped = map_vgen_state_dict(checkpoint.state, unet, source=str(checkpoint.path))
    return VgenAdapter(
        checkpoint.path, mapped.kind, mapped.tensors, mapped.hidden_ratio, mapped.cond_dim,
        checkpoint.step, checkpoint.sha256,
    )  # fmt: skip


def _most_common(counts: Counter, preferred: Any) -> Any:
    """The most frequent value, `preferred` winning ties."""
    if not counts:
        return preferred
    return max(counts, key=lambda value: (counts[value], value == preferred))


def _refuse_embedding_file(path: Path) -> None:
    if _EMBEDDING_FILE.fullmatch(path.stem):
        raise AdapterFileError(
            f"{path}: a textual-inversion file, not an adapter; pass it with --embedding "
            "next to its identity adapter file"
        )


@dataclass
class MappedAdapter:
    """VGen adapter weights under dvkit tensor names, checked against one UNet."""

    kind: str
    tensors: dict[str, torch.Tensor]
    hidden_ratio: float
    cond_dim: int | None


def map_vgen_state_dict(
    state: Mapping[str, torch.Tensor], unet: nn.Module, source: str = "checkpoint"
) -> MappedAdapter:
    """Detect the kind of a VGen adapter state dict and rename it onto `unet`'s adapter slots.

    Kind: any `condition_linear` makes a motion adapter, `cross_attn_adapter` alone an identity
    (subject) one. Every key must map onto a slot of that kind with the slot's shape, and every
    slot must be filled; otherwise `CheckpointMismatchError` says how many keys fit and names a
    few that do not. Works on meta tensors and a meta UNet too (no value checks then).
    """

    parsed = {key: _KEY.fullmatch(key) for key in state}
    found = [match for match in parsed.values() if match is not None]
    if not found:
        raise CheckpointMismatchError(
            f"{source}: 0 of {len(state)} keys are DreamVideo adapter weights "
            f"(not matching: {_shown(sorted(state))})"
        )
    kind = _detect_kind(source, found)
    ratios: Counter[float] = Counter()
    cond_dims: Counter[int] = Counter()
    for key, match in parsed.items():
        if match is None or match["param"] != "weight" or state[key].ndim != 2:
            continue
        rows, columns = state[key].shape
        if match["layer"] == "down_linear" and columns:
            ratios[round(rows / columns, 6)] += 1
        elif match["layer"] == "condition_linear":
            cond_dims[columns] += 1
    # The width most adapters agree on, so that one odd tensor is reported, not followed.
    hidden_ratio = _most_common(ratios, DEFAULT_HIDDEN_RATIO) or DEFAULT_HIDDEN_RATIO
    cond_dim = _most_common(cond_dims, OFFICIAL_COND_DIM) if cond_dims else None
    if kind == "motion" and not cond_dim:
        cond_dim = OFFICIAL_COND_DIM
    block_map = vgen_block_map(unet.config)
    expected = _expected_shapes(unet, kind, hidden_ratio, cond_dim)
    tensors: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    present: set[str] = set()
    for key, value in state.items():
        name = vgen_to_dvkit(key, block_map)
        if name is None or name not in expected:
            unmatched.append(key)
            continue
        present.add(name)
        if tuple(value.shape) != expected[name]:
            unmatched.append(f"{key} {list(value.shape)} (expected {list(expected[name])})")
        else:
            tensors[name] = value
    missing = sorted(expected.keys() - present)
    if unmatched or missing:
        label = "identity" if kind == "subject" else "motion"
        parts = [
            f"{source}: {len(tensors)} of {len(state)} keys fit the {label} adapters of this "
            f"base ({len(expected)} expected)"
        ]
        if unmatched:
            parts.append(f"not matching: {_shown(sorted(unmatched))}")
        if missing:
            names = [dvkit_to_vgen(name, block_map) or name for name in missing]
            parts.append(f"missing: {_shown(names)}")
        raise CheckpointMismatchError("; ".join(parts))
    for name, value in tensors.items():
        if not value.is_floating_point():
            raise AdapterFileError(
                f"{source}: {dvkit_to_vgen(name, block_map)} is not a float tensor"
            )
    bad = non_finite(tensors)
    if bad:
        raise AdapterFileError(
            f"{source}: {dvkit_to_vgen(bad[0], block_map)} holds NaN or infinite values"
        )
    tensors = {name: tensors[name].detach().float().contiguous() for name in sorted(tensors)}
    return MappedAdapter(kind, tensors, hidden_ratio, cond_dim)


def read_vgen_embedding(path: str | Path) -> VgenEmbedding:
    """Read an official textual-inversion file (`string_to_param` holding one `[n, dim]` entry)."""
    import torch

    path = Path(path)
    loaded = load_weights_only(path, allowed=(torch.nn.ParameterDict,))
    if not isinstance(loaded, dict) or "string_to_param" not in loaded:
        raise AdapterFileError(
            f"{path}: not a DreamVideo textual-inversion file (no 'string_to_param' entry)"
        )
    params = loaded["string_to_param"]
    if isinstance(params, torch.nn.ParameterDict):
        entries = dict(params.items())
    elif isinstance(params, dict):
        entries = dict(params)
    else:
        raise AdapterFileError(
            f"{path}: 'string_to_param' holds a {type(params).__name__}, not a ParameterDict"
        )
    if len(entries) != 1:
        listed = ", ".join(repr(key) for key in entries) or "none"
        raise AdapterFileError(
            f"{path}: holds {len(entries)} learned embeddings ({listed}); dvkit imports one"
        )
    (vectors,) = entries.values()
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point():
        raise AdapterFileError(f"{path}: the learned embedding is not a float tensor")
    vectors = vectors.detach()
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or 0 in vectors.shape:
        raise AdapterFileError(
            f"{path}: the learned embedding has shape {list(vectors.shape)}, not [vectors, dim]"
        )
    if non_finite({"vectors": vectors}):
        raise AdapterFileError(f"{path}: the learned embedding holds NaN or infinite values")
    step = _file_step(path, _EMBEDDING_FILE)
    return VgenEmbedding(path, vectors.float().contiguous().clone(), step, hash_file(path))


def load_weights_only(path: Path, allowed: Sequence[type] = ()) -> Any:
    """`torch.load(weights_only=True)` with only `allowed` classes beyond plain tensors."""
    import torch

    if not path.exists():
        raise AdapterFileError(f"{path}: no such file")
    if path.is_dir():
        raise AdapterFileError(f"{path}: is a folder, not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise AdapterFileError(f"{path}: permission denied") from None
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL [\w.]+", str(exc)) or looks_like_torch_file(path):
            raise UnsafeCheckpointError(_refusal(path, str(exc))) from None
        raise AdapterFileError(
            f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle)"
        ) from None
    except Exception as exc:  # torch raises many kinds of errors for damaged archives
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise AdapterFileError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {detail})"
        ) from None


def looks_like_torch_file(path: Path) -> bool:
    """Whether the file starts like torch.save's zip archive or a binary pickle stream."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    return start.startswith((b"PK\x03\x04", b"\x80"))


def _refusal(path: Path, message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        what = f"Python objects other than tensors ({found[1]})"
    elif "Unsupported operand" in message:
        what = "pickle instructions that plain weights never use"
    else:
        what = "content a weights-only load cannot read"
    return (
        f"{path}: refused: the file holds {what}; dvkit reads PyTorch files only as plain weights "
        "(torch.load weights_only=True) and never runs code from them"
    )


def _state_dict(path: Path, loaded: Any) -> tuple[dict[str, torch.Tensor], int | None]:
    import torch

    if not isinstance(loaded, dict):
        raise AdapterFileError(
            f"{path}: holds a {type(loaded).__name__}, not a DreamVideo adapter checkpoint"
        )
    step = None
    if "state_dict" in loaded:
        raw_step = loaded.get("step")
        if isinstance(raw_step, int) and not isinstance(raw_step, bool):
            step = raw_step
        elif isinstance(raw_step, torch.Tensor) and raw_step.numel() == 1:
            step = int(raw_step.item())
        loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise AdapterFileError(
                f"{path}: 'state_dict' holds a {type(loaded).__name__}, not a dict of tensors"
            )
    if not loaded:
        raise AdapterFileError(f"{path}: the checkpoint holds no tensors")
    state = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AdapterFileError(
                f"{path}: entry {key!r} holds a {type(value).__name__}, not a tensor"
            )
        state[key] = value
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state, step


def _detect_kind(source: str, found: Sequence[re.Match[str]]) -> str:
    """`motion` if any adapter has a condition_linear; `subject` if only cross_attn_adapter."""
    if any(match["layer"] == "condition_linear" for match in found):
        return "motion"
    if {match["slot"] for match in found} == {"cross_attn_adapter"}:
        return "subject"
    raise CheckpointMismatchError(
        f"{source}: neither an identity adapter file (cross_attn_adapter only) nor a motion "
        "adapter file (with condition_linear): its adapters sit beside self-attention or "
        "feed-forward layers without an image condition"
    )


def _expected_shapes(
    unet: nn.Module, kind: str, hidden_ratio: float, cond_dim: int | None
) -> dict[str, tuple[int, ...]]:
    """The dvkit tensor names and shapes an adapter of `kind` has on `unet` (built on meta)."""
    import torch

    from dvkit.models.injection import AdapterWeights, adapter_slots

    slots = adapter_slots(unet, kind)  # type: ignore[arg-type]
    with torch.device("meta"):
        weights = AdapterWeights(
            kind,  # type: ignore[arg-type]
            slots,
            hidden_ratio,
            cond_dim if kind == "motion" else None,
        )
    return {name: tuple(value.shape) for name, value in weights.tensors().items()}


def _shown(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# ---- preparing and registering ------------------------------------------------------------------


@dataclass
class PreparedImport:
    """An official checkpoint converted to a dvkit adapter, checked, not yet registered."""

    source: Path
    info: AdapterFileInfo
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def name(self) -> str:
        return self.info.name


def prepare_vgen_files(
    catalog: Catalog,
    files: Sequence[str | Path],
    *,
    base: str,
    embeddings: Sequence[str | Path] = (),
    name: str | None = None,
    token: str | None = None,
    description: str | None = None,
    references: Sequence[str | Path] = (),
) -> list[PreparedImport]:
    """Read, map and check official adapter files (and pair identity ones with embeddings).

    Nothing is registered: everything that can be wrong with the files is found first, so a
    failed import leaves the catalog's adapters as they were. `embeddings` are paired with the
    identity files: one with one, otherwise by the name in `text_embedding_of_{name}_{step}.pth`
    and `{name}_adapter_{step}.pth`. `references` (image files or folders) are the subject's
    images, stored in the one identity adapter at the base's native size; without them a
    composed motion gets a zero appearance embedding unless a guidance image is given.
    """
    paths = [Path(file) for file in files]
    if name is not None and len(paths) > 1:
        raise DvkitError("--name can only be used when importing one file")
    names = {}
    for path in paths:
        if path.suffix.lower() != VGEN_SUFFIX:
            raise AdapterFileError(f"{path}: not an official DreamVideo .pth checkpoint")
        _refuse_embedding_file(path)
        derived = name or name_from_filename(path)
        if derived is None:
            raise DvkitError(
                f"{path}: cannot tell the adapter's name from the file name "
                "(expected NAME_adapter_STEP.pth); pass --name NAME"
            )
        names[path] = validate_name(derived)
    embedding_paths = [Path(file) for file in embeddings]
    for path in embedding_paths:
        if path.suffix.lower() != VGEN_SUFFIX:
            raise AdapterFileError(f"{path}: not an official DreamVideo textual-inversion .pth")
    if token is not None:
        validate_token(token)

    # Files first (cheap, and where most mistakes are), then the base, which may be large.
    checkpoints = [_read_checkpoint(path) for path in paths]
    vectors = {path: read_vgen_embedding(path) for path in embedding_paths}

    from dvkit.bases import base_architecture, open_base
    from dvkit.families import family

    architecture = base_architecture(catalog, base)
    if "vgen" not in family(architecture).layouts:
        raise DvkitError(
            "official DreamVideo checkpoints fit bases of family modelscope-t2v (ModelScope "
            f"T2V), but base {base!r} is of family {architecture}"
        )
    components, base_record = open_base(catalog, base)
    adapters = [_map_checkpoint(checkpoint, components.unet) for checkpoint in checkpoints]
    for adapter in adapters:
        catalog.check_kind(names[adapter.path], adapter.kind)
    pairs = _pair_embeddings(adapters, embedding_paths)
    identities = sum(adapter.kind == "subject" for adapter in adapters)
    if token is not None and identities > 1:
        raise DvkitError("--token can only be used when importing one identity adapter")
    images = read_references(references, identities, components)
    prepared = []
    for adapter in adapters:
        embedding = None
        if adapter.kind == "subject":
            embedding = vectors[pairs[adapter.path]]
            _check_width(embedding, components, base_record)
        prepared.append(
            _prepare(
                adapter, embedding, names[adapter.path], token, description, base_record, images
            )
        )
    return prepared


@dataclass
class References:
    """Reference images read for an imported subject: uint8 [N, S, S, 3] and their files."""

    images: torch.Tensor
    files: list[Path]


def read_references(
    references: Sequence[str | Path], identities: int, components: BaseComponents
) -> References | None:
    """The `references` read with dvkit's image reader at the base's native size, for the one
    identity adapter of an import."""
    if not references:
        return None
    if identities != 1:
        found = "no identity adapter" if not identities else f"{identities} identity adapters"
        raise DvkitError(
            f"--references gives the images of one imported subject, but the files hold {found}"
        )
    from dvkit.train.api import reference_images
    from dvkit.train.data import load_images

    pixels, files = load_images(references, components.family.native_size(components))
    return References(reference_images(pixels), files)


def _pair_embeddings(
    adapters: Sequence[VgenAdapter], embeddings: Sequence[Path]
) -> dict[Path, Path]:
    identity = [adapter.path for adapter in adapters if adapter.kind == "subject"]
    if embeddings and not identity:
        raise DvkitError(
            f"--embedding {embeddings[0]} given, but no identity adapter file to go with it "
            "(motion adapters take no embedding)"
        )
    if identity and not embeddings:
        raise DvkitError(
            f"{identity[0]}: an identity adapter needs its learned word: pass --embedding "
            "text_embedding_of_NAME_STEP.pth"
        )
    if len(identity) == 1 and len(embeddings) == 1:
        return {identity[0]: embeddings[0]}
    by_name: dict[str, list[Path]] = {}
    for path in embeddings:
        match = _EMBEDDING_FILE.fullmatch(path.stem)
        by_name.setdefault(match["name"] if match else "", []).append(path)
    pairs = {}
    for path in identity:
        match = _ADAPTER_FILE.fullmatch(path.stem)
        candidates = by_name.get(match["name"], []) if match else []
        if len(candidates) != 1:
            found = "several" if candidates else "no"
            raise DvkitError(
                f"{path}: {found} --embedding files named text_embedding_of_"
                f"{match['name'] if match else 'NAME'}_STEP.pth for this identity adapter; "
                "import identity adapters one at a time with their own --embedding"
            )
        pairs[path] = candidates[0]
    unused = sorted(set(embeddings) - set(pairs.values()))
    if unused:
        raise DvkitError(f"--embedding {unused[0]} matches none of the identity adapter files")
    return pairs


def _check_width(
    embedding: VgenEmbedding, components: BaseComponents, base: BaseModelRecord
) -> None:
    width = components.text_encoder.config.hidden_size
    if embedding.vectors.shape[1] != width:
        raise CheckpointMismatchError(
            f"{embedding.path}: the learned embedding is {embedding.vectors.shape[1]} wide, but "
            f"base {base.name!r} has a text encoder of width {width}"
        )


def _prepare(
    adapter: VgenAdapter,
    embedding: VgenEmbedding | None,
    name: str,
    token: str | None,
    description: str | None,
    base: BaseModelRecord,
    references: References | None = None,
) -> PreparedImport:
    from dvkit.io.adapter_file import REFERENCE_IMAGES_KEY, TOKEN_EMBEDDING_KEY, AdapterFileInfo

    training: dict[str, Any] = {
        "source": "dreamvideo-official",
        "adapter_file": adapter.path.name,
        "adapter_sha256": adapter.sha256,
        "adapter_step": adapter.step,
    }
    tensors = dict(adapter.tensors)
    if embedding is not None:
        training.update(
            embedding_file=embedding.path.name,
            embedding_sha256=embedding.sha256,
            embedding_step=embedding.step,
            num_vectors=embedding.vectors.shape[0],
        )
        tensors[TOKEN_EMBEDDING_KEY] = embedding.vectors
        if references is not None:
            tensors[REFERENCE_IMAGES_KEY] = references.images
            training["reference_files"] = [path.name for path in references.files]
    if adapter.kind == "motion":
        training["cond_dim"] = adapter.cond_dim
        training["image_encoder"] = _image_encoder(adapter.cond_dim, base.builtin)
        training["frames"] = OFFICIAL_FRAMES
    info = AdapterFileInfo(
        kind=adapter.kind,
        name=name,
        base=base.name,
        base_fingerprint=base.fingerprint,
        architecture=base.architecture,
        token=(token or f"<{name}>") if adapter.kind == "subject" else None,
        initializer=None,
        hidden_ratio=adapter.hidden_ratio,
        placement=PLACEMENT[adapter.kind],
        training=training,
        description=(
            description if description is not None else f"imported from {adapter.path.name}"
        ),
    )
    return PreparedImport(adapter.path, info, tensors)


def _image_encoder(cond_dim: int | None, builtin_base: bool) -> str:
    """The appearance-guidance encoder whose embeddings a motion adapter's condition takes."""
    from dvkit.models.image_encoder import TINY_EMBED_DIM, TINY_SPEC

    if cond_dim == OFFICIAL_COND_DIM:
        return OFFICIAL_IMAGE_ENCODER
    if builtin_base and cond_dim == TINY_EMBED_DIM:
        return TINY_SPEC
    return ""


def register_prepared(
    catalog: Catalog, prepared: PreparedImport, tags: Sequence[str] = ()
) -> ImportResult:
    """Write the dvkit adapter file of a prepared import and register it in the catalog."""
    from dvkit.catalog.store import adapter_record
    from dvkit.io.adapter_file import write_adapter_file

    tags = [validate_tag(tag) for tag in tags]
    info = prepared.info
    with tempfile.TemporaryDirectory(prefix="dvkit-import-") as folder:
        path = Path(folder) / f"{info.name}.safetensors"
        write_adapter_file(path, prepared.tensors, info)
        staged, written = catalog.stage_adapter_file(path)
    record = adapter_record(written, staged)
    return catalog.register(record, staged, tags)


def import_vgen(
    catalog: Catalog,
    adapter_path: str | Path,
    *,
    base: str,
    name: str | None = None,
    embedding: str | Path | None = None,
    token: str | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    references: Sequence[str | Path] = (),
) -> ImportResult:
    """Import one official DreamVideo adapter file onto `base` and register it.

    An identity (subject) adapter needs its textual-inversion file `embedding`; its token
    defaults to `<NAME>`, and `references` (image files or folders) become its reference images.
    `name` defaults to the one in `NAME_adapter_STEP.pth`. The same weights twice under one name
    are reported (`duplicate`), not registered again; under another name they are that name's own
    adapter.
    """
    tags = [validate_tag(tag) for tag in tags]
    (prepared,) = prepare_vgen_files(
        catalog,
        [adapter_path],
        base=base,
        embeddings=[embedding] if embedding is not None else [],
        name=name,
        token=token,
        description=description,
        references=references,
    )
    return register_prepared(catalog, prepared, tags)
