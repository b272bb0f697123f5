"""The `wan` family on `tiny-wan`: the sampler against `WanPipeline`, adapter sites and their
selection, the learned token in UMT5, the flow-matching objective, training, composing across
families, and adding bases from folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.bases import add_base, open_base
from dvkit.catalog import Catalog
from dvkit.errors import DvkitError, DvkitWarning
from dvkit.families import family
from dvkit.families.base import SizeError
from dvkit.generate.compose import compose
from dvkit.generate.sampler import Row, SamplerSettings, sample
from dvkit.io.adapter_file import read_adapter_info
from dvkit.io.export import export_adapter
from dvkit.models.injection import AdapterInjector, adapter_slots, create_adapter_state
from dvkit.models.textual_inversion import TrainableRows, add_placeholder_tokens
from dvkit.models.tiny_wan import build_tiny_wan_base
from dvkit.train.api import add_motion, add_subject

SETTINGS = SamplerSettings(steps=4, guidance_scale=5.0, frames=5, height=32, width=32)


@pytest.fixture(scope="module")
def base():
    return build_tiny_wan_base()


def _pipeline(base):
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
        scheduler=base.family.sampling_scheduler(base), transformer=base.unet,
        transformer_2=base.unet_2, boundary_ratio=base.boundary_ratio,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sampler_matches_wan_pipeline(base) -> None:
    expected = _pipeline(base)(
        "a cat  surfing", negative_prompt="a dog", height=32, width=32, num_frames=5,
        num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
        output_type="pt", max_sequence_length=base.tokenizer.model_max_length,
    ).frames  # (1, F, 3, H, W)  # fmt: skip
    ours = sample(base, [Row("a cat  surfing", seed=3, negative_prompt="a dog")], SETTINGS)
    assert ours.shape == (1, 5, 32, 32, 3)
    assert expected.std() > 0.05
    assert (expected.permute(0, 1, 3, 4, 2) - ours).abs().max().item() <= 1e-5


def test_frame_counts_and_sizes_the_wan_vae_takes(base) -> None:
    wan = family("wan")
    assert wan.latent_shape(base, 81, 480, 832) == (4, 21, 60, 104)
    assert wan.check_frames(1) == 1 and wan.check_frames(9) == 9
    with pytest.raises(SizeError, match=r"^frames 16 is not .*4k \+ 1.*: use 13 or 17$"):
        wan.latent_shape(base, 16, 32, 32)
    with pytest.raises(SizeError, match="^--frames 3 .*: use 1 or 5$"):
        wan.check_frames(3, "--frames")
    with pytest.raises(SizeError, match="^size 40 is not a multiple of 16, .*: use 32 or 48$"):
        wan.latent_shape(base, 5, 40, 32)
    defaults = wan.defaults
    assert (defaults.frames, defaults.fps, defaults.steps, defaults.guidance) == (81, 16, 50, 5.0)
    assert base.scheduler.config.flow_shift == 3.0


def test_adapters_sit_in_every_block(base) -> None:
    blocks = [f"blocks.{i}" for i in range(len(base.unet.blocks))]
    subject = adapter_slots(base.unet, "subject")
    motion = adapter_slots(base.unet, "motion")
    assert [(s.block, s.slot, s.channels) for s in subject] == [(b, "attn2", 24) for b in blocks]
    assert [(s.block, s.slot) for s in motion] == [(b, s) for b in blocks for s in ("attn1", "ff")]


def _random_adapters(unet, kind, seed, **extra):
    fresh = create_adapter_state(unet, kind, seed=seed, **extra)
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in fresh.items()}


def test_scale_zero_equals_no_adapters_and_rows_batch_as_alone(base) -> None:
    injector = AdapterInjector(base.unet)
    injector.load("cat", "subject", _random_adapters(base.unet, "subject", 1))
    injector.load("surf", "motion", _random_adapters(base.unet, "motion", 2, cond_dim=8))
    embed = torch.randn(8)
    rows = [
        Row("a cat", seed=1, adapters={"cat": 0.0, "surf": 0.0}, image_embed=embed),
        Row("a cat", seed=2, adapters={"cat": 1.0}),
        Row("a dog", seed=3, adapters={"surf": 0.7}, image_embed=embed),
        Row("a dog", seed=4, adapters={"cat": 0.5, "surf": 1.0}, image_embed=embed),
    ]
    bare = sample(base, [Row("a cat", seed=1)], SETTINGS)
    together = sample(base, rows, SETTINGS, injector)
    alone = torch.cat([sample(base, [row], SETTINGS, injector) for row in rows])
    assert (together[:1] - bare).abs().max().item() <= 1e-5
    assert (together - alone).abs().max().item() <= 1e-5
    assert (together[1] - sample(base, [Row("a cat", seed=2)], SETTINGS)).abs().max() > 1e-3
    injector.detach()
    assert torch.equal(sample(base, [Row("a cat", seed=1)], SETTINGS), bare)


EMBEDS = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))


def _block_run(base, tensors, slot, zero_channel=None):
    """Run the transformer once with the motion adapter of `tensors` (only its `slot` adapters
    nonzero) and once without; returns what block 0 showed: the adapter's input and output, and
    the tensor that should differ by exactly A(h) between the runs. With `zero_channel`, block
    0's gate of `slot` is exactly 0 in that channel."""
    only = {
        k: (v if f".{slot}_adapter." in k or not k.split(".")[-2] == "up" else torch.zeros_like(v))
        for k, v in tensors.items()
    }
    injector = AdapterInjector(base.unet)
    injector.load("surf", "motion", only)
    block = base.unet.blocks[0]
    adapter = injector.get("surf").adapter(f"blocks.0.{slot}_adapter")
    seen: dict[str, list[torch.Tensor]] = {"h": [], "a": [], "after": []}
    norm = block.norm1 if slot == "attn1" else block.norm3
    hooks = [
        norm.register_forward_pre_hook(lambda _, args: seen["h"].append(args[0])),
        adapter.register_forward_hook(lambda _, args, out: seen["a"].append(out)),
    ]
    if slot == "attn1":  # h after the self-attention's residual add is norm2's input
        hooks.append(block.norm2.register_forward_pre_hook(
            lambda _, args: seen["after"].append(args[0])))  # fmt: skip
    else:  # the ffn is the block's last residual add
        hooks.append(block.register_forward_hook(lambda _, a, out: seen["after"].append(out)))
    if zero_channel is not None:  # temb's gate row := −scale_shift_table's, before all hooks
        row = 2 if slot == "attn1" else 5

        def zero_gate(module, args):
            temb = args[2].clone()
            temb[:, row, zero_channel] = -module.scale_shift_table[0, row, zero_channel]
            return (*args[:2], temb, *args[3:])

        hooks.append(block.register_forward_pre_hook(zero_gate, prepend=True))
    text = base.family.encode_text(base, ["a cat", "a dog"]).detach()
    latents = torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            injector.set_active({"surf": 1.0}, EMBEDS)
            base.family.predict(base, latents, torch.tensor(700.0), text)
            injector.clear()
            base.family.predict(base, latents, torch.tensor(700.0), text)
    finally:
        for hook in hooks:
            hook.remove()
        injector.detach()
    expected = adapter(seen["h"][0], EMBEDS)  # one embedding per video, over all its tokens
    assert torch.allclose(seen["a"][0], expected, atol=1e-6)
    return seen["h"][0], seen["a"][0], seen["after"][0] - seen["after"][1]


@pytest.mark.parametrize("slot", ["attn1", "ff"])
def test_motion_adapters_act_outside_the_gate_on_every_token(base, slot) -> None:
    tensors = _random_adapters(base.unet, "motion", 2, cond_dim=8)
    h, a, difference = _block_run(base, tensors, slot)
    tokens = 2 * 2 * 2  # latent frames × patches per frame
    assert h.shape == a.shape == (2, tokens, 24)
    assert a.abs().mean() > 0.1
    # the block's hidden states gain exactly A(h), not gate·A(h)
    assert (difference - a).abs().max().item() <= 1e-5


@pytest.mark.parametrize("slot", ["attn1", "ff"])
def test_a_zero_gate_gives_finite_outputs_and_exact_adapters_elsewhere(base, slot) -> None:
    tensors = _random_adapters(base.unet, "motion", 2, cond_dim=8)
    h, a, difference = _block_run(base, tensors, slot, zero_channel=5)
    assert torch.isfinite(difference).all() and a[..., 5].abs().max() > 0.1
    assert difference[..., 5].abs().max().item() == 0.0  # gate 0: the block adds 0·A/ε
    others = [c for c in range(24) if c != 5]
    assert (difference[..., others] - a[..., others]).abs().max().item() <= 1e-5


def test_learned_token_changes_only_its_own_row_of_the_shared_embedding() -> None:
    base = build_tiny_wan_base()
    encoder, tokenizer = base.text_encoder, base.tokenizer
    rows_before = encoder.get_input_embeddings().weight.shape[0]
    (token,) = add_placeholder_tokens(tokenizer, encoder, "<sks>", "cat")
    assert token < rows_before == encoder.get_input_embeddings().weight.shape[0]  # a spare row
    before = encoder.get_input_embeddings().weight.detach().clone()
    trainable = TrainableRows(encoder, [token])
    ids = base.family.tokenize(base, ["a <sks> surfing"])
    optimizer = torch.optim.SGD([trainable.rows], lr=1.0)
    loss = base.family.embed_ids(base, ids).square().mean()
    loss.backward()
    optimizer.step()
    trainable.commit()
    after = encoder.get_input_embeddings().weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [token]


def test_flow_matching_objective(base) -> None:
    latents = torch.randn(4096, 1, 1, 1, 1)
    noisy, target, timesteps = base.family.add_noise(
        base, latents, torch.Generator().manual_seed(0), 0.0
    )
    sigma = timesteps / 1000
    assert torch.allclose(noisy + sigma.view(-1, 1, 1, 1, 1) * 0, noisy)
    noise = target + latents
    s = sigma.view(-1, 1, 1, 1, 1)
    assert torch.allclose(noisy, (1 - s) * latents + s * noise, atol=1e-6)
    # shift 3 moves σ up: u uniform, σ = 3u / (1 + 2u), so P(σ < 0.5) = P(u < 1/4)
    assert abs((sigma < 0.5).float().mean().item() - 0.25) < 0.03


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype("uint8")).save(
            folder / f"{index}.png"
        )
    return folder


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    clips = [folder / f"{index}" for index in range(2)]
    for clip in clips:
        clip.mkdir()
        for frame in range(5):
            pixels = (rng.random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(clip / f"{frame}.png")
    return clips


def test_training_on_wan_composing_export_and_refusal_across_families(
    catalog, images, videos, tmp_path
) -> None:
    fast = {"preset": "quick", "resolution": 32, "checkpoint_every": 2}
    cat = add_subject("cat", [images], catalog=catalog, base="tiny-wan",
                      inversion_steps=2, identity_steps=2, **fast)  # fmt: skip
    surf = add_motion("surf", videos, catalog=catalog, base="tiny-wan", steps=2, frames=5,
                      memory="checkpoint,fp8", **fast)  # fmt: skip
    assert (cat.architecture, surf.architecture) == ("wan", "wan")
    assert surf.training["memory"] == ["checkpoint", "fp8"] and cat.training["memory"] == []
    assert (cat.placement, surf.placement) == (["attn2"], ["attn1", "ff"])
    video = compose("cat", "surf", catalog=catalog, steps=2)
    assert video.frames.shape == (1, 5, 32, 32, 3)
    with pytest.raises(DvkitError, match="^--frames 6 is not .*: use 5 or 9$"):
        add_motion("bad", videos, catalog=catalog, base="tiny-wan", steps=2, frames=6, **fast)
    with pytest.raises(DvkitError, match="^--resolution: size 40 .* 16, .*: use 32 or 48$"):
        add_motion("bad", videos, catalog=catalog, base="tiny-wan", steps=2, frames=5,
                   **{**fast, "resolution": 40})  # fmt: skip
    exported = export_adapter(catalog, "surf", tmp_path / "surf.safetensors").path
    assert read_adapter_info(exported).architecture == "wan"
    Catalog.init(tmp_path / "elsewhere")
    with Catalog.open(tmp_path / "elsewhere") as fresh:
        fresh.import_file(exported)
        with pytest.warns(DvkitWarning, match="no guidance image"):
            again = compose(None, "surf", "a cat", catalog=fresh, steps=2, size=32)
    assert again.frames.shape == (1, 5, 32, 32, 3)
    other = add_motion("tinysurf", videos, catalog=catalog, base="tiny", steps=2, frames=4,
                       preset="quick", resolution=16)  # fmt: skip
    with pytest.raises(DvkitError) as caught:
        compose("cat", "tinysurf", catalog=catalog, steps=2)
    message = str(caught.value)
    assert other.architecture == "modelscope-t2v"
    assert "tiny-wan (wan" in message and "tiny (modelscope-t2v" in message


def test_wan_hub_ids_choose_the_family() -> None:
    from dvkit.models.loading import choose_family

    for hub_id in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "someone/Wan2.2-T2V-A14B-Diffusers"):
        assert choose_family(hub_id, {}).name == "wan"
    assert choose_family("ali-vilab/text-to-video-ms-1.7b", {}).name == "modelscope-t2v"


@pytest.mark.parametrize("experts", [1, 2])
def test_base_add_from_a_saved_wan_folder(catalog, tmp_path, experts) -> None:
    from dvkit.models.tiny_wan import build_tiny_wan22_base

    tiny = build_tiny_wan_base() if experts == 1 else build_tiny_wan22_base()
    folder = tmp_path / "wan"
    _pipeline(tiny).save_pretrained(folder)
    record = add_base(catalog, "mine", str(folder))  # found from model_index.json
    assert record.architecture == "wan"
    assert record.config["experts"] == experts
    loaded = open_base(catalog, "mine")[0]
    assert loaded.boundary_ratio == tiny.boundary_ratio
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"
    assert loaded.scheduler.config.flow_shift == 3.0
    for ours, theirs in zip(tiny.denoisers.values(), loaded.denoisers.values(), strict=True):
        state = theirs.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    row = Row("a cat surfing", seed=2)
    assert torch.equal(sample(loaded, [row], SETTINGS), sample(tiny, [row], SETTINGS))
    index = folder / "model_index.json"
    index.write_text(
        index.read_text().replace('"expand_timesteps": false', '"expand_timesteps": true')
    )
    with pytest.raises(DvkitError, match="per-token timesteps"):
        add_base(catalog, "ti2v", str(folder))


def test_two_experts_sampler_matches_wan_pipeline_and_adapters_per_expert(
    catalog, images, videos
) -> None:
    from dvkit.models.injection import SECOND_EXPERT
    from dvkit.models.tiny_wan import build_tiny_wan22_base

    base = build_tiny_wan22_base()
    settings = SamplerSettings(steps=6, guidance_scale=5.0, frames=5, height=32, width=32)
    expected = _pipeline(base)(
        "a cat", height=32, width=32, num_frames=5, num_inference_steps=6, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(4), output_type="pt",
        max_sequence_length=base.tokenizer.model_max_length,
    ).frames  # fmt: skip
    ours = sample(base, [Row("a cat", seed=4)], settings)
    assert (expected.permute(0, 1, 3, 4, 2) - ours).abs().max().item() <= 1e-5
    timesteps = base.family.sampling_scheduler(base)
    timesteps.set_timesteps(6)
    assert {bool(t >= 875) for t in timesteps.timesteps} == {True, False}  # both experts ran
    both = create_adapter_state({"": base.unet, SECOND_EXPERT: base.unet_2}, "subject")
    assert len(both) == 2 * len(create_adapter_state(base.unet, "subject"))
    assert sum(key.startswith(f"{SECOND_EXPERT}.blocks.") for key in both) == len(both) // 2
    fast = {"preset": "quick", "resolution": 32, "checkpoint_every": 2}
    cat = add_subject("cat", [images], catalog=catalog, base="tiny-wan22",
                      inversion_steps=1, identity_steps=2, **fast)  # fmt: skip
    low = add_subject("lowcat", [images], catalog=catalog, base="tiny-wan22", experts="low",
                      inversion_steps=1, identity_steps=2, **fast)  # fmt: skip
    video = compose("cat", None, "a {token} surfing", catalog=catalog, steps=2)
    assert video.frames.shape == (1, 9, 32, 32, 3)
    assert compose("lowcat", None, "a {token}", catalog=catalog, steps=2).frames.shape[1] == 9
    with pytest.raises(DvkitError, match="^--experts low: base tiny-wan has one transformer"):
        add_subject("flat", [images], catalog=catalog, base="tiny-wan", experts="low",
                    inversion_steps=1, identity_steps=1, **fast)  # fmt: skip
    assert cat.params > low.params
    surf = add_motion("surf", videos, catalog=catalog, base="tiny-wan22", steps=2, **fast)
    assert surf.training["frames"] == 5  # the quick preset's 4, made a count Wan's VAE takes
    motion = compose(None, "surf", "a cat", catalog=catalog, steps=2,
                     guidance_image=images / "0.png")  # fmt: skip
    assert motion.frames.shape == (1, 5, 32, 32, 3)
    high_only = create_adapter_state(base.unet, "motion", cond_dim=32)  # the high-noise expert's
    assert surf.params == sum(value.numel() for value in high_only.values())


def test_each_step_stays_in_one_experts_range() -> None:
    from dvkit.models.injection import SECOND_EXPERT
    from dvkit.models.tiny_wan import build_tiny_wan22_base

    base = build_tiny_wan22_base()
    latents = torch.zeros(512, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)

    def draw(experts):
        return base.family.add_noise(base, latents, generator, 0.0, experts=experts)[2]

    assert bool((draw(("",)) >= 875).all()) and bool((draw((SECOND_EXPERT,)) < 875).all())
    steps = [draw(("", SECOND_EXPERT))[:2] for _ in range(400)]
    assert all(bool((t >= 875).all()) or bool((t < 875).all()) for t in steps)
    # shift 3: u(σ = 0.875) = 0.875 / (3 − 2·0.875) = 0.7, so 30 % of steps are high-noise
    high = sum(bool(t[0] >= 875) for t in steps) / len(steps)
    assert abs(high - 0.3) < 0.07


def _memory_step(modes):
    """One motion-adapter training step on a fresh tiny-wan prepared with memory `modes`:
    the loss and the adapter's gradients."""
    from dvkit.train.diffusion import diffusion_loss
    from dvkit.train.settings import MotionSettings
    from dvkit.train.setup import prepare_base

    tiny = build_tiny_wan_base()
    prepare_base(tiny, torch.device("cpu"), torch.float32, MotionSettings(memory=modes))
    injector = AdapterInjector(tiny.unet)
    injector.load("m", "motion", create_adapter_state(tiny.unet, "motion", 0.5, 8, seed=1))
    params = injector.train_adapter("m")
    for p in params:  # nonzero up-projections, so every adapter parameter gets a gradient
        p.data.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    injector.set_active({"m": 1.0}, EMBEDS)
    text = tiny.family.encode_text(tiny, ["a cat", "a dog"]).detach()
    latents = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noisy, target, steps = tiny.family.add_noise(tiny, latents, torch.Generator().manual_seed(2), 0)
    loss = diffusion_loss(tiny.family.predict(tiny, noisy, steps, text), target)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in params])


def test_memory_modes_keep_training_exact_or_close() -> None:
    loss, grads = _memory_step([])
    assert np.isfinite(loss) and grads.abs().max() > 0
    # measured: checkpoint and offload (on the CPU: hooks only) 0 apart; fp8 1.3e-4 on the
    # loss and 1.3 % on the gradients (relative norm of the difference)
    for modes, loss_tolerance, grad_tolerance in (
        (["checkpoint"], 1e-5, 1e-5), (["offload"], 1e-5, 1e-5), (["fp8"], 1e-3, 0.03),
        (["checkpoint", "fp8", "offload"], 1e-3, 0.03),
    ):  # fmt: skip
        other_loss, other_grads = _memory_step(modes)
        assert torch.isfinite(other_grads).all() and np.isfinite(other_loss)
        relative = ((other_grads - grads).norm() / grads.norm()).item()
        assert abs(other_loss - loss) / loss <= loss_tolerance and relative <= grad_tolerance


def test_adapters_live_where_the_injector_is_told(base) -> None:
    # under --memory offload the transformer's weights stay on the CPU while it runs elsewhere
    injector = AdapterInjector(base.unet, device=torch.device("meta"))
    injector.load("m", "motion", create_adapter_state(base.unet, "motion", 0.5, 8, seed=1))
    assert {p.device.type for p in injector.get("m").parameters()} == {"meta"}
    injector.detach()
    assert AdapterInjector(base.unet).device == torch.device("cpu")


def test_memory_option_is_validated_and_recorded(cli, home, images) -> None:
    from dvkit.train.settings import MotionSettings
    from dvkit.train.setup import memory_modes

    assert MotionSettings(memory="fp8,checkpoint").memory == ["checkpoint", "fp8"]
    assert MotionSettings(memory="none").memory == []
    assert memory_modes(MotionSettings(memory="offload")) == ["checkpoint", "offload"]
    assert memory_modes(MotionSettings(gradient_checkpointing=True)) == ["checkpoint"]
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", images, "--base",
                       "tiny-wan", "--preset", "quick", "--memory", "checkpoint,fp4")  # fmt: skip
    assert code != 0 and err.strip().count("\n") == 0 and "error:" in err
    assert "unknown memory mode 'fp4'" in err and "Traceback" not in err


def test_an_expert_no_adapter_trains_on_stays_in_cpu_memory() -> None:
    from dvkit.models.tiny_wan import build_tiny_wan22_base
    from dvkit.train.settings import MotionSettings
    from dvkit.train.setup import prepare_base, trained_denoisers

    base = build_tiny_wan22_base()
    trained = trained_denoisers(base, None, "motion")  # the high-noise expert by default
    prepare_base(base, torch.device("meta"), torch.float32, MotionSettings(), trained)
    assert (base.unet.device.type, base.unet_2.device.type) == ("meta", "cpu")
    both = build_tiny_wan22_base()
    prepare_base(both, torch.device("meta"), torch.float32, MotionSettings(),
                 trained_denoisers(both, "both", "motion"))  # fmt: skip
    assert (both.unet.device.type, both.unet_2.device.type) == ("meta", "meta")
