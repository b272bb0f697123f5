"""Bases: built-ins registered on first use, local diffusers folders, offline Hub ids."""

import json

from dvkit.bases import open_base
from dvkit.models.loading import load_base
from dvkit.models.tiny import build_tiny_base


def _save_diffusers_folder(folder):
    base = build_tiny_base()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(base, part).save_pretrained(folder / part)
    return base


def test_add_local_folder_keeps_fingerprint_and_becomes_default(cli, home, tmp_path) -> None:
    _save_diffusers_folder(tmp_path / "t2v")
    code, out, err = cli("--home", home, "base", "add", "local-tiny", tmp_path / "t2v")
    assert code == 0, err
    fingerprint = load_base(str(tmp_path / "t2v")).fingerprint()
    assert f"added base local-tiny (modelscope-t2v, {fingerprint[:12]})" in out
    code, out, _ = cli("--home", home, "base", "show", "local-tiny", "--json")
    shown = json.loads(out)
    assert shown["fingerprint"] == fingerprint and shown["source"] == str(tmp_path / "t2v")
    code, out, _ = cli("--home", home, "base", "list")
    assert out.splitlines()[1].startswith("local-tiny *")
    _save_diffusers_folder(tmp_path / "second")
    cli("--home", home, "base", "add", "second", tmp_path / "second")
    assert cli("--home", home, "base", "default")[1].splitlines() == [
        "local-tiny",
        "($DVKIT_BASE=tiny is used instead while it is set)",
    ]


def test_open_base_registers_builtin_once(catalog) -> None:
    components, record = open_base(catalog, "tiny")
    assert record.builtin and record.fingerprint == components.fingerprint()
    _, again = open_base(catalog, "tiny")
    assert again.fingerprint == record.fingerprint
    assert [row["name"] for row in catalog.base_rows()] == ["tiny"]


def test_base_list_shows_unused_builtins(cli, home) -> None:
    code, out, _ = cli("--home", home, "base", "list", "--json")
    assert [row["name"] for row in json.loads(out)] == [
        "tiny",
        "tiny-animatediff",
        "tiny-wan",
        "tiny-wan22",
        "sprites",
        "sprites-wan",
    ]


def test_base_add_errors(cli, home, tmp_path, run_dvkit) -> None:
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-cache")}
    result = run_dvkit("--home", home, "base", "add", "ms", "ali-vilab/text-to-video-ms-1.7b",
                       env=offline)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert (
        "HF_HUB_OFFLINE" in lines[0] and "hf download ali-vilab/text-to-video-ms-1.7b" in lines[0]
    )
    (tmp_path / "not-a-model").mkdir()
    code, _, err = cli("--home", home, "base", "add", "x", tmp_path / "not-a-model")
    assert code == 1 and "not a diffusers text-to-video folder" in err
    code, _, err = cli("--home", home, "base", "add", "Bad", tmp_path / "not-a-model")
    assert code == 1 and "invalid base name" in err
    code, out, _ = cli("--home", home, "base", "list", "--json")
    assert [row["name"] for row in json.loads(out)] == [
        "tiny",
        "tiny-animatediff",
        "tiny-wan",
        "tiny-wan22",
        "sprites",
        "sprites-wan",
    ]  # nothing was added


def test_no_base_chosen_is_one_line_naming_the_ways_to_choose(cli, home, monkeypatch) -> None:
    monkeypatch.delenv("DVKIT_BASE")
    code, _, err = cli("--home", home, "compose", "--prompt", "a cat")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "dvkit base add" in err and "--base sprites" in err and "tiny-animatediff" in err
    code, _, err = cli("--home", home, "base", "default", "nope")
    assert code == 1 and "unknown base 'nope'" in err
    assert cli("--home", home, "base", "default", "sprites")[0] == 0
    assert cli("--home", home, "base", "default")[1].strip() == "sprites"
    code, out, _ = cli("--home", home, "base", "list", "--json")
    assert [row["name"] for row in json.loads(out) if row["default"]] == ["sprites"]


def test_training_defaults_come_from_the_base(catalog, tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from dvkit.train.api import add_motion

    clip = tmp_path / "clip"
    clip.mkdir()
    for index in range(10):
        pixels = np.zeros((32, 32, 3), "uint8")
        pixels[index : index + 8, 4:12] = 255
        Image.fromarray(pixels).save(clip / f"{index:02}.png")
    record = add_motion("slide", [clip], catalog=catalog, base="sprites", steps=1)
    assert (record.training["resolution"], record.training["frames"]) == (16, 8)
    assert record.training["image_encoder"] == "sprites" and record.training["offset_noise"] == 0
    from dvkit.models.builtin import training_defaults

    official = {"resolution": 256, "frames": 32, "fps": 8, "offset_noise": 0.1}  # the recipe's
    tiny = {**official, "offset_noise": 0.0, "resolution": 16}  # its VAE does not downsample
    assert training_defaults("tiny", "modelscope-t2v") == tiny
    assert training_defaults("ms", "modelscope-t2v") == official
    assert training_defaults("tiny-animatediff") == {
        "resolution": 16,
        "frames": 16,
        "fps": 8,
        "offset_noise": 0.0,
    }


def test_base_choice_errors_name_their_source(cli, home, monkeypatch, tmp_path) -> None:
    code, _, err = cli("--home", home, "base", "add", "x", tmp_path / "missing")
    assert code == 1 and f"no such file or folder: {tmp_path / 'missing'}" in err
    monkeypatch.setenv("DVKIT_BASE", "nope")
    code, _, err = cli("--home", home, "compose", "--prompt", "a cat")
    assert code == 1 and err.startswith("error: $DVKIT_BASE: unknown base 'nope'")
