"""Import of official DreamVideo (VGen) checkpoints: block mapping, kinds, safety, errors."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from safetensors.torch import load
from torch import nn

from dvkit.catalog import Catalog
from dvkit.errors import AdapterFileError
from dvkit.io.vgen import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    dvkit_to_vgen,
    import_vgen,
    map_vgen_state_dict,
    name_from_filename,
    read_vgen_adapter,
    read_vgen_embedding,
    vgen_block_map,
    vgen_to_dvkit,
)
from dvkit.models.injection import AdapterWeights
from dvkit.models.tiny import TEXT_WIDTH, build_tiny_base

IDENTITY_SLOTS = ("cross_attn_adapter",)
MOTION_SLOTS = ("attn_adapter", "cross_attn_adapter", "ff_adapter")

# The tiny base (levels: CrossAttn, plain; 1 layer per block), numbered by hand the VGen way:
# input_blocks 0 = conv_in + transformer_in, 1 = level 0, 2 = downsampler, 3 = level 1;
# output_blocks 0-1 = up level 0 (no attention), 2-3 = up level 1.
TINY_SPATIAL = {"input_blocks.1.1": 16, "middle_block.1": 32, "output_blocks.2.1": 16,
                "output_blocks.3.1": 16}  # fmt: skip
TINY_TEMPORAL = {"input_blocks.0.1": 32, "input_blocks.1.2": 16, "middle_block.2": 32,
                 "output_blocks.2.2": 16, "output_blocks.3.2": 16}  # fmt: skip
TINY_MAP = {
    "input_blocks.0.1": "transformer_in",
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.1.2": "down_blocks.0.temp_attentions.0",
    "middle_block.1": "mid_block.attentions.0",
    "middle_block.2": "mid_block.temp_attentions.0",
    "output_blocks.2.1": "up_blocks.1.attentions.0",
    "output_blocks.2.2": "up_blocks.1.temp_attentions.0",
    "output_blocks.3.1": "up_blocks.1.attentions.1",
    "output_blocks.3.2": "up_blocks.1.temp_attentions.1",
}

# ModelScope T2V (ali-vilab/text-to-video-ms-1.7b unet/config.json) and DESIGN §6's table.
MODELSCOPE_UNET = {
    "sample_size": 32,
    "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
}
DESIGN_TABLE = {
    "input_blocks.0.1": "transformer_in",
    "middle_block.1": "mid_block.attentions.0",
    "middle_block.2": "mid_block.temp_attentions.0",
}
for _level, _indices in enumerate(((1, 2), (4, 5), (7, 8))):
    for _j, _index in enumerate(_indices):
        DESIGN_TABLE[f"input_blocks.{_index}.1"] = f"down_blocks.{_level}.attentions.{_j}"
        DESIGN_TABLE[f"input_blocks.{_index}.2"] = f"down_blocks.{_level}.temp_attentions.{_j}"
for _level, _indices in ((1, (3, 4, 5)), (2, (6, 7, 8)), (3, (9, 10, 11))):
    for _j, _index in enumerate(_indices):
        DESIGN_TABLE[f"output_blocks.{_index}.1"] = f"up_blocks.{_level}.attentions.{_j}"
        DESIGN_TABLE[f"output_blocks.{_index}.2"] = f"up_blocks.{_level}.temp_attentions.{_j}"


def modelscope_widths(first: int, transformer_in: int) -> tuple[dict[str, int], dict[str, int]]:
    """Spatial and temporal VGen blocks of a ModelScope-structured UNet with their widths."""
    widths = {1: first, 2: first, 4: 2 * first, 5: 2 * first, 7: 4 * first, 8: 4 * first}
    outputs = {3: 4 * first, 4: 4 * first, 5: 4 * first, 6: 2 * first, 7: 2 * first,
               8: 2 * first, 9: first, 10: first, 11: first}  # fmt: skip
    spatial = {f"input_blocks.{i}.1": c for i, c in widths.items()}
    spatial |= {"middle_block.1": 4 * first}
    spatial |= {f"output_blocks.{i}.1": c for i, c in outputs.items()}
    temporal = {"input_blocks.0.1": transformer_in}
    temporal |= {block[:-1] + "2": c for block, c in spatial.items()}
    return spatial, temporal


def vgen_state(blocks, slots, cond_dim=None, seed=0, meta=False) -> dict[str, torch.Tensor]:
    """An official-layout adapter state dict over `blocks` (VGen name → channels)."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return (
            torch.empty(shape, device="meta") if meta else torch.randn(shape, generator=generator)
        )

    state = {}
    for block, channels in blocks.items():
        for slot in slots:
            prefix = f"{block}.transformer_blocks.0.{slot}"
            state[f"{prefix}.down_linear.weight"] = tensor(channels // 2, channels)
            state[f"{prefix}.down_linear.bias"] = tensor(channels // 2)
            state[f"{prefix}.up_linear.weight"] = tensor(channels, channels // 2)
            state[f"{prefix}.up_linear.bias"] = tensor(channels)
            if cond_dim:
                state[f"{prefix}.condition_linear.weight"] = tensor(channels, cond_dim)
                state[f"{prefix}.condition_linear.bias"] = tensor(channels)
    return state


def save_adapter(path: Path, state: dict, step: int = 500) -> Path:
    torch.save({"state_dict": state, "step": step}, path)
    return path


def save_embedding(path: Path, width: int = TEXT_WIDTH, seed: int = 0, vectors: int = 1) -> Path:
    params = nn.ParameterDict()
    params["*"] = nn.Parameter(
        torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed))
    )
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, path)
    return path


@pytest.fixture(scope="module")
def tiny_unet():
    return build_tiny_base().unet


@pytest.fixture
def official(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "official"
    folder.mkdir()
    return {
        "identity": save_adapter(
            folder / "dog2_adapter_00000500.pth", vgen_state(TINY_SPATIAL, IDENTITY_SLOTS)
        ),
        "embedding": save_embedding(folder / "text_embedding_of_dog2_0003000.pth"),
        "motion": save_adapter(
            folder / "carTurn_adapter_00001500.pth",
            vgen_state(TINY_TEMPORAL, MOTION_SLOTS, cond_dim=32, seed=1),
            step=1500,
        ),
    }


# ---- mapping --------------------------------------------------------------------------------


def test_block_map_reproduces_the_design_table() -> None:
    assert vgen_block_map(MODELSCOPE_UNET) == DESIGN_TABLE


def test_block_map_is_derived_from_the_config(tiny_unet) -> None:
    assert vgen_block_map(tiny_unet.config) == TINY_MAP
    for vgen, block in TINY_MAP.items():
        tiny_unet.get_submodule(block)  # every mapped block exists
        key = f"{vgen}.transformer_blocks.0.ff_adapter.up_linear.bias"
        name = f"{block}.transformer_blocks.0.ff_adapter.up.bias"
        assert vgen_to_dvkit(key, TINY_MAP) == name
        assert dvkit_to_vgen(name, TINY_MAP) == key


@pytest.mark.parametrize(
    ("kind", "slots", "cond_dim", "count", "container"),
    [
        ("subject", IDENTITY_SLOTS, None, 64, Transformer2DModel),
        ("motion", MOTION_SLOTS, 1024, 306, TransformerTemporalModel),
    ],
)
def test_full_modelscope_checkpoints_attach_to_the_right_modules(
    kind, slots, cond_dim, count, container
) -> None:
    with torch.device("meta"):
        unet = UNet3DConditionModel(**MODELSCOPE_UNET)
    spatial, temporal = modelscope_widths(320, 512)
    state = vgen_state(spatial if kind == "subject" else temporal, slots, cond_dim, meta=True)
    assert len(state) == count
    mapped = map_vgen_state_dict(state, unet)
    assert (mapped.kind, len(mapped.tensors), mapped.hidden_ratio) == (kind, count, 0.5)
    assert mapped.cond_dim == cond_dim
    containers = dict(unet.named_modules())
    for key, value in state.items():
        name = vgen_to_dvkit(key, vgen_block_map(unet.config))
        assert tuple(mapped.tensors[name].shape) == tuple(value.shape)
        block_path = name.split(".attn")[0].split(".ff_adapter")[0]
        if key.endswith("down_linear.weight"):
            assert unet.get_submodule(block_path).dim == value.shape[1]
        owner = block_path.rsplit(".transformer_blocks", 1)[0]
        assert isinstance(containers[owner], container)
    if kind == "subject":
        key = "input_blocks.1.1.transformer_blocks.0.cross_attn_adapter.down_linear.weight"
        name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2_adapter.down.weight"
        assert tuple(mapped.tensors[name].shape) == (160, 320) == tuple(state[key].shape)
    else:
        name = "down_blocks.0.temp_attentions.0.transformer_blocks.0.ff_adapter.cond.weight"
        assert tuple(mapped.tensors[name].shape) == (320, 1024)
        name = "transformer_in.transformer_blocks.0.attn1_adapter.down.weight"
        assert tuple(mapped.tensors[name].shape) == (256, 512)


def test_modelscope_shaped_files_load_bit_identical(tmp_path) -> None:
    unet = UNet3DConditionModel(**{**MODELSCOPE_UNET, "block_out_channels": (32, 64, 128, 128),
                                   "cross_attention_dim": 64, "attention_head_dim": 4})  # fmt: skip
    spatial, temporal = modelscope_widths(32, 8 * 4)
    for kind, blocks, slots, cond_dim, count in (
        ("subject", spatial, IDENTITY_SLOTS, None, 64),
        ("motion", temporal, MOTION_SLOTS, 24, 306),
    ):
        state = vgen_state(blocks, slots, cond_dim)
        path = save_adapter(tmp_path / f"{kind}_adapter_00000100.pth", state, step=100)
        adapter = read_vgen_adapter(path, unet)
        assert (adapter.kind, len(adapter.tensors), adapter.step) == (kind, count, 100)
        block_map = vgen_block_map(unet.config)
        for key, value in state.items():
            assert torch.equal(adapter.tensors[vgen_to_dvkit(key, block_map)], value)
        weights = AdapterWeights.from_tensors(unet, kind, adapter.tensors)
        assert len(weights.slots) == count // (6 if cond_dim else 4)


def test_name_from_file_name() -> None:
    assert name_from_filename("dog2_adapter_00000500.pth") == "dog2"
    assert name_from_filename("carTurn_adapter_00001500.pth") == "carturn"
    assert name_from_filename("wolf_plushie_adapter_00000500.pth") == "wolf_plushie"
    assert name_from_filename("My Dog!_adapter_00000500.pth") == "my-dog"
    assert name_from_filename("adapter_00000500.pth") is None
    assert name_from_filename("weights.pth") is None


# ---- importing ------------------------------------------------------------------------------


def test_cli_imports_identity_and_motion(cli, home, official, tiny_unet) -> None:
    files = (official["identity"], official["motion"])
    options = ("--base", "tiny", "--embedding", official["embedding"], "--tag", "vgen")
    code, out, err = cli("--home", home, "import", *files, *options)
    assert code == 0, err
    assert "imported as dog2@1 (subject, base tiny, token <dog2>)" in out
    assert "imported as carturn@1 (motion, base tiny)" in out
    with Catalog.open(home) as catalog:
        subject, motion = catalog.show("dog2"), catalog.show("carturn")
        subject_tensors = load(catalog.read_blob(subject.blob))
        motion_tensors = load(catalog.read_blob(motion.blob))
    assert (subject.token, subject.initializer, subject.num_vectors) == ("<dog2>", None, 1)
    assert subject.placement == ["attn2"] and motion.placement == ["attn1", "attn2", "ff"]
    assert subject.tags == ["vgen"] and subject.hidden_ratio == 0.5
    assert subject.training["adapter_file"] == "dog2_adapter_00000500.pth"
    assert subject.training["adapter_step"] == 500
    assert subject.training["embedding_file"] == "text_embedding_of_dog2_0003000.pth"
    assert subject.training["embedding_step"] == 3000
    assert motion.training["adapter_step"] == 1500 and motion.training["cond_dim"] == 32
    for record, path, tensors in ((subject, official["identity"], subject_tensors),
                                  (motion, official["motion"], motion_tensors)):  # fmt: skip
        state = torch.load(path, weights_only=True)["state_dict"]
        assert len(tensors) == len(state) + (record.kind == "subject")
        for key, value in state.items():
            assert torch.equal(tensors[vgen_to_dvkit(key, TINY_MAP)], value)
        assert record.params == sum(t.numel() for t in tensors.values())
    embedding = read_vgen_embedding(official["embedding"]).vectors
    assert torch.equal(subject_tensors.pop("token_embedding"), embedding)
    AdapterWeights.from_tensors(tiny_unet, "subject", subject_tensors)
    AdapterWeights.from_tensors(tiny_unet, "motion", motion_tensors)
    code, out, _ = cli("--home", home, "import", official["motion"], "--base", "tiny")
    assert code == 0 and "already in the catalog as carturn@1" in out


def test_library_import_with_name_and_token(catalog, official) -> None:
    result = import_vgen(catalog, official["identity"], base="tiny", name="rex",
                         embedding=official["embedding"], token="<rex-dog>", tags=["pet"],
                         description="a dog")  # fmt: skip
    assert not result.duplicate
    record = result.adapter
    assert (record.ref, record.kind, record.token, record.description) == (
        "rex@1", "subject", "<rex-dog>", "a dog")  # fmt: skip
    assert catalog.show("rex").tags == ["pet"]
    again = import_vgen(catalog, official["identity"], base="tiny", name="rex",
                        embedding=official["embedding"])  # fmt: skip
    assert again.duplicate and again.adapter.ref == "rex@1"


class _Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Custom:
    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


def _catalog_state(home: Path) -> tuple[list[str], list[dict]]:
    with Catalog.open(home) as catalog:
        adapters = catalog.adapter_rows(all_versions=True)
    blobs = sorted(p.name for p in (home / "blobs").rglob("*"))
    tmp = sorted(p.name for p in (home / "tmp").rglob("*")) if (home / "tmp").exists() else []
    return blobs + tmp, adapters


def _one_error_line(code: int, err: str, expected: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], err


@pytest.mark.parametrize("how", ["torch-save", "plain-pickle", "custom-class", "as-embedding"])
def test_malicious_pickles_are_refused_and_never_run(cli, home, official, tmp_path, how) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_adapter_00000500.pth"
    if how == "plain-pickle":
        with open(evil, "wb") as handle:
            pickle.dump({"state_dict": _Payload(marker), "step": 1}, handle)
    elif how == "custom-class":
        torch.save({"state_dict": _Custom(), "step": 1}, evil)
    else:
        torch.save({"state_dict": {"x": _Payload(marker)}, "step": 1}, evil)
    before = _catalog_state(home)
    if how == "as-embedding":
        args = (official["identity"], "--embedding", evil)
    else:
        args = (evil,)
    code, _, err = cli("--home", home, "import", *args, "--base", "tiny")
    _one_error_line(code, err, "refused")
    assert "never runs code" in err
    if how == "custom-class":
        assert "_Custom" in err
    elif how != "plain-pickle":
        assert "system" in err
    assert not marker.exists()
    assert _catalog_state(home) == before
    with pytest.raises(UnsafeCheckpointError):
        if how == "as-embedding":
            read_vgen_embedding(evil)
        else:
            read_vgen_adapter(evil, None)
    assert not marker.exists()


def test_import_errors_are_one_line_and_leave_catalog_unchanged(
    cli, home, official, tmp_path
) -> None:
    identity, embedding = official["identity"], official["embedding"]
    garbage = tmp_path / "garbage_adapter_00000001.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = save_adapter(
        tmp_path / "foreign_adapter_00000001.pth", {"conv.weight": torch.ones(3)}
    )
    spatial, _ = modelscope_widths(320, 512)
    big = vgen_state(dict(list(spatial.items())[:6]), IDENTITY_SLOTS)
    wrong = save_adapter(tmp_path / "big_adapter_00000500.pth", big)
    unnamed = save_adapter(
        tmp_path / "adapter_00000500.pth", vgen_state(TINY_SPATIAL, IDENTITY_SLOTS)
    )
    wide = save_embedding(tmp_path / "text_embedding_of_dog2_0000001.pth", width=1024)
    mixed = vgen_state(TINY_SPATIAL, ("attn_adapter", "cross_attn_adapter"))
    mixed_path = save_adapter(tmp_path / "mixed_adapter_00000001.pth", mixed)
    for suffix in (".ckpt", ".bin"):
        other = tmp_path / f"weights{suffix}"
        other.write_bytes(b"x")
        _one_error_line(*cli("--home", home, "import", other, "--base", "tiny")[::2],
                        f"unsupported file type '{suffix}'")  # fmt: skip
    cli("--home", home, "import", identity, "--base", "tiny", "--embedding", embedding,
        "--name", "dog")  # fmt: skip
    before = _catalog_state(home)
    cases = [
        ((identity, "--base", "tiny"), "needs its learned word: pass --embedding"),
        ((identity, "--base", "tiny", "--embedding", wide),
         "1024 wide, but base 'tiny' has a text encoder of width 32"),
        ((official["motion"], "--base", "tiny", "--embedding", embedding),
         "no identity adapter file"),
        ((garbage, "--base", "tiny"), "not a readable PyTorch checkpoint"),
        ((foreign, "--base", "tiny"), "0 of 1 keys are DreamVideo adapter weights"),
        ((wrong, "--base", "tiny", "--embedding", embedding),
         "0 of 24 keys fit the identity adapters of this base (16 expected); not matching: "
         "input_blocks.1.1"),
        ((wrong, "--base", "tiny", "--embedding", embedding),
         "missing: middle_block.1.transformer_blocks.0.cross_attn_adapter.down_linear.bias"),
        ((mixed_path, "--base", "tiny"), "neither an identity adapter file"),
        ((unnamed, "--base", "tiny", "--embedding", embedding), "pass --name NAME"),
        ((identity, "--base", "nosuchbase", "--embedding", embedding), "unknown base"),
        ((identity, "--base", "tiny-animatediff", "--embedding", embedding),
         "but base 'tiny-animatediff' is of family animatediff"),
        ((identity, "--base", "tiny", "--embedding", embedding, "--name", "Bad"),
         "invalid name 'Bad'"),
        ((official["motion"], "--base", "tiny", "--name", "dog"), "already a subject"),
        ((identity, official["motion"], "--name", "x", "--base", "tiny"), "one file"),
    ]  # fmt: skip
    for args, expected in cases:
        code, _, err = cli("--home", home, "import", *args)
        _one_error_line(code, err, expected)
        assert _catalog_state(home) == before, args


def test_foreign_files_go_onto_the_default_base(cli, home, official, monkeypatch) -> None:
    identity, embedding = official["identity"], official["embedding"]
    monkeypatch.delenv("DVKIT_BASE")
    before = _catalog_state(home)
    code, _, err = cli("--home", home, "import", identity, "--embedding", embedding)
    _one_error_line(code, err, "needs --base NAME, the base it was trained for, or a default")
    assert _catalog_state(home) == before
    monkeypatch.setenv("DVKIT_BASE", "tiny")
    code, out, err = cli("--home", home, "import", identity, "--embedding", embedding)
    assert code == 0 and "base tiny" in out, err


def test_embedding_reader_checks_shape(tmp_path) -> None:
    two = save_embedding(tmp_path / "text_embedding_of_x_0000001.pth", vectors=2)
    assert read_vgen_embedding(two).vectors.shape == (2, TEXT_WIDTH)
    params = nn.ParameterDict(
        {"*": nn.Parameter(torch.zeros(1, 4)), "+": nn.Parameter(torch.zeros(1, 4))}
    )
    many = tmp_path / "text_embedding_of_y_0000001.pth"
    torch.save({"string_to_param": params}, many)
    with pytest.raises(AdapterFileError, match="holds 2 learned embeddings"):
        read_vgen_embedding(many)
    with pytest.raises(AdapterFileError, match="no 'string_to_param'"):
        read_vgen_embedding(save_adapter(tmp_path / "z.pth", {"a": torch.zeros(1)}))


def test_mismatch_message_counts(tiny_unet) -> None:
    state = vgen_state(TINY_SPATIAL, IDENTITY_SLOTS)
    state["input_blocks.1.1.transformer_blocks.0.cross_attn_adapter.down_linear.weight"] = (
        torch.zeros(8, 15)
    )
    del state["middle_block.1.transformer_blocks.0.cross_attn_adapter.up_linear.bias"]
    with pytest.raises(CheckpointMismatchError) as error:
        map_vgen_state_dict(state, tiny_unet, source="f.pth")
    message = str(error.value)
    assert message.startswith("f.pth: 14 of 15 keys fit the identity adapters of this base")
    assert "down_linear.weight [8, 15] (expected [8, 16])" in message
    assert "missing: middle_block.1.transformer_blocks.0.cross_attn_adapter.up_linear.bias" in (
        message
    )
