"""Textual-inversion embeddings as people download them, imported as token-only subjects.

A token-only subject is a subject adapter file that holds a learned token (`token_embedding`
[vectors, width]) and no identity adapter (`dvkit.placement` is empty); composing it teaches
the text encoder its token and changes nothing in the UNet. Formats read, told apart by their
content (the extension only names the error of a file that is neither format):

- A1111 `.pt`: `{"string_to_param": {"*": [n, width]}, "name": str, "string_to_token": …,
  "step": n, …}`; also the original textual-inversion and DreamVideo
  `text_embedding_of_NAME_STEP.pth` files, whose `string_to_param` is an `nn.ParameterDict`;
- A1111 `.safetensors`: `{"emb_params": [n, width]}`;
- diffusers `learned_embeds.safetensors` / `.bin`: `{"<token>": [width] or [n, width]}`.

PyTorch files are read only with `torch.load(weights_only=True)` (`nn.ParameterDict` is the one
class let through): a file holding other Python objects is refused and nothing in it runs.
The learned token is named after the file's own name for it (A1111's `name`, diffusers' key,
else the file name), as a dvkit token: `<name>` with `name` made a valid dvkit name.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dvkit.catalog.blobs import hash_file
from dvkit.errors import AdapterFileError, DvkitError
from dvkit.io.adapter_file import non_finite
from dvkit.names import name_from_text, validate_name, validate_tag

if TYPE_CHECKING:
    import torch

    from dvkit.catalog import Catalog
    from dvkit.catalog.records import BaseModelRecord
    from dvkit.catalog.store import ImportResult
    from dvkit.io.vgen import PreparedImport, References
    from dvkit.models.components import BaseComponents

ImportKind = Literal["dvkit", "official", "embedding", "lora"]
A1111_KEY = "string_to_param"
A1111_SAFETENSORS_KEY = "emb_params"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_DREAMVIDEO_FILE = re.compile(r"text_embedding_of_(?P<name>.+)_(?P<step>\d+)")


class EmbeddingFileError(AdapterFileError):
    """A file that is not a usable textual-inversion embedding."""


class EmbeddingMismatchError(DvkitError):
    """An embedding that does not fit the chosen base (width, or a token the tokenizer has)."""


@dataclass
class LearnedEmbedding:
    """A textual-inversion file's learned vectors and what it says about them."""

    path: Path
    vectors: torch.Tensor
    """float32 [vectors, width]."""
    own_name: str | None
    """The name the file gives its token (A1111's `name`, diffusers' key), if any."""
    format: str
    """`a1111`, `a1111-safetensors`, `diffusers` or `dreamvideo`."""
    step: int | None
    sha256: str

    @property
    def default_name(self) -> str | None:
        """A dvkit name for the token: from `own_name`, else from the file name."""
        own = name_from_text(self.own_name.strip("<>")) if self.own_name else None
        return own or name_from_text(self.path.stem)


# ---- telling formats apart -------------------------------------------------------------------


def container(path: Path) -> Literal["safetensors", "torch"] | None:
    """`safetensors` or `torch` (zip archive or pickle) by the file's first bytes; None if
    neither. A missing path or a folder is an error."""
    from dvkit.io.vgen import looks_like_torch_file

    if not path.exists():
        raise AdapterFileError(f"{path}: no such file")
    if path.is_dir():
        raise AdapterFileError(f"{path}: is a folder, not a file")
    with open(path, "rb") as handle:
        start = handle.read(9)
    size = path.stat().st_size
    if len(start) == 9 and start[8:] == b"{" and struct.unpack("<Q", start[:8])[0] <= size - 8:
        return "safetensors"  # checked first: a header length may start with byte 0x80
    if looks_like_torch_file(path):
        return "torch"
    return None


def import_kind(path: str | Path) -> tuple[ImportKind, LearnedEmbedding | None]:
    """What `dvkit import` makes of a file, by content: a dvkit file (its header has `dvkit.*`
    metadata), a LoRA (`dvkit.io.lora_layouts.looks_like_lora`), an official DreamVideo adapter
    checkpoint, or an embedding (returned, read).

    A file that is neither safetensors nor PyTorch goes by its extension: a `.safetensors` file's
    header is read here (an `AdapterFileError` says what is wrong, whatever the options), a `.pth`
    goes to the official reader (which says what is wrong), others are refused.
    """
    from dvkit.io.lora_layouts import looks_like_lora
    from dvkit.io.safetensors_header import read_header

    path = Path(path)
    found = container(path)
    if found is None:
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            read_header(path)  # says what is wrong with the file, before any option is judged
            return "dvkit", None
        if suffix == ".pth":
            return "official", None
        raise EmbeddingFileError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r} (neither a "
            "safetensors nor a PyTorch file): dvkit imports its own .safetensors adapter files, "
            "official DreamVideo .pth checkpoints and textual-inversion embeddings "
            "(.pt, .bin, .safetensors)"
        )
    if found == "safetensors":
        header = read_header(path)
        if any(key.startswith("dvkit.") for key in header.metadata):
            return "dvkit", None
        if looks_like_lora(list(header.tensors)):
            return "lora", None
        try:
            return "embedding", read_embedding(path)
        except EmbeddingFileError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            raise EmbeddingFileError(
                f"{path}: not a dvkit adapter file (its header has no dvkit.* metadata) nor a "
                f"textual-inversion embedding: {reason}"
            ) from None
    loaded = _load_torch(path)
    if isinstance(loaded, dict):
        weights = loaded.get("state_dict", loaded)
        if isinstance(weights, dict) and looks_like_lora([str(key) for key in weights]):
            return "lora", None
    if _is_embedding(loaded):
        return "embedding", _embedding_from_torch(path, loaded)
    return "official", None


def _is_embedding(loaded: Any) -> bool:
    """An A1111 / DreamVideo dict, or a dict of tensors under token names (no dotted module
    paths, no `state_dict`: those are adapter checkpoints)."""
    import torch

    if not isinstance(loaded, dict):
        return False
    if A1111_KEY in loaded or A1111_SAFETENSORS_KEY in loaded:
        return True
    return bool(loaded) and all(
        isinstance(key, str) and "." not in key and isinstance(value, torch.Tensor)
        for key, value in loaded.items()
    )


# ---- reading ---------------------------------------------------------------------------------


def read_embedding(path: str | Path) -> LearnedEmbedding:
    """Read a textual-inversion file of any supported format (told by content).

    Raises `EmbeddingFileError` (one line) for files that are no embedding, hold several, hold
    something other than a float tensor, or are damaged; `UnsafeCheckpointError` for PyTorch
    files that would need other Python objects unpickled.
    """
    path = Path(path)
    found = container(path)
    if found == "torch":
        return _embedding_from_torch(path, _load_torch(path))
    if found == "safetensors":
        return _embedding_from_safetensors(path)
    raise EmbeddingFileError(
        f"{path}: not a textual-inversion embedding (neither a safetensors nor a PyTorch file)"
    )


def _load_torch(path: Path) -> Any:
    import torch

    from dvkit.io.vgen import load_weights_only

    return load_weights_only(path, allowed=(torch.nn.ParameterDict,))


def _embedding_from_safetensors(path: Path) -> LearnedEmbedding:
    from safetensors.torch import load_file

    from dvkit.io.safetensors_header import read_header

    header = read_header(path)  # refuses malformed headers in one line before loading
    if any(key.startswith("dvkit.") for key in header.metadata):
        raise EmbeddingFileError(f"{path}: a dvkit adapter file, not a textual-inversion embedding")
    try:
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises its own errors for damaged data
        raise EmbeddingFileError(f"{path}: unreadable safetensors file ({exc})") from None
    if A1111_SAFETENSORS_KEY in tensors:
        entries = {A1111_SAFETENSORS_KEY: tensors.pop(A1111_SAFETENSORS_KEY)}
        return _embedding(path, entries, None, "a1111-safetensors", None, extra=tensors)
    return _embedding(path, tensors, None, "diffusers", None)


def _embedding_from_torch(path: Path, loaded: Any) -> LearnedEmbedding:
    import torch

    if not isinstance(loaded, dict):
        raise EmbeddingFileError(
            f"{path}: holds a {type(loaded).__name__}, not a textual-inversion embedding"
        )
    if A1111_KEY not in loaded:
        if A1111_SAFETENSORS_KEY in loaded:
            entries = {A1111_SAFETENSORS_KEY: loaded[A1111_SAFETENSORS_KEY]}
            return _embedding(path, entries, None, "a1111", None)
        return _embedding(path, loaded, None, "diffusers", None)
    params = loaded[A1111_KEY]
    if not isinstance(params, (dict, torch.nn.ParameterDict)):
        raise EmbeddingFileError(
            f"{path}: {A1111_KEY!r} holds a {type(params).__name__}, not a dict of tensors"
        )
    dreamvideo = _DREAMVIDEO_FILE.fullmatch(path.stem)
    own_name = loaded.get("name")
    if not isinstance(own_name, str):
        own_name = dreamvideo["name"] if dreamvideo else None
    step = loaded.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        step = int(dreamvideo["step"]) if dreamvideo else None
    fmt = "dreamvideo" if isinstance(params, torch.nn.ParameterDict) else "a1111"
    return _embedding(path, dict(params.items()), own_name, fmt, step)


def _embedding(
    path: Path,
    entries: Mapping[Any, Any],
    own_name: str | None,
    fmt: str,
    step: int | None,
    extra: Mapping[str, Any] | None = None,
) -> LearnedEmbedding:
    """The one learned embedding among `entries` (token → vectors), checked."""
    import torch

    if len(entries) != 1:
        listed = ", ".join(repr(key) for key in list(entries)[:4]) or "none"
        more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
        raise EmbeddingFileError(
            f"{path}: holds {len(entries)} learned embeddings ({listed}{more}); dvkit imports "
            "a file with one"
        )
    if extra:
        raise EmbeddingFileError(
            f"{path}: holds {next(iter(extra))!r} beside {A1111_SAFETENSORS_KEY!r}; not an "
            "embedding dvkit knows"
        )
    ((key, vectors),) = entries.items()
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point():
        what = vectors.dtype if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise EmbeddingFileError(f"{path}: the learned embedding {key!r} is {what}, not floats")
    vectors = vectors.detach()
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or 0 in vectors.shape:
        raise EmbeddingFileError(
            f"{path}: the learned embedding {key!r} has shape {list(vectors.shape)}, not "
            "[vectors, width]"
        )
    if non_finite({key: vectors}):
        raise EmbeddingFileError(f"{path}: the learned embedding holds NaN or infinite values")
    if own_name is None and isinstance(key, str) and key not in ("*", A1111_SAFETENSORS_KEY):
        own_name = key
    vectors = vectors.float().contiguous().clone()
    return LearnedEmbedding(path, vectors, own_name, fmt, step, hash_file(path))


# ---- fitting a base --------------------------------------------------------------------------


def check_fits(vectors: torch.Tensor, components: BaseComponents, base: str, token: str) -> None:
    """Refuse vectors [n, width] whose width is not the base's text-encoder width, or a token
    (with its extra vectors) that the base's tokenizer already has."""
    from dvkit.models.textual_inversion import check_new_tokens, placeholder_tokens

    width = components.text_encoder.get_input_embeddings().weight.shape[1]
    if vectors.shape[1] != width:
        raise EmbeddingMismatchError(
            f"embedding width {vectors.shape[1]} does not fit base {base}'s text encoder "
            f"(width {width})"
        )
    check_new_tokens(components.tokenizer, placeholder_tokens(token, vectors.shape[0]))


# ---- preparing and registering ---------------------------------------------------------------


def prepare_embedding_files(
    catalog: Catalog,
    embeddings: Sequence[LearnedEmbedding],
    *,
    base: str,
    name: str | None = None,
    token: str | None = None,
    description: str | None = None,
    references: Sequence[str | Path] = (),
) -> list[PreparedImport]:
    """Token-only subjects of `base` from read embeddings, checked, not yet registered.

    Each is named `name` or after the embedding's own name (see `LearnedEmbedding.default_name`),
    and its token is `token` or `<that name>`. `references` (image files or folders, for one
    embedding) become its reference images: its guidance image when composed with a motion.
    """
    if len(embeddings) > 1:
        for option, value in (("--name", name), ("--token", token), ("--references", references)):
            if value:
                raise DvkitError(f"{option} can only be used when importing one embedding")
    named = [(embedding, _names(embedding, name, token)) for embedding in embeddings]
    for _, (subject, _) in named:
        catalog.check_kind(subject, "subject")

    from dvkit.bases import open_base
    from dvkit.io.vgen import read_references

    components, base_record = open_base(catalog, base)
    images = read_references(references, len(embeddings), components)
    prepared = []
    for embedding, (subject, placeholder) in named:
        check_fits(embedding.vectors, components, base_record.name, placeholder)
        prepared.append(_prepare(embedding, subject, placeholder, description, base_record, images))
    return prepared


def _names(embedding: LearnedEmbedding, name: str | None, token: str | None) -> tuple[str, str]:
    """The catalog name and the token of an imported embedding."""
    own = embedding.default_name
    subject = name or own
    if subject is None:
        raise DvkitError(f"{embedding.path}: cannot make a name from the file's; pass --name NAME")
    validate_name(subject)
    placeholder = token or f"<{own or subject}>"
    return subject, placeholder


def _prepare(
    embedding: LearnedEmbedding,
    name: str,
    token: str,
    description: str | None,
    base: BaseModelRecord,
    references: References | None,
) -> PreparedImport:
    from dvkit.io.adapter_file import REFERENCE_IMAGES_KEY, TOKEN_EMBEDDING_KEY, AdapterFileInfo
    from dvkit.io.vgen import DEFAULT_HIDDEN_RATIO, PreparedImport

    training: dict[str, Any] = {
        "source": "textual-inversion",
        "format": embedding.format,
        "embedding_file": embedding.path.name,
        "embedding_sha256": embedding.sha256,
        "embedding_step": embedding.step,
        "embedding_name": embedding.own_name,
        "num_vectors": embedding.vectors.shape[0],
    }
    tensors = {TOKEN_EMBEDDING_KEY: embedding.vectors}
    if references is not None:
        tensors[REFERENCE_IMAGES_KEY] = references.images
        training["reference_files"] = [path.name for path in references.files]
    info = AdapterFileInfo(
        kind="subject",
        name=name,
        base=base.name,
        base_fingerprint=base.fingerprint,
        architecture=base.architecture,
        token=token,
        hidden_ratio=DEFAULT_HIDDEN_RATIO,
        placement=[],
        training=training,
        description=(
            description
            if description is not None
            else f"textual inversion imported from {embedding.path.name}"
        ),
    )
    return PreparedImport(embedding.path, info, tensors)


def import_embedding(
    catalog: Catalog,
    path: str | Path,
    *,
    base: str,
    name: str | None = None,
    token: str | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    references: Sequence[str | Path] = (),
) -> ImportResult:
    """Import one textual-inversion file as a token-only subject of `base` and register it.

    The same vectors twice under one name are reported (`duplicate`), not registered again.
    """
    from dvkit.io.vgen import register_prepared

    tags = [validate_tag(tag) for tag in tags]
    (prepared,) = prepare_embedding_files(
        catalog, [read_embedding(path)], base=base, name=name, token=token,
        description=description, references=references,
    )  # fmt: skip
    return register_prepared(catalog, prepared, tags)
