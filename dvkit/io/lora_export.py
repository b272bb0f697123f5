"""Exports of LoRAs: one LoRA as a diffusers/peft or ComfyUI file that other tools load (kohya
names on UNet families, Wan's original names on wan), and LoRAs fused into a copy of their base
(`--into-base`), saved as a diffusers folder of the family's pipeline.

Both files carry ModelSpec metadata (`modelspec.*`, architecture `<family>/lora`, the
subject's token as `modelspec.trigger_phrase`); a subject's learned token is written beside the
file as a diffusers textual-inversion file (`<stem>.embedding.safetensors`, {token: [n, width]},
which `pipe.load_textual_inversion(file)` reads).
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvkit.errors import DvkitError
from dvkit.io.files import write_atomically

if TYPE_CHECKING:
    import torch

    from dvkit.catalog import Catalog
    from dvkit.catalog.records import AdapterRecord
    from dvkit.io.export import ExportResult
    from dvkit.models.components import BaseComponents

FORMATS = ("dvkit", "diffusers", "comfyui")
EMBEDDING_SUFFIX = ".embedding.safetensors"
NOT_FUSABLE = (
    "{ref} is a DreamVideo adapter: its adapters are non-linear (a GELU bottleneck beside each "
    "layer) and cannot be fused into the base's weights"
)


def family_pipeline(architecture: str) -> type:
    """The diffusers pipeline class of a base family (`Family.reference_pipeline`)."""
    from dvkit.families import family

    name = family(architecture).reference_pipeline
    return getattr(importlib.import_module("diffusers"), name)


def reference_pipeline(components: BaseComponents) -> Any:
    """The family's diffusers pipeline (`Family.reference_pipeline`) built from a base's
    components and its sampling scheduler; components it requires that the base keeps inside
    its denoiser (AnimateDiff's `motion_adapter`) are None."""
    from dvkit.io.lora_layouts import denoiser_component

    pipeline = family_pipeline(components.architecture)
    given = {
        "vae": components.vae, "text_encoder": components.text_encoder,
        "tokenizer": components.tokenizer, denoiser_component(pipeline): components.unet,
        "scheduler": components.family.sampling_scheduler(components),
    }  # fmt: skip
    optional = {
        key: None
        for key, parameter in inspect.signature(pipeline).parameters.items()
        if key not in given and key != "self" and parameter.default is inspect.Parameter.empty
    }
    return pipeline(**given, **optional)


def export_lora(
    catalog: Catalog, ref: str, out: str | Path, fmt: str, *, step: int | None = None,
    overwrite: bool = False,
) -> ExportResult:  # fmt: skip
    """Write LoRA `ref` (or its kept checkpoint at `step`) to `out` in layout `fmt`: `diffusers`
    (peft names under `unet.` / `text_encoder.`, or `transformer.` on wan, written by the family
    pipeline's `save_lora_weights` with each layer's rank and alpha as a peft `LoraConfig`) or
    `comfyui` (kohya names with `.alpha`, `dvkit.io.lora_layouts.to_kohya`; on wan Wan's
    original names, `to_wan_original`).

    Raises `DvkitError` for a DreamVideo adapter, an unknown format, a text-encoder LoRA the
    family's pipeline cannot load, or (`AdapterFileError`) a wan layer with no ComfyUI name.
    """
    from dvkit.generate.compose import load_adapter
    from dvkit.io.adapter_file import serialize_with_hash
    from dvkit.io.export import ExportResult, check_out_path
    from dvkit.io.lora_layouts import denoiser_component, to_diffusers, to_kohya, to_wan_original

    if fmt not in FORMATS[1:]:
        raise DvkitError(f"unknown export format {fmt!r} (use dvkit, diffusers or comfyui)")
    out = check_out_path(out, overwrite)
    record = catalog.show(ref)
    if record.method != "lora":
        raise DvkitError(
            f"{record.ref} is a DreamVideo adapter: only LoRAs export to the {fmt} layout "
            "(export it as a dvkit file: --format dvkit)"
        )
    adapter = load_adapter(catalog, record.ref, step, record.kind)
    tensors = adapter.tensors.adapters
    pipeline = family_pipeline(record.architecture)
    if fmt == "comfyui" and denoiser_component(pipeline) != "unet":
        foreign, extra = to_wan_original(tensors, pipeline), {}
    elif fmt == "comfyui":
        foreign, extra = to_kohya(tensors), {}
    else:
        layers, configs = to_diffusers(tensors)
        foreign, extra = _saved_by_diffusers(record.architecture, layers, configs)
    metadata = {**extra, **_modelspec(record)}
    data, weights_hash = serialize_with_hash(foreign, metadata)
    write_atomically(out, data)
    beside = None
    if adapter.tensors.token_embedding is not None and record.token:
        embedding, _ = serialize_with_hash({record.token: adapter.tensors.token_embedding}, {})
        beside = out.with_name(out.name.removesuffix(".safetensors") + EMBEDDING_SUFFIX)
        write_atomically(beside, embedding)
    label = record.ref if step is None else f"{record.ref} step {step}"
    return ExportResult(out, [label], weights_hash, len(data), beside)


def export_into_base(
    catalog: Catalog,
    out: str | Path,
    parts: Sequence[tuple[str, str, float]],
    *,
    overwrite: bool = False,
) -> list[str]:
    """Fuse LoRAs into a copy of their base and save it as a diffusers folder at `out`.

    `parts` are (kind, ref, scale). Each LoRA layer's weight becomes W + scale · (α / r) · B · A
    (`LoraWeights.weight_delta`, peft's `merge`); a subject's learned token is added to the
    tokenizer and text encoder. The folder is saved by the family's pipeline `save_pretrained`
    with the sampler's scheduler, so `Pipeline.from_pretrained(out)` alone samples what dvkit
    composes. Returns the refs fused. Raises `DvkitError` for a DreamVideo adapter (`NOT_FUSABLE`)
    or an `out` that exists and is not an empty folder (unless `overwrite`).
    """
    import torch

    from dvkit.generate.compose import load_adapter, open_matching_base
    from dvkit.models.lora import LoraWeights
    from dvkit.models.textual_inversion import apply_token_embedding

    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise DvkitError(f"cannot write a base to {out}: it exists (--force overwrites it)")
    chosen = [(load_adapter(catalog, ref, None, kind), scale) for kind, ref, scale in parts]
    for adapter, _ in chosen:
        if adapter.record.method != "lora" and adapter.tensors.adapters:
            raise DvkitError(NOT_FUSABLE.format(ref=adapter.record.ref))
    components, _ = open_matching_base(catalog, [adapter for adapter, _ in chosen], None)
    roots = {"unet": components.unet, "text_encoder": components.text_encoder}
    for adapter, scale in chosen:
        embedding, token = adapter.tensors.token_embedding, adapter.record.token
        if embedding is not None and token:
            apply_token_embedding(components.tokenizer, components.text_encoder, token, embedding)
        if adapter.record.method != "lora":
            continue
        lora = LoraWeights.from_tensors(adapter.record.kind, adapter.tensors.adapters, roots)
        with torch.no_grad():
            for path, module in lora.modules_by_path.items():
                layer = roots[module.component].get_submodule(module.module_path)
                layer.weight += scale * lora.weight_delta(path).to(layer.weight.dtype)
    reference_pipeline(components).save_pretrained(out)
    return [adapter.label for adapter, _ in chosen]


def _saved_by_diffusers(
    architecture: str, layers: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata the family pipeline's `save_lora_weights` writes."""
    from safetensors import safe_open

    from dvkit.io.lora_layouts import denoiser_component

    pipeline = family_pipeline(architecture)
    denoiser = denoiser_component(pipeline)
    parts = (
        {denoiser: "unet"}
        if denoiser != "unet"
        else {"unet": "unet", "text_encoder": "text_encoder"}
    )
    if "text_encoder" in layers and "text_encoder" not in parts.values():
        raise DvkitError(
            f"{pipeline.__name__} loads no text-encoder LoRA: export this LoRA with --format dvkit"
        )
    kwargs = {}
    for theirs, ours in parts.items():
        kwargs[f"{theirs}_lora_layers"] = layers.get(ours)
        kwargs[f"{theirs}_lora_adapter_metadata"] = configs.get(ours)
    with tempfile.TemporaryDirectory(prefix="dvkit-lora-") as folder:
        pipeline.save_lora_weights(folder, weight_name="lora.safetensors", **kwargs)
        with safe_open(Path(folder) / "lora.safetensors", "pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


def _modelspec(record: AdapterRecord) -> dict[str, str]:
    """ModelSpec metadata of an exported LoRA (https://github.com/Stability-AI/ModelSpec)."""
    from dvkit.io.adapter_file import LORA_SUFFIX, modelspec_metadata

    architecture = f"{record.architecture}/{LORA_SUFFIX}"
    meta = modelspec_metadata(architecture, record.name, record.description)
    if record.token:
        meta["modelspec.trigger_phrase"] = record.token
    return meta
