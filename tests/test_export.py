"""Export: single adapters (round trip through rm and import) and merged subject + motion files."""

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load, load_file

from dvkit.catalog import Catalog
from dvkit.catalog.records import AdapterRecord
from dvkit.cli import export_commands
from dvkit.errors import AdapterFileError, ConflictError, DvkitError
from dvkit.io import export as export_module
from dvkit.io.adapter_file import read_adapter_info
from dvkit.io.export import export_adapter, export_merged, load_merged
from dvkit.models import builtin


def _one_error_line(code: int, err: str, expected: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], err


@pytest.fixture
def pair(cli, home, make_adapter):
    """A subject `cat` and a motion `surfing` on the same base, imported from files."""
    files = {"cat": make_adapter("cat", "subject"), "surfing": make_adapter("surfing", "motion")}
    for path in files.values():
        assert cli("--home", home, "import", path)[0] == 0
    return files


def _data_hash(path) -> str:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return "0x" + hashlib.sha256(raw[8 + length :]).hexdigest()


def test_export_rm_import_round_trip_is_bit_identical(cli, home, pair, tmp_path) -> None:
    out = tmp_path / "out" / "cat.safetensors"
    out.parent.mkdir()
    code, stdout, err = cli("--home", home, "export", "cat", "--out", out)
    assert code == 0, err
    assert f"exported cat@1 to {out}" in stdout
    assert out.read_bytes() == pair["cat"].read_bytes()
    with Catalog.open(home) as catalog:
        before = catalog.show("cat")
    info = read_adapter_info(out)
    assert info.weights_hash == before.weights_hash == _data_hash(out)
    assert cli("--home", home, "rm", "cat")[0] == 0
    code, stdout, _ = cli("--home", home, "import", out)
    assert code == 0 and "imported as cat@1" in stdout
    with Catalog.open(home) as catalog:
        after = catalog.show("cat")
        tensors = load(catalog.read_blob(after.blob))
    assert after.weights_hash == before.weights_hash and after.blob == before.blob
    original = load_file(pair["cat"])
    assert tensors.keys() == original.keys()
    assert all(torch.equal(tensors[key], original[key]) for key in original)


def test_export_a_kept_checkpoint(catalog, make_adapter, tmp_path) -> None:
    final, early = make_adapter("cat", seed=1), make_adapter("cat", seed=2)
    info, early_info = read_adapter_info(final), read_adapter_info(early)
    staged, staged_early = catalog.blobs.stage_file(final), catalog.blobs.stage_file(early)
    record = AdapterRecord(
        kind="subject", name="cat", base="tiny", base_fingerprint=info.base_fingerprint,
        token="<cat>", blob=staged.sha256, size=staged.size, weights_hash=info.weights_hash,
        params=info.params,
    )  # fmt: skip
    catalog.register(record, staged, checkpoints={10: (staged_early, early_info.weights_hash)})
    result = export_adapter(catalog, "cat", tmp_path / "early.safetensors", step=10)
    assert (tmp_path / "early.safetensors").read_bytes() == early.read_bytes()
    assert result.refs == ["cat@1 step 10"] and result.weights_hash == early_info.weights_hash
    with pytest.raises(DvkitError, match=r"no checkpoint at step 3 \(kept steps: 10\)"):
        export_adapter(catalog, "cat", tmp_path / "x.safetensors", step=3)


def test_merged_export_holds_both_parts_and_the_recipe(cli, home, pair, tmp_path) -> None:
    out = tmp_path / "pair.safetensors"
    code, stdout, err = cli("--home", home, "export", "--merged", "--subject", "cat",
                            "--motion", "surfing", "--out", out, "--subject-scale", "0.8",
                            "--motion-scale", "1.2", "--guidance", "7.5", "--image-strength",
                            "0.9", "--image-strength-uncond", "0.5", "--steps", "25",
                            "--motion-until", "0.3")  # fmt: skip
    assert code == 0, err
    assert "exported cat@1 + surfing@1" in stdout
    tensors = load_file(out)
    cat, surfing = load_file(pair["cat"]), load_file(pair["surfing"])
    assert set(tensors) == {f"subject.{k}" for k in cat} | {f"motion.{k}" for k in surfing}
    assert all(torch.equal(tensors[f"subject.{k}"], v) for k, v in cat.items())
    assert all(torch.equal(tensors[f"motion.{k}"], v) for k, v in surfing.items())
    assert "subject.token_embedding" in tensors
    with safe_open(out, "pt") as handle:
        meta = handle.metadata()
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "dvkit-tiny/dreamvideo-pair"
    assert meta["modelspec.title"] == "cat@1 + surfing@1"
    assert meta["modelspec.trigger_phrase"] == "<cat>"
    assert meta["modelspec.hash_sha256"] == _data_hash(out)
    assert meta["dvkit.kind"] == "merged" and meta["modelspec.date"]
    recipe = json.loads(meta["dvkit.recipe"])
    assert recipe["base"] == {
        "name": "tiny", "fingerprint": "tiny-fingerprint", "architecture": "dvkit-tiny"
    }  # fmt: skip
    assert (recipe["guidance_scale"], recipe["image_strength"], recipe["image_strength_uncond"],
            recipe["steps"], recipe["token"], recipe["motion_until"]) == (
        7.5, 0.9, 0.5, 25, "<cat>", 0.3)  # fmt: skip
    subject, motion = recipe["subject"], recipe["motion"]
    assert (subject["name"], subject["version"], subject["step"], subject["scale"]) == (
        "cat", 1, None, 0.8)  # fmt: skip
    assert (motion["name"], motion["version"], motion["scale"]) == ("surfing", 1, 1.2)
    assert subject["hidden_ratio"] == motion["hidden_ratio"] == 0.5
    assert subject["metadata"]["dvkit.kind"] == "subject"
    assert subject["metadata"]["dvkit.training"] == '{"steps": 10}'
    assert subject["weights_hash"] == read_adapter_info(pair["cat"]).weights_hash

    merged = load_merged(out)
    assert merged.token == "<cat>" and merged.base == "tiny"
    assert (merged.subject_scale, merged.motion_scale, merged.guidance_scale) == (0.8, 1.2, 7.5)
    assert (merged.image_strength, merged.image_strength_uncond, merged.steps) == (0.9, 0.5, 25)
    assert merged.motion_until == 0.3
    assert merged.weights_hash == meta["modelspec.hash_sha256"]
    assert torch.equal(merged.token_embedding, cat["token_embedding"])
    assert merged.subject_tensors.keys() == cat.keys() - {"token_embedding"}
    assert merged.motion_tensors.keys() == surfing.keys()
    assert (merged.subject_info.name, merged.subject_info.token) == ("cat", "<cat>")
    assert (merged.motion_info.kind, merged.motion_info.training) == ("motion", {"steps": 10})
    assert merged.subject_info.num_vectors == 1

    _one_error_line(*cli("--home", home, "import", out)[::2], "a merged subject + motion export")


def test_merged_defaults_are_the_bases_own(catalog, pair, tmp_path) -> None:
    export_merged(catalog, "cat", "surfing", tmp_path / "p.safetensors")
    merged = load_merged(tmp_path / "p.safetensors")
    # the fixture's family is unknown here: the ModelScope family's defaults, tiny's own offset
    assert (merged.guidance_scale, merged.steps) == (9.0, 50)
    assert (merged.motion_until, merged.offset_noise) == (0.0, 0.0)
    assert (merged.subject_scale, merged.motion_scale) == (1.0, 1.0)
    assert (merged.image_strength, merged.image_strength_uncond) == (1.0, 1.0)
    assert not hasattr(export_module, "DEFAULT_GUIDANCE_SCALE")
    assert not hasattr(export_commands, "GUIDANCE_SCALE")


def test_a_merged_sprites_pair_records_the_sprites_sampling_defaults(
    catalog, make_adapter, tmp_path
) -> None:
    from dvkit.io.adapter_file import read_adapter_info

    for name, kind in (("tri", "subject"), ("zig", "motion")):
        path = make_adapter(name, kind, base="sprites")
        info = read_adapter_info(path)
        staged = catalog.blobs.stage_file(path)
        catalog.register(AdapterRecord(
            kind=kind, name=name, base="sprites", base_fingerprint=info.base_fingerprint,
            architecture="sprites-pixel-t2v", token=info.token, placement=info.placement,
            hidden_ratio=info.hidden_ratio, blob=staged.sha256,
            size=staged.size, weights_hash=info.weights_hash, params=info.params,
        ), staged)  # fmt: skip
    export_merged(catalog, "tri", "zig", tmp_path / "p.safetensors")
    merged = load_merged(tmp_path / "p.safetensors")
    expected = [builtin.sampling_default("sprites", key)
                for key in ("steps", "guidance", "motion_until", "offset_noise")]  # fmt: skip
    assert expected == [25, 2.0, 0.4, 0.0]
    assert [merged.steps, merged.guidance_scale, merged.motion_until,
            merged.offset_noise] == expected  # fmt: skip
    export_merged(catalog, "tri", "zig", tmp_path / "q.safetensors", steps=7, guidance_scale=3.0)
    given = load_merged(tmp_path / "q.safetensors")
    assert (given.steps, given.guidance_scale, given.motion_until) == (7, 3.0, 0.4)


def test_merging_adapters_of_different_bases_is_refused(cli, home, make_adapter, tmp_path) -> None:
    cli("--home", home, "import", make_adapter("cat", "subject", base="tiny"))
    cli("--home", home, "import", make_adapter("surfing", "motion", base="other"))
    out = tmp_path / "pair.safetensors"
    code, _, err = cli("--home", home, "export", "--merged", "--subject", "cat", "--motion",
                       "surfing", "--out", out)  # fmt: skip
    _one_error_line(code, err, "trained on different bases (tiny tiny-fingerp")
    assert "other other-finger" in err and not out.exists()
    with Catalog.open(home) as catalog, pytest.raises(ConflictError):
        export_merged(catalog, "cat", "surfing", out)


def test_export_errors_are_one_line(cli, home, pair, tmp_path) -> None:
    good = tmp_path / "cat.safetensors"
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "a-file").write_text("x")
    merged = ("--merged", "--subject", "cat", "--motion", "surfing")
    cases = [
        (("cat", "--out", tmp_path / "cat.pt"), "must end in .safetensors"),
        (("cat", "--out", tmp_path / "cat.ckpt"), "must end in .safetensors"),
        (("cat", "--out", tmp_path / "missing" / "cat.safetensors"), "does not exist"),
        (("cat", "--out", tmp_path / "a-file" / "cat.safetensors"), "is not a folder"),
        (("cat", "--out", tmp_path / "folder.safetensors"), "it is a folder"),
        (("dog", "--out", good), "no adapter named 'dog'"),
        (("cat", "--out", good, "--step", "5"), "no checkpoint at step 5"),
        (("--out", good), "name the adapter to export"),
        (("cat", "--out", good, "--subject", "cat"), "--subject applies to merged exports"),
        ((*merged, "cat", "--out", good), "not REF or --step"),
        (("--merged", "--subject", "cat", "--out", good), "needs both --subject REF"),
        (("--merged", "--subject", "surfing", "--motion", "cat", "--out", good),
         "surfing@1 is a motion adapter, not a subject adapter"),
        ((*merged, "--out", good, "--steps", "0"), "'0' is not a whole number from 1 to 1000"),
        ((*merged, "--out", good, "--guidance", "-1"), "finite number from 0 to 100"),
        ((*merged, "--out", good, "--motion-scale", "nan"), "'nan' is not a finite number"),
        ((*merged, "--out", good, "--motion-until", "1.5"), "'1.5' is not a finite number"),
        (("cat", "--out", good, "--motion-until", "0.4"), "--motion-until applies to merged"),
        ((*merged, "--out", tmp_path / "nowhere" / "p.safetensors"), "does not exist"),
    ]  # fmt: skip
    for args, expected in cases:
        _one_error_line(*cli("--home", home, "export", *args)[::2], expected)
        assert not good.exists(), args
    assert cli("--home", home, "export", "cat", "--out", good)[0] == 0
    _one_error_line(*cli("--home", home, "export", "cat", "--out", good)[::2], "--force")
    assert cli("--home", home, "export", "surfing", "--out", good, "--force")[0] == 0
    assert read_adapter_info(good).kind == "motion"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _one_error_line(
            *cli("--home", home, "export", "cat", "--out", locked / "c.safetensors")[::2],
            "is not writable",
        )
    assert not list(tmp_path.glob(".*.part"))


def _rewrite(path, change) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def test_load_merged_says_what_is_wrong(catalog, pair, tmp_path) -> None:
    source = tmp_path / "pair.safetensors"
    export_merged(catalog, "cat", "surfing", source)
    with pytest.raises(AdapterFileError, match="a single subject adapter file"):
        load_merged(pair["cat"])

    def broken(name, change):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(source.read_bytes())
        _rewrite(path, change)
        return path

    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray(source.read_bytes())
    data[-3] ^= 0x55
    corrupt.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="corrupt merged export"):
        load_merged(corrupt)

    def drop_recipe(header):
        del header["__metadata__"]["dvkit.recipe"]

    def bad_recipe(header):
        header["__metadata__"]["dvkit.recipe"] = "{not json"

    def no_guidance(header):
        recipe = json.loads(header["__metadata__"]["dvkit.recipe"])
        del recipe["guidance_scale"]
        header["__metadata__"]["dvkit.recipe"] = json.dumps(recipe)

    def bad_until(header):
        recipe = json.loads(header["__metadata__"]["dvkit.recipe"])
        recipe["motion_until"] = 1.5
        header["__metadata__"]["dvkit.recipe"] = json.dumps(recipe)

    def newer(header):
        header["__metadata__"]["dvkit.format"] = "99"

    def other_base(header):
        header["__metadata__"]["dvkit.base_fingerprint"] = "elsewhere"

    for name, change, expected in (
        ("drop", drop_recipe, "header lacks dvkit.recipe"),
        ("bad", bad_recipe, "unreadable dvkit.recipe"),
        ("noguide", no_guidance, "no numeric guidance_scale"),
        ("until", bad_until, "motion_until is not a fraction"),
        ("newer", newer, "newer than this dvkit reads"),
        ("base", other_base, "recipe's base does not match"),
    ):
        with pytest.raises(AdapterFileError, match=expected):
            load_merged(broken(name, change))


@pytest.fixture
def media(tmp_path):
    import imageio.v3 as iio

    images, videos = tmp_path / "images", tmp_path / "videos"
    images.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype("uint8")).save(
            images / f"{index}.png"
        )
    frames = (rng.random((6, 32, 32, 3)) * 255).astype("uint8")
    iio.imwrite(videos / "0.mp4", frames, plugin="FFMPEG", fps=8)
    return images, videos


def test_merged_export_of_trained_adapters_loads_onto_the_base(catalog, media, tmp_path) -> None:
    from dvkit.models.injection import AdapterWeights
    from dvkit.models.tiny import build_tiny_base
    from dvkit.train.api import add_motion, add_subject

    images, videos = media
    add_subject("cat", [images], catalog=catalog, preset="quick", inversion_steps=2,
                identity_steps=2, keep_steps=[1])  # fmt: skip
    add_motion("surf", [videos], catalog=catalog, preset="quick", steps=2)
    out = tmp_path / "pair.safetensors"
    export_merged(catalog, "cat", "surf", out, subject_step=1)
    merged = load_merged(out)
    assert merged.recipe["subject"]["step"] == 1
    assert merged.base_fingerprint == catalog.show("cat").base_fingerprint
    unet = build_tiny_base().unet
    AdapterWeights.from_tensors(unet, "subject", merged.subject_tensors)
    AdapterWeights.from_tensors(unet, "motion", merged.motion_tensors)
    assert merged.token_embedding.shape == (1, 32) and merged.token == "<cat>"
    stored = load(catalog.read_blob(catalog.checkpoint_steps("cat")[1]))
    if "reference_images" in stored:  # subject files may carry their training images
        assert torch.equal(merged.reference_images, stored["reference_images"])
    else:
        assert merged.reference_images is None
