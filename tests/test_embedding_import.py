"""Textual-inversion embeddings as people download them: import as token-only subjects, safety,
composing and benching them, and training an identity adapter on one (`--from-embedding`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dvkit.catalog import Catalog
from dvkit.io.adapter_file import load_adapter_tensors
from dvkit.io.embeddings import read_embedding
from dvkit.models.text import tokenize
from dvkit.models.textual_inversion import (
    apply_token_embedding,
    expand_placeholder,
    token_ids,
)
from dvkit.models.tiny import TEXT_WIDTH, build_tiny_base


def _vectors(count: int, seed: int = 0, width: int = TEXT_WIDTH) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def save_a1111_pt(path: Path, vectors: torch.Tensor, name: str) -> Path:
    """An AUTOMATIC1111 embedding as its `save_embedding` writes it (plain dicts, one '*')."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": name,
            "step": 1500,
            "sd_checkpoint": "abcdef12",
            "sd_checkpoint_name": "v1-5-pruned",
        },
        path,
    )
    return path


def _files(tmp_path: Path) -> dict[str, tuple[Path, torch.Tensor, str]]:
    """Each supported format: its file, its vectors and the token the import should give."""
    one, two, three = _vectors(1, 1), _vectors(2, 2), _vectors(1, 3)
    a1111_one = save_a1111_pt(tmp_path / "whatever.pt", one, "Toy Robot")
    a1111_two = save_a1111_pt(tmp_path / "two.pt", two, "pixel-art")
    emb_params = tmp_path / "Old_Lamp.safetensors"
    save_file({"emb_params": two}, emb_params)
    diffusers = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-toy>": three[0]}, diffusers)
    diffusers_bin = tmp_path / "learned_embeds.bin"
    torch.save({"<my_dog>": three}, diffusers_bin)
    return {
        "a1111-1": (a1111_one, one, "<toy-robot>"),
        "a1111-2": (a1111_two, two, "<pixel-art>"),
        "a1111-safetensors": (emb_params, two, "<old_lamp>"),
        "diffusers-safetensors": (diffusers, three, "<cat-toy>"),
        "diffusers-bin": (diffusers_bin, three, "<my_dog>"),
    }


def _catalog_state(home: Path) -> tuple[list, list]:
    with Catalog.open(home) as catalog:
        rows = catalog.adapter_rows(all_versions=True)
    return rows, sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())


def _one_error_line(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]


def _stored(home: Path, ref: str):
    with Catalog.open(home) as catalog:
        record = catalog.show(ref)
        return record, load_adapter_tensors(catalog.read_blob(record.blob))


def _encode(base, prompt: str, token: str | None = None, vectors: int = 1) -> torch.Tensor:
    text = expand_placeholder(prompt, token, vectors) if token else prompt
    with torch.no_grad():
        return base.text_encoder(tokenize(base.tokenizer, [text]))[0]


@pytest.mark.parametrize(
    "fmt", ["a1111-1", "a1111-2", "a1111-safetensors", "diffusers-safetensors", "diffusers-bin"]
)
def test_import_changes_the_token_encoding_exactly_as_the_file_says(cli, home, tmp_path, fmt):
    path, vectors, token = _files(tmp_path)[fmt]
    name = token.strip("<>")
    code, out, err = cli("--home", home, "import", path, "--base", "tiny")
    assert code == 0, err
    assert out.strip() == f"{path}: imported as {name}@1 (token-only subject {token}, base tiny)"
    record, stored = _stored(home, name)
    assert (record.kind, record.token, record.placement) == ("subject", token, [])
    assert record.num_vectors == len(vectors) and record.params == vectors.numel()
    assert stored.adapters == {} and torch.equal(stored.token_embedding, vectors)

    base = build_tiny_base()
    plain = _encode(base, "a photo")
    ids = apply_token_embedding(base.tokenizer, base.text_encoder, token, stored.token_embedding)
    rows = base.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows, vectors)
    assert torch.equal(_encode(base, "a photo"), plain)  # other words encode as before

    # By hand: the same ids with the placeholders' looked-up rows replaced by the file's vectors.
    imported = _encode(base, f"a {token} photo", token, len(vectors))
    hand = build_tiny_base()
    text = expand_placeholder(f"a {token} photo", token, len(vectors))
    input_ids = tokenize(base.tokenizer, [text])
    where = torch.isin(input_ids, torch.tensor(token_ids(base.tokenizer, token)))
    assert int(where.sum()) == len(vectors)
    filler = input_ids.masked_fill(where, int(input_ids[0, 1]))

    def splice(_module, _args, output):
        output = output.clone()
        output[where] = vectors
        return output

    hand.text_encoder.get_input_embeddings().register_forward_hook(splice)
    with torch.no_grad():
        expected = hand.text_encoder(filler)[0]
    torch.testing.assert_close(imported, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(imported, _encode(build_tiny_base(), "a a photo"))


def test_name_token_and_options(cli, home, tmp_path) -> None:
    files = _files(tmp_path)
    path, vectors, _ = files["a1111-2"]
    code, out, err = cli(
        "--home", home, "import", path, "--base", "tiny", "--name", "pix", "--token", "<px>",
        "--tag", "ti", "--description", "from the web",
    )  # fmt: skip
    assert code == 0, err
    record, stored = _stored(home, "pix")
    assert (record.token, record.tags, record.description) == ("<px>", ["ti"], "from the web")
    assert record.training["format"] == "a1111" and record.training["embedding_step"] == 1500
    assert record.training["embedding_name"] == "pixel-art"
    code, out, _ = cli("--home", home, "import", path, "--base", "tiny", "--name", "pix",
                       "--token", "<px>")  # fmt: skip
    assert code == 0 and "already in the catalog as pix@1 (same weights)" in out
    # Content, not extension, tells the format: an A1111 file named .bin, a diffusers one .pt.
    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(files["a1111-1"][0].read_bytes())
    assert read_embedding(renamed).format == "a1111"
    odd = tmp_path / "odd.pt"
    odd.write_bytes(files["diffusers-safetensors"][0].read_bytes())
    embedding = read_embedding(odd)
    assert embedding.format == "diffusers" and embedding.default_name == "cat-toy"
    code, out, err = cli("--home", home, "import", renamed, odd, "--base", "tiny")
    assert code == 0, err
    assert "imported as toy-robot@1" in out and "imported as cat-toy@1" in out


def test_wrong_width_and_broken_files_are_one_line_and_change_nothing(cli, home, tmp_path):
    cli("--home", home, "import", _files(tmp_path)["a1111-1"][0], "--base", "tiny")
    before = _catalog_state(home)
    wide = save_a1111_pt(tmp_path / "wide.pt", _vectors(1, width=768), "wide")
    two = tmp_path / "two.safetensors"
    save_file({"clip_g": _vectors(1, width=1280), "clip_l": _vectors(1, width=768)}, two)
    ints = tmp_path / "ints.bin"
    torch.save({"<x>": torch.ones(3, dtype=torch.int64)}, ints)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(wide.read_bytes()[:200])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights at all")
    nan = save_a1111_pt(tmp_path / "nan.pt", torch.full((1, TEXT_WIDTH), float("nan")), "nan")
    clash = save_a1111_pt(tmp_path / "clash.pt", _vectors(1), "a")
    cases = [
        ((wide, "--base", "tiny"),
         "embedding width 768 does not fit base tiny's text encoder (width 32)"),
        ((wide,), "embedding width 768 does not fit base tiny's text encoder (width 32)"),
        ((two, "--base", "tiny"), "holds 2 learned embeddings ('clip_g', 'clip_l')"),
        ((ints, "--base", "tiny"), "is torch.int64, not floats"),
        ((cut, "--base", "tiny"), "not a readable PyTorch checkpoint"),
        ((junk, "--base", "tiny"), "unsupported file type '.bin' (neither a safetensors nor"),
        ((nan, "--base", "tiny"), "holds NaN or infinite values"),
        ((clash, "--base", "tiny", "--token", "a"), "the tokenizer already has a token 'a'"),
        ((wide, "--base", "tiny", "--embedding", wide), "--embedding pairs an official"),
        ((wide, "--base", "nosuchbase"), "unknown base 'nosuchbase'"),
        ((wide, "--base", "tiny", "--name", "Bad"), "invalid name 'Bad'"),
    ]  # fmt: skip
    for args, expected in cases:
        _one_error_line(*cli("--home", home, "import", *args)[::2], expected)
        assert _catalog_state(home) == before


class _Payload:
    """Unpickling this runs `exec`, which would write the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class _Custom:
    pass


def test_pickled_objects_are_refused_without_running(cli, home, tmp_path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Payload(marker)}, "name": "evil"}, evil)
    custom = tmp_path / "custom.pt"
    torch.save({"string_to_param": {"*": _vectors(1)}, "name": _Custom()}, custom)
    before = _catalog_state(home)
    for path, what in ((evil, "(exec)"), (custom, "_Custom")):
        code, _, err = cli("--home", home, "import", path, "--base", "tiny")
        _one_error_line(code, err, "refused: the file holds Python objects other than tensors")
        assert what in err and "never runs code" in err
    assert not marker.exists()
    assert _catalog_state(home) == before


@pytest.fixture(scope="module")
def with_motion(tmp_path_factory):
    """A catalog with an imported token-only subject `toy` and a quickly trained motion."""
    import imageio.v3 as iio

    from dvkit.io.embeddings import import_embedding
    from dvkit.train.api import add_motion

    root = tmp_path_factory.mktemp("ti")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        clip = (rng.random((6, 16, 16, 3)) * 255).astype("uint8")
        iio.imwrite(videos / f"{index}.mp4", clip, plugin="FFMPEG", fps=8)
    images = _image_folder(root)
    pt = save_a1111_pt(root / "toy.pt", _vectors(2, 5), "toy")
    catalog, _ = Catalog.init(root / "registry")
    with catalog:
        result = import_embedding(catalog, pt, base="tiny", references=[images])
        assert result.adapter.token == "<toy>"
        add_motion("surfing", [videos], catalog=catalog, preset="quick", steps=2, frames=3)
    return root


def _image_folder(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):
        pixels = (rng.random((16, 16, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(images / f"{index}.png")
    return images


def test_compose_and_bench_with_a_token_only_subject(with_motion, tmp_path) -> None:
    from dvkit.evaluate.grid import bench
    from dvkit.generate.compose import compose

    with Catalog.open(with_motion / "registry") as catalog:
        assert catalog.show("toy").training["reference_files"] == ["0.png", "1.png", "2.png"]
        both = compose("toy", "surfing", catalog=catalog, steps=2, frames=3, record=False,
                       out=tmp_path / "both.gif")  # fmt: skip
        assert both.prompt == "a <toy> surfing" and both.frames.shape[:2] == (1, 3)
        # The subject acts through its token only: its scale changes nothing.
        alone = compose("toy", None, catalog=catalog, steps=2, frames=3, record=False,
                        out=tmp_path / "a.gif")  # fmt: skip
        scaled = compose("toy", None, catalog=catalog, steps=2, frames=3, record=False,
                         subject_scale=5.0, out=tmp_path / "b.gif")  # fmt: skip
        assert np.array_equal(alone.frames, scaled.frames)
        plain = compose(None, None, "a surfing", catalog=catalog, steps=2, frames=3,
                        record=False, out=tmp_path / "c.gif")  # fmt: skip
        assert not np.array_equal(alone.frames, plain.frames)
        grid = bench(catalog, ["toy"], ["surfing"], steps=2, frames=3, clip="tiny", dino="tiny",
                     device="cpu")  # fmt: skip
    roles = sorted(row["sampler"]["role"] for row in grid.rows)
    assert roles == ["base", "joint", "motion", "subject"]
    assert {row["sampler"]["height"] for row in grid.rows} == {16}  # the motion's size


def test_from_embedding_trains_only_the_identity_adapter(cli, with_motion, tmp_path) -> None:
    home = with_motion / "registry"
    images = with_motion / "images"
    pt = with_motion / "toy.pt"
    fixed = torch.load(pt, weights_only=True)["string_to_param"]["*"]
    code, out, err = cli(
        "--home", home, "add-subject", "robot", "--images", images, "--from-embedding", "toy",
        "--preset", "quick", "--identity-steps", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "token vectors: from toy (kept fixed)" in out
    record, stored = _stored(home, "robot")
    assert record.token == "<robot>" and record.placement == ["attn2"]
    assert torch.equal(stored.token_embedding, fixed)
    assert stored.adapters and any(
        name.endswith("up.weight") and bool(value.abs().sum() > 0)
        for name, value in stored.adapters.items()
    )
    assert record.training["inversion_steps"] == 0 and record.training["num_vectors"] == 2
    assert record.training["from_embedding"]["subject"] == "toy@1"
    with Catalog.open(home) as catalog:
        run = catalog.run_row(record.run_id)
    assert set(run["loss_curves"]) == {"identity"}

    from dvkit.train.api import add_subject

    with Catalog.open(home) as catalog:
        from_file = add_subject("lamp", [images], catalog=catalog, preset="quick",
                                identity_steps=2, from_embedding=pt)  # fmt: skip
        _, lamp = _stored(home, from_file.ref)
    assert torch.equal(lamp.token_embedding, fixed)
    assert from_file.training["from_embedding"]["format"] == "a1111"

    wide = save_a1111_pt(tmp_path / "wide.pt", _vectors(1, width=768), "wide")
    before = _catalog_state(home)
    cases = [
        (("--from-embedding", "toy", "--vectors", "2"), "--vectors applies to textual inversion"),
        (("--from-embedding", wide), "embedding width 768 does not fit base tiny's text encoder"),
        (("--from-embedding", "surfing"), "surfing@1 is a motion adapter"),
        (("--from-embedding", "nobody"), "no adapter named 'nobody'"),
        (("--from-embedding", tmp_path / "missing.pt"), "no such file"),
    ]
    for args, expected in cases:
        code, _, err = cli("--home", home, "add-subject", "other", "--images", images,
                           "--preset", "quick", *args)  # fmt: skip
        _one_error_line(code, err, expected)
    assert _catalog_state(home) == before


def test_from_embedding_of_another_base_warns(cli, with_motion) -> None:
    home = with_motion / "registry"
    code, _, err = cli(
        "--home", home, "add-subject", "robot-ad", "--images", with_motion / "images",
        "--from-embedding", "toy", "--base", "tiny-animatediff", "--preset", "quick",
        "--resolution", "8", "--identity-steps", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "warning: --from-embedding toy: its vectors were learnt on base tiny, not " in err


def test_token_only_subject_exports_and_reimports(cli, with_motion, tmp_path) -> None:
    home = tmp_path / "copy"
    import shutil

    shutil.copytree(with_motion / "registry", home)
    out = tmp_path / "toy.safetensors"
    assert cli("--home", home, "export", "toy", "--out", out)[0] == 0
    fresh = tmp_path / "fresh"
    assert cli("init", fresh)[0] == 0
    code, text, err = cli("--home", fresh, "import", out)
    assert code == 0, err
    assert "imported as toy@1 (token-only subject <toy>, base tiny)" in text
    code, shown, _ = cli("--home", fresh, "show", "toy", "--json")
    assert json.loads(shown)["placement"] == []


def test_dreamvideo_embedding_alone_is_a_token_only_subject(cli, home, tmp_path) -> None:
    """VGen's `text_embedding_of_NAME_STEP.pth` pickles an nn.ParameterDict (allowed)."""
    from torch import nn

    params = nn.ParameterDict({"*": nn.Parameter(_vectors(1, 7))})
    path = tmp_path / "text_embedding_of_dog2_0003000.pth"
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, path)
    code, out, err = cli("--home", home, "import", path, "--base", "tiny")
    assert code == 0, err
    assert "imported as dog2@1 (token-only subject <dog2>, base tiny)" in out
    record, stored = _stored(home, "dog2")
    assert (record.training["format"], record.training["embedding_step"]) == ("dreamvideo", 3000)
    assert torch.equal(stored.token_embedding, params["*"].detach())
    code, shown, _ = cli("--home", home, "show", "dog2")
    assert code == 0 and "none (token-only subject" in shown


def test_a_safetensors_header_length_starting_with_0x80_is_not_a_pickle(tmp_path) -> None:
    from dvkit.io.embeddings import container

    path = tmp_path / "odd.bin"
    path.write_bytes(struct.pack("<Q", 0x80) + b"{" + b" " * 0x7F)
    assert container(path) == "safetensors"
    pickled = tmp_path / "p.bin"
    torch.save({"<x>": _vectors(1)}, pickled, _use_new_zipfile_serialization=False)
    assert container(pickled) == "torch"
