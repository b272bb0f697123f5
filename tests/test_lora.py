"""LoRAs on `tiny-animatediff`: files in each layout imported and composed as diffusers'
`AnimateDiffPipeline.load_lora_weights` loads them, beside DreamVideo adapters, per row."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dvkit.bases import open_base
from dvkit.generate.compose import install_subject, load_adapter, load_weights
from dvkit.generate.sampler import Row, SamplerSettings, initial_latents, sample
from dvkit.io.adapter_file import (
    TOKEN_EMBEDDING_KEY,
    AdapterFileInfo,
    read_adapter_info,
    write_adapter_file,
)
from dvkit.models.injection import AdapterInjector, create_adapter_state

BASE = "tiny-animatediff"
SETTINGS = SamplerSettings(steps=3, guidance_scale=7.5, frames=3, height=8, width=8)
PROMPT, NEGATIVE = "a cat surfing", "a dog"
SPATIAL = ("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0")
TEMPORAL = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn1.to_out.0")
TEMPORAL_PARTS = (".motion_modules.", ".temp_attentions.", ".transformer_in.")
"""Where temporal blocks sit: AnimateDiff's motion modules, ModelScope's temporal attentions."""


def _layers(unet: torch.nn.Module, motion: bool) -> list[str]:
    """Attention projections of the temporal (motion) or spatial transformer blocks, and for
    the spatial kind the first resnet convolution (a Conv2d LoRA)."""
    names = []
    for name, _ in unet.named_modules():
        in_motion = any(part in f".{name}" for part in TEMPORAL_PARTS)
        if in_motion == motion and name.endswith(TEMPORAL if motion else SPATIAL):
            names.append(name)
    if not motion:
        names.append("down_blocks.0.resnets.0.conv1")
    return names


def _lora_weights(unet: torch.nn.Module, motion: bool, seed: int, rank: int = 2) -> dict:
    """Random LoRA weights {layer: (A, B)} on the layers `_layers` picks."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name in _layers(unet, motion):
        layer = unet.get_submodule(name)
        if isinstance(layer, torch.nn.Conv2d):
            shapes = (
                (rank, layer.in_channels, *layer.kernel_size),
                (layer.out_channels, rank, 1, 1),
            )
        else:
            shapes = ((rank, layer.in_features), (layer.out_features, rank))
        weights[name] = tuple(0.3 * torch.randn(s, generator=generator) for s in shapes)
    return weights


def _text(seed: int, rank: int = 2) -> dict:
    """Random LoRA weights on the tiny text encoder's first-layer attention projections, named
    as files name them (`text_model.`, which transformers 5's CLIPTextModel no longer has)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        f"text_encoder.text_model.encoder.layers.0.self_attn.{name}": (
            0.3 * torch.randn(rank, 32, generator=generator),
            0.3 * torch.randn(32, rank, generator=generator),
        )
        for name in ("q_proj", "v_proj", "out_proj")  # diffusers reads kohya's only with out_proj
    }


def _peft_tensors(weights: dict) -> dict[str, torch.Tensor]:
    """peft names under the component (`unet.` unless the layer names `text_encoder.`)."""
    return {
        f"{_component(name)}{name}.lora_{part}.weight": tensor
        for name, (down, up) in weights.items()
        for part, tensor in (("A", down), ("B", up))
    }


def _peft_file(path: Path, weights: dict) -> Path:
    save_file(_peft_tensors(weights), path)
    return path


def _component(name: str) -> str:
    return "" if name.startswith("text_encoder.") else "unet."


def _kohya_file(path: Path, weights: dict, alpha: float, alternate: bool = False) -> Path:
    """kohya names: `lora_unet_<layer>` (`lora_te_<layer>` for `text_encoder.` layers), each
    layer's `alpha`, or with `alternate` every other layer's `alpha` + 1."""
    tensors = {}
    for index, (name, (down, up)) in enumerate(weights.items()):
        if name.startswith("text_encoder."):
            key = "lora_te_" + name.removeprefix("text_encoder.").replace(".", "_")
        else:
            key = "lora_unet_" + name.replace(".", "_")
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
        tensors[f"{key}.alpha"] = torch.tensor(alpha + (index % 2 if alternate else 0))
    save_file(tensors, path)
    return path


def _motionlora_ckpt(path: Path, weights: dict) -> Path:
    """AnimateDiff's MotionLoRA layout: original motion-module names, `processor.to_q_lora`."""
    tensors = {}
    for name, (down, up) in weights.items():
        block, attn, projection = name.rsplit(".", 2)[0], *name.rsplit(".", 2)[1:]
        if projection == "0":  # to_out.0
            block, attn, projection = name.rsplit(".", 3)[0], name.rsplit(".", 3)[1], "to_out"
        block = block.replace(".motion_modules.0.", ".motion_modules.0.temporal_transformer.")
        index = int(attn.removeprefix("attn")) - 1
        key = f"{block}.attention_blocks.{index}.processor.{projection}_lora"
        tensors |= {f"{key}.down.weight": down, f"{key}.up.weight": up}
    torch.save({"state_dict": tensors}, path)
    return path


def _pipeline(base):
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        motion_adapter=None, scheduler=base.family.sampling_scheduler(base),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers_frames(base, files: dict[str, tuple[Path | dict, float]]) -> torch.Tensor:
    """Frames (1, F, H, W, 3) of `AnimateDiffPipeline` with each file loaded by
    `load_lora_weights` under its name, at its scale (`set_adapters`)."""
    pipe = _pipeline(base)
    for name, (file, _) in files.items():
        pipe.load_lora_weights(file if isinstance(file, dict) else str(file), adapter_name=name)
    pipe.set_adapters(list(files), [scale for _, scale in files.values()])
    try:
        return _frames_of(pipe, base, PROMPT)
    finally:
        pipe.unload_lora_weights()


def _frames_of(pipe, base, prompt: str) -> torch.Tensor:
    """Frames (1, F, H, W, 3) of a diffusers pipeline from the sampler's starting noise."""
    row = Row(prompt, seed=5, negative_prompt=NEGATIVE)
    start = initial_latents(base, [row], SETTINGS, 1.0)
    frames = pipe(
        prompt, num_inference_steps=SETTINGS.steps, height=8, width=8, num_frames=3,
        guidance_scale=SETTINGS.guidance_scale, negative_prompt=NEGATIVE, latents=start,
        output_type="pt",
    ).frames  # fmt: skip
    return frames.permute(0, 1, 3, 4, 2)


def _catalog_frames(
    catalog,
    refs: dict[str, float],
    rows: list[dict] | None = None,
    base: str = BASE,
    settings: SamplerSettings = SETTINGS,
) -> torch.Tensor:
    """Frames of the catalog's adapters as `compose` loads them (`load_weights`), one row per
    entry of `rows` (adapter refs → scales; default one row with `refs`)."""
    components, _ = open_base(catalog, base)
    injector = AdapterInjector(components.unet)
    loaded = {ref: load_adapter(catalog, ref, None, catalog.show(ref).kind) for ref in refs}
    for ref, adapter in loaded.items():
        if adapter.record.kind == "subject":
            install_subject(components, injector, adapter, ref)
        else:
            load_weights(components, injector, ref, adapter)
    text = PROMPT
    for adapter in loaded.values():
        if adapter.record.token:
            text = f"{text} {adapter.record.token}"
    rows = [Row(text, 5, NEGATIVE, scales) for scales in (rows or [refs])]
    try:
        return sample(components, rows, settings, injector)
    finally:
        injector.detach()


@pytest.fixture
def unet():
    from dvkit.models.tiny_animatediff import build_tiny_animatediff_base

    return build_tiny_animatediff_base().unet


def test_each_layout_imports_and_composes_as_diffusers_loads_it(cli, home, tmp_path, unet):
    from dvkit.catalog import Catalog

    spatial, temporal = _lora_weights(unet, False, 1), _lora_weights(unet, True, 2)
    files = {
        "peft": (_peft_file(tmp_path / "peft.safetensors", spatial | temporal | _text(3)), 0.7),
        "kohya": (_kohya_file(tmp_path / "kohya.safetensors", spatial | _text(1), alpha=1.0), 1.3),
    }
    for name, (file, _) in files.items():
        code, out, err = cli("--home", home, "import", file, "--kind", "motion", "--base", BASE,
                             "--name", name)  # fmt: skip
        assert code == 0, err
        assert f"imported as {name}@1" in out
    with Catalog.open(home) as catalog:
        record = catalog.show("kohya")
        assert (record.method, record.rank, record.alpha) == ("lora", 2, 1.0)
        assert {"to_q", "conv1", "q_proj"} <= set(record.placement)
        methods = dict(catalog._conn.execute("SELECT name, method FROM adapters").fetchall())
        assert methods == {"peft": "lora", "kohya": "lora"}
        base = open_base(catalog, BASE)[0]
        for name, (file, scale) in files.items():
            ours = _catalog_frames(catalog, {name: scale})
            theirs = _diffusers_frames(base, {name: (file, scale)})
            assert (ours - theirs).abs().max().item() <= 1e-4, name
        both = _catalog_frames(catalog, {"peft": 0.7, "kohya": 1.3})
        theirs = _diffusers_frames(base, files)
        assert (both - theirs).abs().max().item() <= 1e-4


def test_a_file_that_does_not_fit_is_refused_naming_how_many_keys_fit(cli, home, tmp_path, unet):
    weights = _lora_weights(unet, False, 1)
    tensors = _peft_tensors(weights)
    tensors["unet.down_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(2, 16)
    tensors["unet.down_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(16, 2)
    save_file(tensors, tmp_path / "other.safetensors")
    code, out, err = cli("--home", home, "import", tmp_path / "other.safetensors", "--kind",
                         "subject", "--base", BASE)  # fmt: skip
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    fits = 2 * len(weights)  # the file's A and B (not the alphas dvkit adds)
    assert f"{fits} of {fits + 2} LoRA tensors fit base {BASE}" in err
    code, out, _ = cli("--home", home, "list")
    assert "other" not in out


def _dreamvideo_file(catalog, tmp_path: Path, kind: str, seed: int) -> Path:
    """A DreamVideo adapter of `tiny-animatediff` with random (non-zero) weights."""
    components, record = open_base(catalog, BASE)
    generator = torch.Generator().manual_seed(seed)
    cond = 12 if kind == "motion" else None
    tensors = {
        key: 0.2 * torch.randn(value.shape, generator=generator)
        for key, value in create_adapter_state(components.unet, kind, cond_dim=cond).items()
    }
    name = f"dv{kind}"
    if kind == "subject":
        tensors[TOKEN_EMBEDDING_KEY] = torch.randn(1, 32, generator=generator)
    info = AdapterFileInfo(
        kind=kind, name=name, base=BASE, base_fingerprint=record.fingerprint,
        architecture="animatediff", token="<dvsubject>" if kind == "subject" else None,
        initializer="cat" if kind == "subject" else None,
        placement=["attn2"] if kind == "subject" else ["attn1", "attn2", "ff"],
    )  # fmt: skip
    path = tmp_path / f"{name}.safetensors"
    write_adapter_file(path, tensors, info)
    return path


def _embedding_file(path: Path, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    save_file({"<lorasubject>": torch.randn(1, 32, generator=generator)}, path)
    return path


@pytest.fixture
def four(cli, home, tmp_path, unet):
    """A catalog with a DreamVideo subject and motion, a subject LoRA paired with a learned
    token, and a MotionLoRA `.ckpt` imported as a motion."""
    from dvkit.catalog import Catalog

    with Catalog.open(home) as catalog:
        for kind, seed in (("subject", 3), ("motion", 4)):
            catalog.import_file(_dreamvideo_file(catalog, tmp_path, kind, seed))
    subject = _peft_file(tmp_path / "s.safetensors", _lora_weights(unet, False, 5))
    embedding = _embedding_file(tmp_path / "learned_embeds.safetensors", 6)
    code, _, err = cli("--home", home, "import", subject, "--kind", "subject", "--base", BASE,
                       "--name", "lorasubject", "--embedding", embedding)  # fmt: skip
    assert code == 0, err
    ckpt = _motionlora_ckpt(tmp_path / "mm_zoom.ckpt", _lora_weights(unet, True, 7))
    code, out, err = cli("--home", home, "import", ckpt, "--kind", "motion", "--base", BASE,
                         "--name", "zoom")  # fmt: skip
    assert code == 0, err
    return home


def test_motionlora_ckpt_imports_as_a_motion_and_composes_with_a_dreamvideo_subject(four):
    from dvkit.catalog import Catalog
    from dvkit.io.lora_layouts import read_lora

    with Catalog.open(four) as catalog:
        zoom = catalog.show("zoom")
        assert (zoom.kind, zoom.method, zoom.training["layout"]) == ("motion", "lora", "motionlora")
        assert catalog.show("lorasubject").token == "<lorasubject>"
        together = _catalog_frames(catalog, {"dvsubject": 1.0, "zoom": 0.8})
        alone = _catalog_frames(catalog, {"dvsubject": 1.0, "zoom": 0.0})
        assert (together - alone).abs().max().item() > 1e-3
        # the same weights in diffusers' names, loaded by diffusers on the subject's frames
        base = open_base(catalog, BASE)[0]
    tensors = read_lora(Path(four).parent / "mm_zoom.ckpt", type(_pipeline(base))).tensors
    peft = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    assert len(peft) == 2 * len(_layers(base.unet, True))


def test_grid_of_dreamvideo_and_lora_subjects_and_motions_batched_equals_one_at_a_time(four):
    from dvkit.catalog import Catalog
    from dvkit.evaluate.grid import bench

    pairs = [
        {s: 1.0, m: scale}
        for s in ("dvsubject", "lorasubject")
        for m, scale in (("dvmotion", 1.0), ("zoom", 0.6))
    ]
    with Catalog.open(four) as catalog:
        refs = {"dvsubject": 1.0, "lorasubject": 1.0, "dvmotion": 1.0, "zoom": 0.6}
        batched = _catalog_frames(catalog, refs, pairs)
        for index, pair in enumerate(pairs):
            alone = _catalog_frames(catalog, refs, [pair])
            assert (batched[index] - alone[0]).abs().max().item() <= 1e-5
        small = SamplerSettings(steps=2, frames=3, height=8, width=8)
        options = {"clip": "tiny", "dino": "tiny", "device": "cpu", "baselines": False}
        subjects, motions = (
            ["dvsubject", "lorasubject"],
            ["dvmotion", "zoom@1"],
        )  # as bench lists them
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = bench(
                catalog, subjects, motions, seeds=[1], batch_size=4, settings=small, **options
            )
        zero = [str(w.message) for w in caught if "no guidance image" in str(w.message)]
        assert zero and not any("zoom" in message for message in zero)  # dvmotion's only
        catalog._conn.execute("DELETE FROM evaluations")
        single = bench(
            catalog, subjects, motions, seeds=[1], batch_size=1, settings=small, **options
        )
    assert grid.generated == single.generated == 4
    # the imported motion has no caption: its prompt word is its name, not its `name@version`
    prompts = {row["prompt"] for row in grid.rows}
    assert "a <lorasubject> zoom" in prompts and not any("@" in p for p in prompts)
    by_cell = {row["cell"]: row["metrics"] for row in grid.rows}
    for row in single.rows:
        for name, value in row["metrics"].items():
            assert value == pytest.approx(by_cell[row["cell"]][name], abs=1e-5)


def test_exports_in_diffusers_and_comfyui_layouts_load_back_in_diffusers(cli, home, tmp_path, unet):
    from safetensors import safe_open

    from dvkit.catalog import Catalog

    spatial, temporal = _lora_weights(unet, False, 1), _lora_weights(unet, True, 2)
    sources = {
        "both": _peft_file(tmp_path / "both.safetensors", spatial | temporal | _text(3)),
        # per-layer alphas, which diffusers 0.42 reads wrongly from kohya files (its alpha
        # patterns keep `processor.to_q_lora.down.weight`) but reads from its own layout
        "kohya": _kohya_file(tmp_path / "kohya.safetensors", spatial | _text(1), 1.0, True),
        "flat": _kohya_file(tmp_path / "flat.safetensors", spatial | _text(4), 1.0),
    }
    for name, file in sources.items():
        code, _, err = cli("--home", home, "import", file, "--kind", "motion", "--base", BASE,
                           "--name", name)  # fmt: skip
        assert code == 0, err
    # diffusers 0.42 reads neither per-layer alphas nor motion modules from kohya names
    exports = [("both", "diffusers"), ("kohya", "diffusers"), ("flat", "comfyui")]
    with Catalog.open(home) as catalog:
        base = open_base(catalog, BASE)[0]
        for name, fmt in exports:
            out = tmp_path / f"{name}-{fmt}.safetensors"
            code, _, err = cli("--home", home, "export", name, "--out", out, "--format", fmt)
            assert code == 0, err
            with safe_open(out, "pt") as handle:
                meta, keys = handle.metadata(), list(handle.keys())
            assert meta["modelspec.architecture"] == "animatediff/lora"
            assert meta["modelspec.title"] == name
            assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys) == (fmt == "comfyui")
            assert any(".text_model." in k or "_text_model_" in k for k in keys)
            ours = _catalog_frames(catalog, {name: 0.9})
            theirs = _diffusers_frames(base, {name: (out, 0.9)})
            assert (ours - theirs).abs().max().item() <= 1e-4, fmt
    code, _, err = cli("--home", home, "export", "kohya", "--out", tmp_path / "k.safetensors",
                       "--format", "comfyui")  # fmt: skip
    assert code == 0, err
    for exported, name in (("both-diffusers", "both"), ("k", "kohya")):
        file = tmp_path / f"{exported}.safetensors"
        code, _, err = cli("--home", home, "import", file, "--kind", "motion", "--base", BASE,
                           "--name", f"{name}-again")  # fmt: skip
        assert code == 0, err
    with Catalog.open(home) as catalog:
        for name in ("both", "kohya"):  # the same weights back, alphas and all
            assert catalog.show(f"{name}-again").weights_hash == catalog.show(name).weights_hash
        assert catalog.show("kohya").alpha is None  # its layers' alphas differ
        tensors = load_adapter(catalog, "kohya", None, "motion").tensors.adapters
    alphas = [float(value) for key, value in tensors.items() if key.endswith(".alpha")]
    assert sorted(set(alphas)) == [1.0, 2.0]


def test_into_base_folder_loads_with_the_pipeline_and_samples_what_dvkit_composes(
    four, cli, tmp_path, fused_pipeline
):
    from diffusers import AnimateDiffPipeline

    from dvkit.catalog import Catalog

    pipe = fused_pipeline(four, AnimateDiffPipeline, "lorasubject", "zoom", (0.8, 1.2))
    with Catalog.open(four) as catalog:
        ours = _catalog_frames(catalog, {"lorasubject": 0.8, "zoom": 1.2})
        base = open_base(catalog, BASE)[0]
    theirs = _frames_of(pipe, base, f"{PROMPT} <lorasubject>")
    assert (ours - theirs).abs().max().item() <= 1e-4
    code, _, err = cli("--home", four, "export", "--merged", "--into-base", tmp_path / "no",
                       "--subject", "dvsubject")  # fmt: skip
    assert code == 1 and err.count("\n") == 1
    assert "non-linear" in err and "cannot be fused" in err
    assert not (tmp_path / "no").exists()
    code, _, err = cli("--home", four, "export", "dvmotion", "--out", tmp_path / "x.safetensors",
                       "--format", "diffusers")  # fmt: skip
    assert code == 1 and "only LoRAs export to the diffusers layout" in err


def test_subject_lora_export_carries_its_token_for_diffusers(four, cli, tmp_path):
    from safetensors import safe_open

    from dvkit.catalog import Catalog

    out = tmp_path / "subject.safetensors"
    code, printed, err = cli("--home", four, "export", "lorasubject", "--out", out, "--format",
                             "diffusers")  # fmt: skip
    assert code == 0, err
    assert f"its token's embedding to {tmp_path / 'subject.embedding.safetensors'}" in printed
    with safe_open(out, "pt") as handle:
        assert handle.metadata()["modelspec.trigger_phrase"] == "<lorasubject>"
    embedding = tmp_path / "subject.embedding.safetensors"
    with Catalog.open(four) as catalog:
        components = open_base(catalog, BASE)[0]
        ours = _catalog_frames(catalog, {"lorasubject": 0.9})
    pipe = _pipeline(components)
    pipe.load_textual_inversion(str(embedding))
    pipe.load_lora_weights(str(out), adapter_name="subject")
    pipe.set_adapters(["subject"], [0.9])
    theirs = _frames_of(pipe, components, f"{PROMPT} <lorasubject>")
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_training_lora_subjects_and_motions_registers_loras_the_grid_composes(
    catalog, train_loras
) -> None:
    from dvkit.evaluate.grid import bench

    cat, surf = train_loras(BASE, 8, 4, lora_rank=3, lora_alpha=6.0)
    assert (cat.method, cat.rank, cat.alpha, cat.token) == ("lora", 3, 6.0, "<cat>")
    assert (surf.method, surf.rank, surf.alpha) == ("lora", 4, 4.0)
    assert cat.placement == surf.placement == ["to_k", "to_out.0", "to_q", "to_v"]
    tensors = load_adapter(catalog, "surf", None, "motion").tensors.adapters
    ups = [value for key, value in tensors.items() if key.endswith("lora_B.weight")]
    assert all(".motion_modules." in key for key in tensors)
    assert max(up.abs().max().item() for up in ups) > 0  # trained away from B = 0
    subject_layers = load_adapter(catalog, "cat", None, "subject").tensors.adapters
    assert all(".attentions." in key for key in subject_layers)
    small = SamplerSettings(steps=2, frames=3, height=8, width=8)
    grid = bench(catalog, ["cat"], ["surf"], seeds=[0], settings=small, clip="tiny",
                 dino="tiny", device="cpu", baselines=False)  # fmt: skip
    assert grid.generated == 1 and grid.rows[0]["prompt"] == "a <cat> surf"


def test_compose_takes_lora_subjects_and_motions_at_their_scales(four, cli, tmp_path):
    from dvkit.catalog import Catalog
    from dvkit.generate.compose import compose

    small = {"steps": 2, "frames": 3, "size": 8, "record": False}
    with Catalog.open(four) as catalog:
        full = compose("lorasubject", "zoom", "a <lorasubject> zooming", catalog=catalog, **small)
        still = compose("lorasubject", "zoom", "a <lorasubject> zooming", catalog=catalog,
                        motion_scale=0.0, **small)  # fmt: skip
    assert full.frames.shape == (1, 3, 8, 8, 3)
    assert full.settings["motion_scale"] == 1.0 and still.settings["motion_scale"] == 0.0
    assert abs(full.frames.astype(int) - still.frames.astype(int)).max() > 0
    out = tmp_path / "video.gif"
    code, _, err = cli("--home", four, "compose", "--subject", "dvsubject", "--motion", "zoom",
                       "--steps", "2", "--frames", "3", "--size", "8", "--out", out)  # fmt: skip
    assert code == 0, err
    assert out.exists()


def test_modelscope_loras_import_and_compose_as_peft_applies_them(cli, home, tmp_path):
    """diffusers 0.42 loads no LoRA into ModelScope's `UNet3DConditionModel` (it lacks
    `load_lora_adapter`), so the reference is peft's own LoRA layers on that UNet; the LoRA
    fused into the base loads with `TextToVideoSDPipeline.from_pretrained` alone."""
    from diffusers import TextToVideoSDPipeline
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    from dvkit.catalog import Catalog
    from dvkit.models.tiny import build_tiny_base

    base = build_tiny_base()
    layers = _lora_weights(base.unet, False, 1) | _lora_weights(base.unet, True, 2)
    file = _kohya_file(tmp_path / "k.safetensors", layers, 1.0)
    code, _, err = cli("--home", home, "import", file, "--kind", "motion", "--base", "tiny")
    assert code == 0, err
    settings = SamplerSettings(steps=3, guidance_scale=7.5, frames=3, height=16, width=16)
    with Catalog.open(home) as catalog:
        ours = _catalog_frames(catalog, {"k": 0.8}, base="tiny", settings=settings)
    config = LoraConfig(r=2, lora_alpha=1.0, target_modules=sorted(layers))
    inject_adapter_in_model(config, base.unet, "k")
    state = {
        f"{name}.lora_{part}.weight": tensor
        for name, (down, up) in layers.items()
        for part, tensor in (("A", down), ("B", up))
    }
    set_peft_model_state_dict(base.unet, state, "k")
    for module in base.unet.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("k", 0.8)
    theirs = sample(base, [Row(PROMPT, 5, NEGATIVE)], settings)
    assert (theirs - ours).abs().max().item() <= 1e-4
    code, _, err = cli("--home", home, "export", "--merged", "--into-base", tmp_path / "fused",
                       "--motion", "k", "--motion-scale", "0.8")  # fmt: skip
    assert code == 0, err
    pipe = TextToVideoSDPipeline.from_pretrained(tmp_path / "fused")
    pipe.set_progress_bar_config(disable=True)
    fused = pipe(
        PROMPT, num_inference_steps=3, height=16, width=16, num_frames=3, guidance_scale=7.5,
        negative_prompt=NEGATIVE, generator=torch.Generator().manual_seed(5), output_type="np",
    ).frames  # fmt: skip
    assert (torch.as_tensor(fused) - ours).abs().max().item() <= 1e-4


def test_lora_mistakes_are_one_line_and_leave_the_catalog_alone(
    four, cli, tmp_path, unet, monkeypatch
):
    monkeypatch.delenv("DVKIT_BASE")
    subject = _peft_file(tmp_path / "s2.safetensors", _lora_weights(unet, False, 8))
    ckpt = tmp_path / "mm_zoom.ckpt"
    torch.save({"state_dict": {"x.to_q_lora.down.weight": torch.zeros(2, 2)}, "opt": object()},
               tmp_path / "unsafe.ckpt")  # fmt: skip
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    generic = _peft_file(
        tmp_path / "pytorch_lora_weights.safetensors", _lora_weights(unet, False, 8)
    )
    (tmp_path / "corrupt.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    nan = _lora_weights(unet, False, 9)
    first = next(iter(nan))
    nan[first] = (nan[first][0] * float("nan"), nan[first][1])
    _peft_file(tmp_path / "nan.safetensors", nan)
    own = load_file(tmp_path / "dvmotion.safetensors")
    own[next(iter(own))] += float("inf")
    info = read_adapter_info(tmp_path / "dvmotion.safetensors")
    write_adapter_file(tmp_path / "inf.safetensors", own, info)
    _, before, _ = cli("--home", four, "list", "--all")
    mistakes = [
        (("import", subject, "--base", BASE), "--kind subject or motion"),
        (("import", subject, "--kind", "motion"), "needs --base NAME"),
        (("import", generic, "--kind", "subject", "--base", BASE), "pass --name NAME"),
        (("import", subject, "--kind", "banana", "--base", BASE),
         "--kind 'banana': not a LoRA kind; choose subject or motion"),
        (("import", ckpt, "--kind", "subject", "--base", BASE), "mm_zoom.ckpt: a motion LoRA"),
        (("import", ckpt, "--kind", "motion", "--base", BASE, "--embedding", subject),
         "only for --kind subject"),
        (("import", tmp_path / "unsafe.ckpt", "--kind", "motion", "--base", BASE), "unsafe.ckpt"),
        (("import", tmp_path / "broken.safetensors", "--kind", "motion"), "broken.safetensors"),
        (("import", tmp_path / "nan.safetensors", "--kind", "subject", "--base", BASE),
         "nan.safetensors: 1 of 34 LoRA tensors hold NaN or infinite values"),
        (("import", tmp_path / "inf.safetensors"), "hold NaN or infinite values"),
        *(  # the file's own problem first, whatever the options
            (("import", tmp_path / "corrupt.safetensors", *options), "header length")
            for options in ((), ("--kind", "subject"), ("--kind", "subject", "--base", BASE))
        ),
        (("export", "zoom", "--out", tmp_path / "z.safetensors", "--format", "onnx"),
         "unknown export format"),
        (("export", "--merged", "--subject", "lorasubject", "--motion", "zoom", "--out",
          tmp_path / "m.safetensors", "--format", "comfyui"), "--format"),
        (("export", "--into-base", tmp_path / "b", "--subject", "lorasubject"), "add --merged"),
        (("export", "--merged", "--into-base", four, "--motion", "zoom"), "exists"),
    ]  # fmt: skip
    for args, expected in mistakes:
        code, _, err = cli("--home", four, *args)
        assert code != 0 and err.startswith("error:") and err.count("\n") == 1, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)
    assert cli("--home", four, "list", "--all")[1] == before
    assert not (tmp_path / "b").exists()
    lines = {line.split()[0]: line.split() for line in before.splitlines()[1:]}
    assert lines["zoom@1"][1:3] == ["motion", "LoRA"] and lines["dvmotion@1"][2] == "DV"
    assert all(len(line) <= 80 and "…" not in line for line in before.splitlines())
    code, shown, _ = cli("--home", four, "show", "zoom")
    assert code == 0 and "lora, rank 2" in shown
    assert "unet.motion_modules.attn1.to_q ×" in shown and "attn2.to_k" in shown
    code, _, err = cli("--home", four, "import", subject, "--kind", "subject", "--base", BASE,
                       "--name", "plain")  # fmt: skip
    assert code == 0, err  # a subject LoRA without a learned token
    code, _, err = cli("--home", four, "export", "--merged", "--subject", "plain", "--motion",
                       "zoom", "--out", tmp_path / "p.safetensors")  # fmt: skip
    assert code == 1 and "lacks the token embedding" in err and err.count("\n") == 1
    code, _, err = cli("--home", four, "compose", "--subject", "plain", "--motion", "zoom",
                       "--prompt", "a toy zooming", "--steps", "2", "--frames", "3", "--size",
                       "8", "--out", tmp_path / "plain.gif")  # fmt: skip
    assert code == 0 and "no guidance image" not in err, err  # a LoRA motion takes no image


def test_dvkit_lora_files_export_and_import_as_they_are(four, cli, tmp_path):
    from dvkit.catalog import Catalog

    out = tmp_path / "zoom.safetensors"
    assert cli("--home", four, "export", "zoom", "--out", out)[0] == 0
    Catalog.init(tmp_path / "other")
    code, text, err = cli("--home", tmp_path / "other", "import", out)
    assert code == 0, err
    with Catalog.open(four) as first, Catalog.open(tmp_path / "other") as second:
        ours, theirs = first.show("zoom"), second.show("zoom")
    assert (theirs.method, theirs.rank, theirs.kind) == ("lora", 2, "motion")
    assert theirs.weights_hash == ours.weights_hash


def test_merged_export_of_loras_composes_as_the_catalog_does(four, cli, tmp_path):
    from dvkit.catalog import Catalog
    from dvkit.generate.compose import compose

    out = tmp_path / "pair.safetensors"
    code, _, err = cli("--home", four, "export", "--merged", "--subject", "lorasubject",
                       "--motion", "zoom", "--motion-scale", "0.7", "--out", out)  # fmt: skip
    assert code == 0, err
    small = {"steps": 2, "frames": 3, "size": 8, "record": False, "seeds": [2]}
    with Catalog.open(four) as catalog:
        merged = compose(merged=out, catalog=catalog, **small)
        direct = compose("lorasubject", "zoom", catalog=catalog, motion_scale=0.7, **small)
    assert (merged.frames == direct.frames).all()


def test_a_second_text_encoder_or_a_dora_is_refused(cli, home, tmp_path, unet):
    weights = _lora_weights(unet, False, 1)
    tensors = _peft_tensors(weights)
    sdxl = dict(tensors)
    sdxl["text_encoder_2.layers.0.q_proj.lora_A.weight"] = torch.zeros(2, 32)
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    code, _, err = cli("--home", home, "import", tmp_path / "sdxl.safetensors", "--kind",
                       "motion", "--base", BASE)  # fmt: skip
    fits = len(tensors)
    assert code == 1 and f"{fits} of {fits + 1} LoRA tensors fit" in err
    assert "text_encoder_2.layers.0.q_proj" in err
    dora = dict(tensors)
    dora[next(iter(tensors)).replace("lora_A.weight", "lora_magnitude_vector")] = torch.ones(16)
    save_file(dora, tmp_path / "dora.safetensors")
    code, _, err = cli("--home", home, "import", tmp_path / "dora.safetensors", "--kind",
                       "motion", "--base", BASE)  # fmt: skip
    assert code == 1 and "a DoRA" in err and err.count("\n") == 1


TRAINED = {"adapter": "lora", "lora_rank": 2, "lora_alpha": 3.0, "seed": 7, "resolution": 8}


def _train_lora_subject(folder: Path, reporter=None, resume: bool = False):
    """A subject LoRA trained through peft on a fresh tiny-animatediff (2 + 4 steps, a
    checkpoint every 2, step 2 kept), and the base it trained on."""
    from dvkit.models.tiny_animatediff import build_tiny_animatediff_base
    from dvkit.train.loop import SilentReporter
    from dvkit.train.settings import QUICK, SubjectSettings
    from dvkit.train.subject import train_subject

    settings = SubjectSettings(**{
        **QUICK["subject"], **TRAINED, "token": "<cat>", "initializer": "cat",
        "inversion_steps": 2, "identity_steps": 4, "identity_lr": 0.05, "checkpoint_every": 2,
        "keep_steps": [2],
    })  # fmt: skip
    base = build_tiny_animatediff_base()
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    result = train_subject(base, pixels, None, settings, torch.device("cpu"), torch.float32,
                           folder, reporter or SilentReporter(), resume=resume)  # fmt: skip
    return result, base


@pytest.mark.slow
def test_trained_loras_compose_through_hooks_as_peft_runs_them(tmp_path) -> None:
    """A subject and a motion LoRA trained through peft: dvkit's hooks (compose) give the
    frames of the base with peft's layers holding the same weights; training leaves the base's
    state dict as it was and no peft config behind."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from dvkit.models.image_encoder import load_image_encoder
    from dvkit.models.lora import LoraWeights
    from dvkit.models.textual_inversion import apply_token_embedding
    from dvkit.models.tiny_animatediff import build_tiny_animatediff_base
    from dvkit.train.loop import SilentReporter
    from dvkit.train.motion import train_motion
    from dvkit.train.settings import QUICK, MotionSettings

    subject, trained_on = _train_lora_subject(tmp_path / "subject")
    fresh = build_tiny_animatediff_base().unet.state_dict()
    after = trained_on.unet.state_dict()
    assert list(after) == list(fresh) and all(torch.equal(after[k], fresh[k]) for k in fresh)
    assert not hasattr(trained_on.unet, "peft_config")
    clips = torch.rand(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    settings = MotionSettings(**{**QUICK["motion"], **TRAINED, "steps": 4, "lr": 0.05,
                                 "frames": 4, "image_encoder": "tiny"})  # fmt: skip
    motion = train_motion(build_tiny_animatediff_base(), clips, load_image_encoder("tiny"),
                          settings, torch.device("cpu"), torch.float32, tmp_path / "motion",
                          SilentReporter())  # fmt: skip
    loras = {"cat": ("subject", subject.identity), "surf": ("motion", motion.tensors)}
    assert all(float(t) == 3.0 for _, ts in loras.values() for k, t in ts.items()
               if k.endswith(".alpha"))  # fmt: skip
    prompt = f"{PROMPT} <cat>"

    hooked = build_tiny_animatediff_base()
    apply_token_embedding(hooked.tokenizer, hooked.text_encoder, "<cat>", subject.embedding)
    injector = AdapterInjector(hooked.unet)
    for name, (kind, tensors) in loras.items():
        injector.load_lora(name, LoraWeights.from_tensors(kind, tensors, {"unet": hooked.unet}))
    row = Row(prompt, 5, NEGATIVE, {"cat": 1.0, "surf": 1.0})
    ours = sample(hooked, [row], SETTINGS, injector)

    wrapped = build_tiny_animatediff_base()
    apply_token_embedding(wrapped.tokenizer, wrapped.text_encoder, "<cat>", subject.embedding)
    bare = sample(wrapped, [Row(prompt, 5, NEGATIVE)], SETTINGS, AdapterInjector(wrapped.unet))
    weights = {  # both LoRAs in one peft adapter (they share rank and alpha)
        k.removeprefix("unet."): v
        for _, tensors in loras.values()
        for k, v in tensors.items()
        if "lora_" in k
    }
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in weights})
    config = LoraConfig(r=2, lora_alpha=3.0, target_modules=layers)
    inject_adapter_in_model(config, wrapped.unet, adapter_name="trained")
    set_peft_model_state_dict(wrapped.unet, weights, adapter_name="trained")
    theirs = sample(wrapped, [Row(prompt, 5, NEGATIVE)], SETTINGS, AdapterInjector(wrapped.unet))
    assert (ours - bare).abs().max().item() > 1e-2  # the LoRAs do change the frames
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_lora_training_is_reproducible_and_resumes_to_the_same_weights(tmp_path) -> None:
    from test_training import InterruptAt

    from dvkit.train.loop import TrainingInterrupted

    straight, _ = _train_lora_subject(tmp_path / "a")
    again, _ = _train_lora_subject(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        _train_lora_subject(tmp_path / "c", InterruptAt(4))  # inside the LoRA's stage
    resumed, base = _train_lora_subject(tmp_path / "c", resume=True)
    for other in (again, resumed):
        assert straight.identity.keys() == other.identity.keys()
        assert all(torch.equal(v, other.identity[k]) for k, v in straight.identity.items())
        assert all(torch.equal(v, other.kept[2][k]) for k, v in straight.kept[2].items())
    assert {k.rsplit(".", 1)[-1] for k in straight.kept[2]} == {"weight", "alpha"}
    assert not hasattr(base.unet, "peft_config")


def test_base_pipeline_is_the_familys_diffusers_pipeline_of_a_built_in_base(home) -> None:
    from diffusers import AnimateDiffPipeline

    import dvkit
    from dvkit.catalog import Catalog

    with Catalog.open(home) as catalog:
        pipe = dvkit.base_pipeline(catalog, BASE)
        assert isinstance(pipe, AnimateDiffPipeline)
        unet = open_base(catalog, BASE)[0].unet
    assert pipe.unet.state_dict().keys() == unet.state_dict().keys()
