"""DreamVideo adapters: the module, their placement in the UNet, per-row selection and training."""

import re

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dvkit.errors import ConflictError, NotFoundError
from dvkit.models.adapters import Adapter
from dvkit.models.injection import (
    AdapterInjector,
    AdapterMismatchError,
    adapter_slots,
    create_adapter_state,
)
from dvkit.models.tiny import build_tiny_base

COND_DIM = 8
KEY = re.compile(
    r"^(?P<block>.+)\.(?P<slot>attn1|attn2|ff)_adapter\.(down|up|cond)\.(weight|bias)$"
)


@pytest.fixture
def unet():
    return build_tiny_base().unet


def make_inputs(videos=4, frames=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(videos, 4, frames, 8, 8, generator=generator),
        "timestep": torch.tensor(400),
        "encoder_hidden_states": torch.randn(videos, 6, 32, generator=generator),
    }


def run(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def random_state(unet, kind, seed):
    """Adapter tensors with every weight non-zero (fresh ones would add nothing)."""
    generator = torch.Generator().manual_seed(seed)
    state = create_adapter_state(unet, kind, cond_dim=COND_DIM if kind == "motion" else None)
    return {
        key: 0.3 * torch.randn(value.shape, generator=generator) for key, value in state.items()
    }


def hooked_modules(unet):
    return [name for name, m in unet.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def test_adapter_matches_the_formula_and_broadcasts_the_condition():
    torch.manual_seed(0)
    adapter = Adapter(4, hidden_ratio=0.5, cond_dim=3)
    torch.nn.init.normal_(adapter.up.weight)
    torch.nn.init.normal_(adapter.up.bias)
    videos, per_video = 2, 3
    h = torch.randn(videos * per_video, 5, 4)
    e = torch.randn(videos, 3)
    strength = torch.tensor([0.5, 2.0])
    out = adapter(h, e, strength)
    expected = torch.empty_like(h)
    for row in range(videos * per_video):
        video = row // per_video
        condition = adapter.cond.weight @ e[video] + adapter.cond.bias
        for position in range(h.shape[1]):
            x = h[row, position] + strength[video] * condition
            hidden = F.gelu(adapter.down.weight @ x + adapter.down.bias)
            expected[row, position] = adapter.up.weight @ hidden + adapter.up.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert adapter.down.out_features == 2
    no_condition = adapter.up(F.gelu(adapter.down(h)))
    torch.testing.assert_close(adapter(h, e, torch.zeros(2)), no_condition)
    torch.testing.assert_close(adapter(h, e, 0.0), no_condition)
    # No image at all is the zero embedding (training's image dropout): λ·bias still enters.
    assert torch.equal(adapter(h), adapter(h, torch.zeros(1, 3)))
    assert not torch.allclose(adapter(h), no_condition)
    with pytest.raises(ValueError):
        adapter(h[:5], e)


def test_fresh_adapter_adds_exactly_zero():
    adapter = Adapter(6)
    assert adapter.cond is None
    assert torch.equal(adapter.up.weight, torch.zeros(6, 3))
    assert torch.equal(adapter(torch.randn(2, 4, 6)), torch.zeros(2, 4, 6))


def test_adapter_counts_follow_the_unet_structure(unet):
    spatial = temporal = 0
    for module in unet.modules():
        blocks = sum(isinstance(m, BasicTransformerBlock) for m in module.modules())
        if isinstance(module, Transformer2DModel):
            spatial += blocks
        elif isinstance(module, TransformerTemporalModel):
            temporal += blocks
    subject, motion = adapter_slots(unet, "subject"), adapter_slots(unet, "motion")
    assert spatial >= 2 and temporal >= 2
    assert len(subject) == spatial and {s.slot for s in subject} == {"attn2"}
    assert len(motion) == 3 * temporal and {s.slot for s in motion} == {"attn1", "attn2", "ff"}
    assert any(s.block.startswith("transformer_in.") for s in motion)
    assert (len(subject), len(motion)) == (4, 15)


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_keys_name_blocks_of_the_right_container(unet, kind):
    state = create_adapter_state(unet, kind, cond_dim=COND_DIM if kind == "motion" else None)
    container = Transformer2DModel if kind == "subject" else TransformerTemporalModel
    parts = 6 if kind == "motion" else 4
    assert len(state) == parts * len(adapter_slots(unet, kind))
    for key in state:
        match = KEY.match(key)
        assert match, key
        block_path = match["block"]
        assert isinstance(unet.get_submodule(block_path), BasicTransformerBlock)
        parent = block_path.rsplit(".transformer_blocks.", 1)[0]
        assert isinstance(unet.get_submodule(parent), container)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2_adapter.down.weight" in (
        create_adapter_state(unet, "subject")
    )


def test_hooks_sit_only_at_the_adapter_slots(unet):
    injector = AdapterInjector(unet)
    injector.load("cat", "subject", create_adapter_state(unet, "subject"))
    injector.load("surf", "motion", create_adapter_state(unet, "motion", cond_dim=COND_DIM))
    expected = set()
    for kind in ("subject", "motion"):
        for slot in adapter_slots(unet, kind):
            norm = {"attn1": "norm1", "attn2": "norm2", "ff": "norm3"}[slot.slot]
            expected |= {f"{slot.block}.{norm}", f"{slot.block}.{slot.slot}"}
    assert set(hooked_modules(unet)) == expected


def test_fresh_adapters_leave_the_output_bit_identical(unet):
    inputs = make_inputs()
    base = run(unet, inputs)
    injector = AdapterInjector(unet)
    injector.load("cat", "subject", create_adapter_state(unet, "subject", seed=1))
    injector.load("surf", "motion", create_adapter_state(unet, "motion", cond_dim=COND_DIM, seed=2))
    embeds = torch.randn(4, COND_DIM)
    injector.set_active({"cat": 1.0, "surf": 1.0}, embeds)
    assert torch.equal(run(unet, inputs), base)
    injector.set_rows([{"cat": 1.0}, {"surf": 0.5}, {}, {"cat": 2.0, "surf": 1.0}], embeds)
    assert torch.equal(run(unet, inputs), base)


def test_detach_restores_the_unet_exactly(unet):
    names = [name for name, _ in unet.named_modules()]
    state = {key: value.clone() for key, value in unet.state_dict().items()}
    assert hooked_modules(unet) == []
    inputs = make_inputs(videos=1)
    base = run(unet, inputs)
    injector = AdapterInjector(unet)
    injector.load("cat", "subject", random_state(unet, "subject", 0))
    injector.load("surf", "motion", random_state(unet, "motion", 1))
    injector.set_active({"cat": 1.0, "surf": 1.0}, torch.randn(1, COND_DIM))
    assert not torch.equal(run(unet, inputs), base)
    injector.unload("cat")
    assert all(
        ".temp_attentions." in n or n.startswith("transformer_in.") for n in hooked_modules(unet)
    )
    injector.detach()
    assert hooked_modules(unet) == []
    assert [name for name, _ in unet.named_modules()] == names
    after = unet.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[key], value) for key, value in state.items())
    assert torch.equal(run(unet, inputs), base)
    assert injector.loaded == {}


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_nonzero_adapters_change_the_output(unet, kind):
    inputs = make_inputs(videos=2)
    base = run(unet, inputs)
    injector = AdapterInjector(unet)
    injector.load("x", kind, random_state(unet, kind, 0))
    injector.set_active({"x": 1.0})
    assert not torch.allclose(run(unet, inputs), base)
    injector.clear()
    assert torch.equal(run(unet, inputs), base)


def test_rows_with_different_adapters_match_each_row_run_alone(unet):
    inputs = make_inputs(videos=4)
    base = run(unet, inputs)
    injector = AdapterInjector(unet)
    injector.load("a", "subject", random_state(unet, "subject", 0))
    injector.load("b", "subject", random_state(unet, "subject", 1))
    injector.load("m", "motion", random_state(unet, "motion", 2))
    rows = [{"a": 1.0}, {"b": 0.7, "m": 1.0}, {}, {"a": 1.0, "b": 0.5, "m": 0.8}]
    embeds = torch.randn(4, COND_DIM, generator=torch.Generator().manual_seed(3))
    strength = torch.tensor([1.0, 0.5, 1.0, 2.0])
    injector.set_rows(rows, embeds, strength)
    batched = run(unet, inputs)
    assert torch.equal(batched[2], base[2])
    for row in range(4):
        injector.set_rows([rows[row]], embeds[row : row + 1], strength[row : row + 1])
        alone = run(unet, {key: value[row : row + 1] if value.ndim else value
                           for key, value in inputs.items()})  # fmt: skip
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=0, atol=1e-5)
        if row != 2:
            assert not torch.allclose(alone, base[row : row + 1])


def test_scale_zero_and_zero_strength(unet):
    inputs = make_inputs(videos=2)
    base = run(unet, inputs)
    injector = AdapterInjector(unet)
    injector.load("a", "subject", random_state(unet, "subject", 0))
    injector.load("m", "motion", random_state(unet, "motion", 1))
    injector.set_rows([{"a": 0.0}, {"a": 0.0, "m": 0.0}])
    assert torch.equal(run(unet, inputs), base)
    injector.set_active({"m": 1.0})
    no_image = run(unet, inputs)
    injector.set_active({"m": 1.0}, torch.zeros(2, COND_DIM))
    torch.testing.assert_close(run(unet, inputs), no_image, rtol=0, atol=1e-6)
    injector.set_active({"m": 1.0}, torch.randn(2, COND_DIM), strength=0.0)
    unconditioned = run(unet, inputs)
    injector.set_active({"m": 1.0}, torch.randn(2, COND_DIM), strength=0.0)
    assert torch.equal(run(unet, inputs), unconditioned)
    assert not torch.allclose(unconditioned, no_image)
    injector.set_active({"m": 1.0}, torch.randn(2, COND_DIM), strength=torch.tensor([0.0, 1.0]))
    guided = run(unet, inputs)
    assert torch.equal(guided[0], unconditioned[0])
    assert not torch.allclose(guided[1], unconditioned[1])


def test_invalid_loads_and_selections_are_refused(unet):
    injector = AdapterInjector(unet)
    state = create_adapter_state(unet, "subject")
    broken = dict(state)
    first = sorted(broken)[0]
    broken.pop(first)
    broken["mid_block.attentions.0.transformer_blocks.0.attn1_adapter.down.weight"] = torch.zeros(1)
    wrong_shape = next(key for key in broken if key.endswith("up.weight"))
    broken[wrong_shape] = torch.zeros(3, 3)
    with pytest.raises(AdapterMismatchError) as error:
        injector.load("cat", "subject", broken)
    message = str(error.value)
    total = len(state)
    assert message.startswith(f"{total - 2} of {total} adapter tensors match this base")
    assert first in message and wrong_shape in message and "unexpected: mid_block" in message
    with pytest.raises(AdapterMismatchError):
        injector.load("cat", "motion", state)
    with pytest.raises(AdapterMismatchError):
        injector.load("cat", "subject", state, hidden_ratio=0.25)
    injector.load("cat", "subject", state)
    with pytest.raises(ConflictError):
        injector.load("cat", "subject", state)
    with pytest.raises(NotFoundError):
        injector.set_rows([{"dog": 1.0}])
    with pytest.raises(NotFoundError):
        injector.unload("dog")
    injector.set_rows([{"cat": 1.0}, {}])
    with pytest.raises(RuntimeError, match="2 videos"):
        run(unet, make_inputs(videos=3))


def test_training_touches_only_adapter_parameters(unet):
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    injector = AdapterInjector(unet)
    injector.load("other", "subject", random_state(unet, "subject", 5))
    injector.load("surf", "motion", create_adapter_state(unet, "motion", cond_dim=COND_DIM, seed=0))
    other_before = {k: v.clone() for k, v in injector.get("other").tensors().items()}
    params = injector.train_adapter("surf")
    assert all(not p.requires_grad for p in unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    inputs = make_inputs(videos=2, frames=2)
    for _ in range(3):
        injector.set_active({"surf": 1.0}, torch.randn(2, COND_DIM))
        loss = unet(**inputs).sample.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(v, other_before[k]) for k, v in injector.get("other").tensors().items())
    fresh = create_adapter_state(unet, "motion", cond_dim=COND_DIM, seed=0)
    trained = injector.get("surf").tensors()
    assert any(not torch.equal(trained[key], fresh[key]) for key in fresh if ".up." in key)


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_loss_falls_when_overfitting_one_batch(unet, kind):
    torch.manual_seed(0)
    injector = AdapterInjector(unet)
    cond_dim = COND_DIM if kind == "motion" else None
    injector.load("x", kind, create_adapter_state(unet, kind, cond_dim=cond_dim, seed=0))
    params = injector.train_adapter("x")
    embeds = torch.randn(2, COND_DIM) if kind == "motion" else None
    injector.set_active({"x": 1.0}, embeds)
    inputs = make_inputs(videos=2, frames=2, seed=1)
    target = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(params, lr=3e-2, weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss = F.mse_loss(unet(**inputs).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_adapters_read_the_block_input_before_the_norm(unet, kind):
    injector = AdapterInjector(unet)
    injector.load("x", kind, random_state(unet, kind, 0))
    embeds = torch.randn(2, COND_DIM)
    injector.set_active({"x": 1.0}, embeds if kind == "motion" else None, strength=0.7)
    slot = adapter_slots(unet, kind)[-1]
    block = unet.get_submodule(slot.block)
    h = torch.randn(2 * 3, 5, slot.channels)
    text = torch.randn(2 * 3, 6, 32) if kind == "subject" else None
    weights = injector.get("x")

    def adapter_output(layer, x):
        adapter = weights.adapter(f"{slot.block}.{layer}_adapter")
        if adapter is None:
            return 0
        return adapter(x, embeds, 0.7) if kind == "motion" else adapter(x)

    with torch.no_grad():
        hooked = block(h, encoder_hidden_states=text)
        injector.clear()
        x = h + block.attn1(block.norm1(h)) + adapter_output("attn1", h)
        x = x + block.attn2(block.norm2(x), encoder_hidden_states=text) + adapter_output("attn2", x)
        expected = x + block.ff(block.norm3(x)) + adapter_output("ff", x)
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)


def test_motion_adapters_see_the_frame_positions_a_block_adds(unet):
    from dvkit.sprites.base import add_frame_positions

    add_frame_positions(unet)
    injector = AdapterInjector(unet)
    injector.load("x", "motion", random_state(unet, "motion", 1))
    slot = adapter_slots(unet, "motion")[-1]
    block = unet.get_submodule(slot.block)
    weights = injector.get("x")

    def adapter_output(layer, x):
        return weights.adapter(f"{slot.block}.{layer}_adapter")(block.pos_embed(x))

    h = torch.randn(4, 1, slot.channels).expand(4, 5, slot.channels)  # the same in every frame
    with torch.no_grad():
        injector.set_active({"x": 1.0})
        hooked = block(h)
        injector.clear()
        without = block(h)
        x = h + block.attn1(block.pos_embed(block.norm1(h))) + adapter_output("attn1", h)
        x = x + block.attn2(block.pos_embed(block.norm2(x))) + adapter_output("attn2", x)
        expected = x + block.ff(block.norm3(x)) + adapter_output("ff", x)
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
    added = hooked - without
    assert (added[:, 0] - added[:, 3]).abs().max() > 1e-3  # frames told apart
