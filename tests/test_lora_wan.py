"""LoRAs on `tiny-wan`: files in the layouts Wan trainers write (diffusers/finetrainers,
musubi-tuner's kohya names, ComfyUI / ai-toolkit / diffusion-pipe original names) imported and
composed as `WanPipeline.load_lora_weights` loads them; exports diffusers reads back; a fused
base `WanPipeline.from_pretrained` samples alike; trained LoRAs' targets; two-expert refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dvkit.bases import open_base
from dvkit.catalog import Catalog
from dvkit.generate.compose import install_subject, load_adapter, load_weights
from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.io.lora_layouts import WAN_ORIGINAL
from dvkit.models.injection import AdapterInjector

BASE = "tiny-wan"
SETTINGS = SamplerSettings(steps=3, guidance_scale=5.0, frames=5, height=32, width=32)
PROMPT, NEGATIVE, SEED = "a cat surfing", "a dog", 3


def _weights(seed: int, rank: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A, B) for every linear layer of tiny-wan's two blocks (all that musubi-tuner's
    layout names), by diffusers name."""
    from dvkit.models.tiny_wan import build_tiny_wan_base

    unet = build_tiny_wan_base().unet
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for block in range(len(unet.blocks)):
        for name, layer in unet.blocks[block].named_modules():
            if name not in WAN_ORIGINAL:
                continue
            weights[f"blocks.{block}.{name}"] = (
                0.3 * torch.randn(rank, layer.in_features, generator=generator),
                0.3 * torch.randn(layer.out_features, rank, generator=generator),
            )
    return weights


def _original(name: str) -> str:
    block, rest = name.split(".", 2)[1], name.split(".", 2)[2]
    return f"blocks.{block}.{WAN_ORIGINAL[rest]}"


def _write(path: Path, layout: str, weights: dict, alpha: float | None = None) -> Path:
    """A LoRA file in `layout`: diffusers (`transformer.…lora_A`), musubi (`lora_unet_blocks_N_…
    lora_down` + `.alpha`), comfyui (`diffusion_model.…lora_A`, ai-toolkit / diffusion-pipe) or
    comfyui-kohya (`diffusion_model.…lora_down` + `.alpha`)."""
    tensors = {}
    for name, (down, up) in weights.items():
        if layout == "diffusers":
            key, parts = f"transformer.{name}", ("lora_A", "lora_B")
        elif layout == "musubi":
            key, parts = "lora_unet_" + _original(name).replace(".", "_"), ("lora_down", "lora_up")
        else:
            kohya = layout == "comfyui-kohya"
            key = f"diffusion_model.{_original(name)}"
            parts = ("lora_down", "lora_up") if kohya else ("lora_A", "lora_B")
        tensors |= {f"{key}.{parts[0]}.weight": down, f"{key}.{parts[1]}.weight": up}
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def _pipeline(base):
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
        scheduler=base.family.sampling_scheduler(base), transformer=base.unet,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames_of(pipe, base, prompt: str = PROMPT) -> torch.Tensor:
    """Frames (1, F, H, W, 3) of a `WanPipeline` for the sampler's seed and settings."""
    frames = pipe(
        prompt, negative_prompt=NEGATIVE, height=32, width=32, num_frames=5,
        num_inference_steps=SETTINGS.steps, guidance_scale=SETTINGS.guidance_scale,
        generator=torch.Generator().manual_seed(SEED), output_type="pt",
        max_sequence_length=base.tokenizer.model_max_length,
    ).frames  # fmt: skip
    return frames.permute(0, 1, 3, 4, 2)


def _diffusers_frames(base, file: Path, scale: float) -> torch.Tensor:
    pipe = _pipeline(base)
    pipe.load_lora_weights(str(file), adapter_name="lora")
    pipe.set_adapters(["lora"], [scale])
    try:
        return _frames_of(pipe, base)
    finally:
        pipe.unload_lora_weights()


def _catalog_frames(catalog, refs: dict[str, float]) -> torch.Tensor:
    """Frames of the catalog's adapters as compose loads them, one row at the refs' scales."""
    components, _ = open_base(catalog, BASE)
    injector = AdapterInjector(components.unet)
    text = PROMPT
    for ref in refs:
        adapter = load_adapter(catalog, ref, None, catalog.show(ref).kind)
        if adapter.record.kind == "subject":
            install_subject(components, injector, adapter, ref)
            text = f"{text} {adapter.record.token}"
        else:
            load_weights(components, injector, ref, adapter)
    try:
        return sample(components, [Row(text, SEED, NEGATIVE, refs)], SETTINGS, injector)
    finally:
        injector.detach()


def _import(cli, home, file: Path, name: str, *extra: str | Path) -> None:
    code, out, err = cli("--home", home, "import", file, "--kind", "motion", "--base", BASE,
                         "--name", name, *extra)  # fmt: skip
    assert code == 0, err
    assert f"imported as {name}@1" in out


@pytest.mark.parametrize(
    ("layout", "alpha", "shown"),
    [("diffusers", None, "diffusers"), ("musubi", 1.0, "kohya"), ("comfyui", None, "comfyui"),
     ("comfyui-kohya", 3.0, "comfyui")],
)  # fmt: skip
def test_each_wan_layout_imports_and_composes_as_wan_pipeline_loads_it(
    cli, home, tmp_path, layout, alpha, shown
) -> None:
    file = _write(tmp_path / f"{layout}.safetensors", layout, _weights(1), alpha)
    _import(cli, home, file, "lora")
    with Catalog.open(home) as catalog:
        record = catalog.show("lora")
        assert record.method == "lora" and record.rank == 2
        assert record.training["layout"] == shown
        ours = _catalog_frames(catalog, {"lora": 0.8})
        base = open_base(catalog, BASE)[0]
        bare = _catalog_frames(catalog, {"lora": 0.0})
    theirs = _diffusers_frames(base, file, 0.8)
    assert (ours - bare).abs().max().item() > 1e-2
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_wan_exports_load_back_in_wan_pipeline_and_import_again(cli, home, tmp_path) -> None:
    from safetensors import safe_open

    _import(cli, home, _write(tmp_path / "m.safetensors", "musubi", _weights(2), 4.0), "lora")
    with Catalog.open(home) as catalog:
        base = open_base(catalog, BASE)[0]
        ours = _catalog_frames(catalog, {"lora": 1.1})
    for fmt, prefix in (("diffusers", "transformer.blocks."), ("comfyui", "diffusion_model.")):
        out = tmp_path / f"out-{fmt}.safetensors"
        code, _, err = cli("--home", home, "export", "lora", "--out", out, "--format", fmt)
        assert code == 0, err
        with safe_open(out, "pt") as handle:
            assert handle.metadata()["modelspec.architecture"] == "wan/lora"
            assert all(key.startswith(prefix) for key in handle.keys())
        theirs = _diffusers_frames(base, out, 1.1)
        assert (ours - theirs).abs().max().item() <= 1e-4, fmt
        _import(cli, home, out, f"again-{fmt}")
    with Catalog.open(home) as catalog:
        for fmt in ("diffusers", "comfyui"):
            again = _catalog_frames(catalog, {f"again-{fmt}": 1.1})
            assert (ours - again).abs().max().item() <= 1e-5, fmt


def test_wan_into_base_loads_with_wan_pipeline_and_samples_what_dvkit_composes(
    cli, home, tmp_path, fused_pipeline
) -> None:
    from diffusers import WanPipeline

    embedding = tmp_path / "toy.safetensors"
    save_file({"<toy>": torch.randn(1, 32, generator=torch.Generator().manual_seed(5))}, embedding)
    subject = {k: v for k, v in _weights(3).items() if ".attn2." in k}
    file = _write(tmp_path / "subject.safetensors", "comfyui", subject)
    code, _, err = cli("--home", home, "import", file, "--kind", "subject", "--base", BASE,
                       "--name", "toy", "--embedding", embedding)  # fmt: skip
    assert code == 0, err
    _import(cli, home, _write(tmp_path / "m.safetensors", "diffusers", _weights(4)), "zoom")
    pipe = fused_pipeline(home, WanPipeline, "toy", "zoom", (0.7, 1.2))
    with Catalog.open(home) as catalog:
        ours = _catalog_frames(catalog, {"toy": 0.7, "zoom": 1.2})
        base = open_base(catalog, BASE)[0]
    theirs = _frames_of(pipe, base, f"{PROMPT} <toy>")
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_trained_wan_loras_target_cross_attention_for_subjects_self_attention_for_motions(
    catalog, train_loras
) -> None:
    cat, surf = train_loras(BASE, 32, 5)
    subject = load_adapter(catalog, "cat", None, "subject").tensors.adapters
    motion = load_adapter(catalog, "surf", None, "motion").tensors.adapters
    assert {k.split(".")[3] for k in subject} == {"attn2"} and len(subject) == 2 * 4 * 3
    assert {k.split(".")[3] for k in motion} == {"attn1"} and len(motion) == 2 * 4 * 3
    assert cat.placement == surf.placement == ["to_k", "to_out.0", "to_q", "to_v"]
    assert not hasattr(open_base(catalog, BASE)[0].unet, "peft_config")


def test_wan_lora_mistakes_are_one_line_and_leave_the_catalog_alone(cli, home, tmp_path) -> None:
    def refused(*args: str | Path) -> str:
        code, _, err = cli("--home", home, *args)
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    weights = _weights(1)
    file = _write(tmp_path / "d.safetensors", "diffusers", weights)
    err = refused("import", file, "--kind", "motion", "--base", "tiny-wan22")
    assert "has two experts" in err and "one-denoiser bases only" in err
    partial = dict(list(weights.items())[1:])  # musubi-tuner writes every block layer
    musubi = _write(tmp_path / "partial.safetensors", "musubi", partial, 1.0)
    err = refused("import", musubi, "--kind", "motion", "--base", BASE)
    assert "partial.safetensors: kohya LoRA that WanPipeline.lora_state_dict cannot read" in err
    assert "diffusers' reader needs every layer of each block" in err
    unet_kohya = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{unet_kohya}.lora_down.weight": torch.zeros(2, 16),
               f"{unet_kohya}.lora_up.weight": torch.zeros(16, 2)},
              tmp_path / "unet.safetensors")  # fmt: skip
    err = refused("import", tmp_path / "unet.safetensors", "--kind", "motion", "--base", BASE)
    assert f"not a Wan layout diffusers reads (first: {unet_kohya}.lora_down.weight)" in err
    down, up = (t.clone() for t in weights["blocks.0.attn1.to_q"])
    outside = {f"transformer.{k}.lora_{p}.weight": t for k, w in weights.items()
               for p, t in zip("AB", w, strict=True)}  # fmt: skip
    outside |= {"transformer.proj_out.lora_A.weight": down,  # a layer outside the blocks
                "transformer.proj_out.lora_B.weight": up[:16]}  # fmt: skip
    save_file(outside, tmp_path / "outside.safetensors")
    _import(cli, home, tmp_path / "outside.safetensors", "outside")
    err = refused("export", "outside", "--out", tmp_path / "o.safetensors", "--format", "comfyui")
    assert "unet.proj_out: no ComfyUI (Wan original) name" in err
    assert not (tmp_path / "o.safetensors").exists()
    with Catalog.open(home) as catalog:
        assert [record.name for record in catalog.list()] == ["outside"]
