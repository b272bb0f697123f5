"""LoRA files in the layouts other tools write, read into and written from dvkit's LoRA names.

Read (told apart by their keys):

- `diffusers`: peft names under the component (`unet.<layer>.lora_A.weight` / `lora_B`), or
  diffusers' older ones (`unet.<layer>.processor.to_q_lora.down.weight`, `….lora.down.weight`),
  alphas in the `lora_adapter_metadata` header entry (a peft `LoraConfig`) where there is one;
- `kohya` (also what ComfyUI loads for UNet bases): `lora_unet_<layer with _>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`, and `lora_te_…` for the text encoder;
- `motionlora`: AnimateDiff MotionLoRA checkpoints (`.ckpt`), the motion modules' original names
  (`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.
  processor.to_q_lora.down.weight`), alpha = rank.

On a transformer family (`wan`: the pipeline's `transformer_name`), diffusers' pipeline reads
every layout it knows (`WanPipeline.lora_state_dict`, `loaders/lora_conversion_utils.py`):
`diffusers` (`transformer.blocks.N.attn1.to_q.lora_A.weight`, finetrainers and diffusers' own),
`kohya` (musubi-tuner's `lora_unet_blocks_N_self_attn_q.lora_down.weight` with `.alpha`) and
`comfyui` (Wan's original names, `diffusion_model.blocks.N.self_attn.q.lora_A.weight` or
`lora_down` with `.alpha`: ComfyUI, ai-toolkit, diffusion-pipe); it folds each alpha into the
weights (α = r after). The denoiser's component is `transformer` in diffusers' names, `unet` in
dvkit's.

Key conversion is diffusers' own: the pipeline's `lora_state_dict` (kohya → diffusers names,
`loaders/lora_pipeline.py`), `convert_unet_state_dict_to_peft` and `convert_state_dict_to_peft`
(`utils/state_dict_utils.py`); `convert_state_dict_to_kohya` writes the kohya layout. dvkit adds
two renames diffusers lacks: MotionLoRA's original module names to `UNetMotionModel`'s (the
mapping of diffusers' `scripts/convert_animatediff_motion_lora_to_diffusers.py`), and the video
UNets' module names that diffusers' kohya conversion splits at their underscore
(`SPLIT_NAMES`).
PyTorch files are read only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dvkit.errors import AdapterFileError
from dvkit.io.adapter_file import check_finite

if TYPE_CHECKING:
    import torch

Layout = Literal["diffusers", "kohya", "motionlora", "comfyui"]
EXPORT_LAYOUTS = ("diffusers", "comfyui")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_")
_LORA_KEY = re.compile(r"(^|[._])lora([._]|$)|lora_[AB]\.|_lora\.")
_METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder")
COMPONENT_PREFIXES = ("unet.", "text_encoder.")
_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
WAN_ORIGINAL = {
    **{f"attn1.{ours}": f"self_attn.{theirs}" for theirs, ours in _PROJECTIONS.items()},
    **{f"attn2.{ours}": f"cross_attn.{theirs}" for theirs, ours in _PROJECTIONS.items()},
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
"""Module names in a `WanTransformerBlock` (diffusers) → Wan's original names (`WanAttentionBlock`
of Wan's repository), as diffusers' `_convert_non_diffusers_wan_lora_to_diffusers` maps them
the other way; an export checks each name by converting it back with diffusers."""
SPLIT_NAMES = ("motion_modules", "temp_attentions", "temp_convs", "transformer_in")
"""Module names of AnimateDiff's and ModelScope's UNets that diffusers' kohya conversion (made
for SD UNets) splits at their underscore."""


@dataclass
class ForeignLora:
    """A LoRA file read into dvkit names (`dvkit.models.lora`): A, B and alpha per layer."""

    path: Path
    layout: Layout
    tensors: dict[str, torch.Tensor]
    added: frozenset[str] = frozenset()
    """Names of the alphas dvkit added (the file gives none for their layers)."""


def looks_like_lora(keys: list[str]) -> bool:
    """Whether tensor names are a LoRA's (every name but alphas names a LoRA part)."""
    named = [key for key in keys if not key.endswith(".alpha")]
    return bool(named) and all(_LORA_KEY.search(key) for key in named)


def read_lora(path: str | Path, pipeline_class: type) -> ForeignLora:
    """A LoRA file in any layout above, converted to dvkit names with one alpha per layer
    (α = r where the file gives none, as diffusers and peft assume).

    `pipeline_class` is the base family's diffusers pipeline, whose `lora_state_dict` converts
    kohya names. Names of other components are kept as they are (`LoraWeights.from_tensors`
    counts them as not fitting). Raises `AdapterFileError` for a file that holds no LoRA, a
    DoRA (its magnitude vectors have no place in a LoRA), NaN or infinite weights, or one
    diffusers cannot convert.
    """
    path = Path(path)
    loaded, header = _load(path)
    keys = list(loaded)
    if not looks_like_lora(keys):
        raise AdapterFileError(f"{path}: not a LoRA file (its tensor names are not LoRA weights)")
    dora = next((k for k in keys if "dora_scale" in k or "lora_magnitude_vector" in k), None)
    if dora is not None:
        raise AdapterFileError(f"{path}: a DoRA ({dora}), which dvkit does not apply")
    check_finite(path, loaded, "LoRA")
    configs = {
        "unet": _adapter_config(header, denoiser_component(pipeline_class)),
        "text_encoder": _adapter_config(header, "text_encoder"),
    }
    try:
        layout, tensors, added = convert_lora(loaded, pipeline_class, configs)
    except AdapterFileError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None
    return ForeignLora(path, layout, tensors, added)


def convert_lora(
    loaded: Mapping[str, torch.Tensor],
    pipeline_class: type,
    configs: Mapping[str, Mapping[str, Any]],
) -> tuple[Layout, dict[str, torch.Tensor], frozenset[str]]:
    """LoRA tensors in any layout above (told apart by their names) in dvkit names, with one
    alpha per layer: the file's, else by the component's peft `LoraConfig` fields in `configs`
    (`alpha_pattern`, `lora_alpha`; component → fields), else the layer's rank. Also returns
    the names of the alphas added (not the file's).

    `pipeline_class` converts kohya names (`lora_state_dict`). Names of other components are
    kept as they are. Also what turns peft's own state dict of a trained LoRA
    (`get_peft_model_state_dict`, under its component) into dvkit names. Raises
    `AdapterFileError` when a transformer pipeline's `lora_state_dict` fails on the names.
    """
    keys = list(loaded)
    layout: Layout
    denoiser = denoiser_component(pipeline_class)
    if denoiser != "unet" and not all(key.startswith(COMPONENT_PREFIXES) for key in keys):
        layout = _transformer_layout(keys)
        try:
            read = pipeline_class.lora_state_dict(dict(loaded))
        except (KeyError, ValueError, IndexError) as exc:
            raise AdapterFileError(_unread(layout, pipeline_class, keys, exc)) from None
        prefix = f"{denoiser}."
        converted = {f"unet.{k.removeprefix(prefix)}" if k.startswith(prefix) else k: v
                     for k, v in read.items()}  # fmt: skip
        if not any(k.startswith(COMPONENT_PREFIXES) for k in converted):
            converted = {f"unet.{k}": v for k, v in converted.items()}
        alphas: Mapping[str, Any] = {}
    elif all(key.startswith(KOHYA_PREFIXES) for key in keys):
        layout = "kohya"
        converted, alphas = pipeline_class.lora_state_dict(dict(loaded))
        converted = {_fix_split_names(k): v for k, v in converted.items()}
        alphas = {_fix_split_names(k): v for k, v in (alphas or {}).items()}
    else:
        layout = "motionlora" if any(".temporal_transformer." in k for k in keys) else "diffusers"
        if layout == "motionlora":
            loaded = {f"unet.{_motion_module_name(k)}": v for k, v in loaded.items()}
        elif not any(k.startswith(COMPONENT_PREFIXES) for k in keys):
            loaded = {f"unet.{k}": v for k, v in loaded.items()}
        converted, alphas = loaded, {}
    # alphas go through the same conversion as the layers' down weights
    as_down = {
        name if name.endswith("down.weight") else f"{name}.lora.down.weight": value
        for name, value in ((k.removesuffix(".alpha"), v) for k, v in alphas.items())
    }
    tensors = {k: v for k, v in converted.items() if not k.startswith(COMPONENT_PREFIXES)}
    added = set()
    for component in COMPONENTS:
        part = _to_peft(component, converted)
        layer_alphas = {
            k.removesuffix(".lora_A.weight"): v for k, v in _to_peft(component, as_down).items()
        }
        config = configs.get(component, {})
        for key, value in part.items():
            tensors[key] = value
            if key.endswith(".lora_A.weight"):
                layer = key.removesuffix(".lora_A.weight")
                if layer not in layer_alphas:
                    added.add(f"{layer}.alpha")
                alpha = layer_alphas.get(layer, _configured_alpha(layer, value.shape[0], config))
                tensors[f"{layer}.alpha"] = _scalar(alpha)
    return layout, tensors, frozenset(added)


def file_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dvkit LoRA tensors with CLIP text-encoder layers named as LoRA files name them, under
    `text_model.` (transformers 5's CLIPTextModel has its layers at the top; dvkit names a
    layer by the loaded model's own path)."""
    text = "text_encoder."
    return {
        key.replace(text, f"{text}text_model.", 1)
        if key.startswith(text) and not key.startswith(f"{text}text_model.")
        else key: value
        for key, value in tensors.items()
    }


def model_names(
    tensors: Mapping[str, torch.Tensor], text_encoder: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """LoRA tensors read from a file with text-encoder layers named by `text_encoder`'s own
    paths (without `text_model.` where the model has none; see `file_names`)."""
    if hasattr(text_encoder, "text_model"):
        return dict(tensors)
    return {
        key.replace("text_encoder.text_model.", "text_encoder.", 1): value
        for key, value in tensors.items()
    }


def to_diffusers(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """dvkit LoRA tensors as diffusers' `save_lora_weights` takes them: per component, peft
    names without the component, and a peft `LoraConfig` (as a dict) giving each layer's rank
    and alpha (`rank_pattern`, `alpha_pattern` where a layer differs from the most common).

    The config names layers by patterns that fit a CLIP text encoder with or without
    `text_model.` (transformers 4 and 5): `target_modules` as one regex (peft full-matches it),
    pattern keys without `text_model.` (peft matches them at the end of a layer's path,
    `peft.utils.other.get_pattern_key`)."""
    from collections import Counter

    from peft import LoraConfig

    tensors = file_names(tensors)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for component in ("unet", "text_encoder"):
        part = {
            k.removeprefix(f"{component}."): v
            for k, v in tensors.items()
            if k.startswith(f"{component}.") and not k.endswith(".alpha")
        }
        if not part:
            continue
        ranks = {
            k.removesuffix(".lora_A.weight"): v.shape[0]
            for k, v in part.items()
            if k.endswith(".lora_A.weight")
        }
        alphas = {layer: float(tensors[f"{component}.{layer}.alpha"]) for layer in ranks}
        rank = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        paths = {layer: re.escape(layer.removeprefix("text_model.")) for layer in ranks}
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=r"(?:text_model\.)?(?:" + "|".join(sorted(paths.values())) + ")",
            rank_pattern={paths[k]: v for k, v in ranks.items() if v != rank},
            alpha_pattern={paths[k]: v for k, v in alphas.items() if v != alpha},
        ).to_dict()
        layers[component] = part
        configs[component] = config
    return layers, configs


def to_kohya(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dvkit LoRA tensors in the kohya / ComfyUI layout (`lora_unet_…`, `lora_te_…`), by
    diffusers' `convert_state_dict_to_kohya`, each layer with its own alpha."""
    from diffusers.utils import convert_state_dict_to_kohya

    tensors = file_names(tensors)
    peft_names = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    converted = convert_state_dict_to_kohya(peft_names)
    # diffusers names the one text encoder of SD-style bases `lora_te1_` (SDXL's first);
    # kohya and ComfyUI call it `lora_te_`.
    converted = {re.sub(r"^lora_te1_", "lora_te_", k): v for k, v in converted.items()}
    for layer_alpha in [k for k in tensors if k.endswith(".alpha")]:
        down_name = layer_alpha.removesuffix(".alpha") + ".lora_A.weight"
        one = convert_state_dict_to_kohya({down_name: tensors[down_name]})
        alpha_key = re.sub(r"^lora_te1_", "lora_te_", next(k for k in one if k.endswith(".alpha")))
        converted[alpha_key] = tensors[layer_alpha]
    return converted


def denoiser_component(pipeline_class: type) -> str:
    """What diffusers calls a pipeline's denoiser in LoRA names: `transformer` for transformer
    families (`WanPipeline.transformer_name`), else `unet`."""
    return getattr(pipeline_class, "transformer_name", None) or "unet"


def to_wan_original(
    tensors: Mapping[str, torch.Tensor], pipeline_class: type
) -> dict[str, torch.Tensor]:
    """dvkit LoRA tensors of a Wan transformer in the ComfyUI layout: Wan's original names
    (`diffusion_model.blocks.N.self_attn.q.lora_A.weight`, `lora_B`; `WAN_ORIGINAL`), each
    layer's α / r folded into B (no `.alpha`: ComfyUI then scales by 1, as diffusers does after
    folding). The result is converted back by `pipeline_class.lora_state_dict` (diffusers' own
    reader) and must give the same layers and weights.

    Raises `AdapterFileError` naming a layer with no original name (outside the blocks, or a
    text-encoder layer), or when diffusers reads the result back differently.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
        layer = key.removesuffix(".lora_A.weight")
        match = re.fullmatch(r"unet\.blocks\.(\d+)\.(.+)", layer)
        if match is None or match[2] not in WAN_ORIGINAL:
            raise AdapterFileError(f"{layer}: no ComfyUI (Wan original) name for this layer")
        down, up = tensors[key], tensors[f"{layer}.lora_B.weight"]
        scaled = up * (float(tensors[f"{layer}.alpha"]) / down.shape[0])
        name = f"diffusion_model.blocks.{match[1]}.{WAN_ORIGINAL[match[2]]}"
        out |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": scaled}
        expected |= {f"{layer}.lora_A.weight": down, f"{layer}.lora_B.weight": scaled}
    _, back, _ = convert_lora(out, pipeline_class, {})
    back = {k: v for k, v in back.items() if not k.endswith(".alpha")}
    if back.keys() != expected.keys() or any(
        not torch.equal(back[k], v) for k, v in expected.items()
    ):
        raise AdapterFileError("diffusers reads the ComfyUI export back as other layers")
    return out


def _unread(layout: Layout, pipeline_class: type, keys: list[str], exc: Exception) -> str:
    """Why `pipeline_class.lora_state_dict` failed on a file's names: a layer its reader needs
    missing from blocks the file names as the family does (a `KeyError` naming a layer under
    the same block prefix, e.g. musubi's `blocks_0_`), else names not of the family."""
    if isinstance(exc, KeyError):
        missing = str(exc.args[0])
        blocks = missing.split("_", 1)[0] + "_"
        if any(key.removeprefix("lora_unet_").startswith(blocks) for key in keys):
            return (
                f"{layout} LoRA that {pipeline_class.__name__}.lora_state_dict cannot read: "
                f"diffusers' reader needs every layer of each block, and {missing!r} is missing"
            )
    family = pipeline_class.__name__.removesuffix("Pipeline")
    return f"{layout} LoRA whose names are not a {family} layout diffusers reads (first: {keys[0]})"


def _transformer_layout(keys: list[str]) -> Layout:
    """The layout of a transformer family's LoRA by its names (see the module docstring)."""
    if all(key.startswith(KOHYA_PREFIXES) for key in keys):
        return "kohya"
    return "comfyui" if any(key.startswith("diffusion_model.") for key in keys) else "diffusers"


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and (safetensors) header metadata of a file; a checkpoint's `state_dict`."""
    import torch

    from dvkit.io.embeddings import container
    from dvkit.io.vgen import load_weights_only

    kind = container(path)
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as handle:
                return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}
        except Exception as exc:  # safetensors raises its own errors for damaged data
            raise AdapterFileError(f"{path}: unreadable safetensors file ({exc})") from None
    if kind is None:
        raise AdapterFileError(f"{path}: neither a safetensors nor a PyTorch file")
    loaded = load_weights_only(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise AdapterFileError(f"{path}: not a LoRA checkpoint (not a dict of tensors)")
    return loaded, {}


def _motion_module_name(key: str) -> str:
    """An original AnimateDiff motion-module name as `UNetMotionModel` names it (no
    `temporal_transformer`, `attention_blocks.0/1` → `attn1/2`)."""
    key = key.replace(".temporal_transformer.", ".")
    return re.sub(r"\.attention_blocks\.(\d+)\.", lambda m: f".attn{int(m[1]) + 1}.", key)


def _fix_split_names(key: str) -> str:
    """A key of diffusers' kohya conversion with the video UNets' module names it splits at
    their underscore (`motion.modules` → `motion_modules`) made whole again."""
    for name in SPLIT_NAMES:
        key = key.replace(f".{name.replace('_', '.')}.", f".{name}.")
    return key


def _adapter_config(header: Mapping[str, str], component: str) -> dict[str, Any]:
    """The peft `LoraConfig` fields diffusers saved for `component` (its `lora_adapter_metadata`
    header entry; keys prefixed with the component), or {}."""
    text = header.get(_METADATA_KEY)
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except ValueError:
        return {}
    prefix = f"{component}."
    return {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}


def _to_peft(component: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `component` (`unet.…`, `text_encoder.…`) under peft names, by diffusers'
    converters (text encoders first from diffusers' old `to_q_lora` names to CLIP's `q_proj`)."""
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    part = {k: v for k, v in tensors.items() if k.startswith(f"{component}.")}
    if component == "text_encoder" and any("_lora." in k for k in part):
        part = convert_state_dict_to_peft(part, StateDictType.DIFFUSERS_OLD)
    return convert_unet_state_dict_to_peft(part) if part else {}


def _configured_alpha(layer: str, rank: int, config: Mapping[str, Any]) -> float:
    """A layer's alpha by a peft config (`alpha_pattern`, else `lora_alpha`), else its rank."""
    module = layer.split(".", 1)[1]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(pattern, module):
            return float(value)
    return float(config.get("lora_alpha", rank))


def _scalar(value: float) -> torch.Tensor:
    import torch

    return torch.tensor(float(value))
