"""Subject and motion training on the tiny base: what changes, resume, errors, the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.catalog import Catalog
from dvkit.errors import DvkitError
from dvkit.io.adapter_file import read_adapter_info
from dvkit.models.image_encoder import load_image_encoder
from dvkit.models.tiny import build_tiny_base
from dvkit.train.api import add_motion, add_subject
from dvkit.train.loop import SilentReporter, TrainingInterrupted
from dvkit.train.motion import train_motion
from dvkit.train.settings import QUICK, MotionSettings, SubjectSettings
from dvkit.train.subject import train_subject

CPU = torch.device("cpu")
FAST_SUBJECT = {"inversion_steps": 6, "identity_steps": 6, "checkpoint_every": 2}
FAST_MOTION = {"steps": 6, "checkpoint_every": 2}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = (rng.random((24, 20, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def videos(tmp_path):
    import imageio.v3 as iio

    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(2):
        frames = (rng.random((6, 32, 32, 3)) * 255).astype("uint8")
        iio.imwrite(folder / f"{index}.mp4", frames, plugin="FFMPEG", fps=8)
    return folder


class InterruptAt:
    """A reporter that presses Ctrl-C after the n-th step of the whole run."""

    def __init__(self, after: int) -> None:
        self.left = after

    def start(self, stage, total, completed):
        pass

    def step(self, loss):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt

    def end(self):
        pass


def _subject_settings(**extra):
    return SubjectSettings(**{**QUICK["subject"], **FAST_SUBJECT, "token": "<cat>",
                              "initializer": "cat", **extra})  # fmt: skip


def test_subject_training_changes_only_adapters_and_new_rows(tmp_path) -> None:
    base = build_tiny_base()
    reference = build_tiny_base()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    result = train_subject(base, pixels, None, _subject_settings(), CPU, torch.float32,
                           tmp_path / "run", SilentReporter())  # fmt: skip
    for model in ("unet", "vae"):
        after, before = getattr(base, model).state_dict(), getattr(reference, model).state_dict()
        assert all(torch.equal(after[key], before[key]) for key in before)
    after = base.text_encoder.state_dict()
    for key, value in reference.text_encoder.state_dict().items():
        if key.endswith("token_embedding.weight"):
            assert torch.equal(after[key][: len(value)], value)  # every old row bit-identical
            assert torch.equal(after[key][len(value) :], result.embedding)
        else:
            assert torch.equal(after[key], value)
    cat = reference.text_encoder.get_input_embeddings().weight[
        reference.tokenizer.convert_tokens_to_ids("cat</w>")
    ]
    assert not torch.equal(result.embedding[0], cat)  # the new row did train
    assert any(t.abs().sum() > 0 for k, t in result.identity.items() if ".up." in k)
    assert not list(base.unet._forward_hooks.values())  # adapters detached afterwards


def test_masked_identity_loss_ignores_background(tmp_path) -> None:
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = torch.zeros(2, 1, 16, 16)
    settings = _subject_settings(inversion_steps=0, identity_steps=3, use_masks=True)
    result = train_subject(build_tiny_base(), pixels, masks, settings, CPU, torch.float32,
                           tmp_path / "run", SilentReporter())  # fmt: skip
    assert [loss for _, loss in result.loss_curves["identity"]] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("interrupt_after", [3, 9])  # inside stage 1, inside stage 2
def test_subject_resume_gives_the_same_weights(tmp_path, interrupt_after) -> None:
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    settings = _subject_settings(keep_steps=[4])
    straight = train_subject(build_tiny_base(), pixels, None, settings, CPU, torch.float32,
                             tmp_path / "a", SilentReporter())  # fmt: skip
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_subject(build_tiny_base(), pixels, None, settings, CPU, torch.float32,
                      tmp_path / "b", InterruptAt(interrupt_after))  # fmt: skip
    resumed = train_subject(build_tiny_base(), pixels, None, settings, CPU, torch.float32,
                            tmp_path / "b", SilentReporter(), resume=True)  # fmt: skip
    assert torch.equal(straight.embedding, resumed.embedding)
    assert all(torch.equal(straight.identity[k], resumed.identity[k]) for k in straight.identity)
    assert all(torch.equal(straight.kept[4][k], resumed.kept[4][k]) for k in straight.kept[4])
    assert straight.loss_curves == resumed.loss_curves


def test_motion_resume_gives_the_same_weights(tmp_path) -> None:
    clips = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    settings = MotionSettings(**{**QUICK["motion"], **FAST_MOTION, "image_encoder": "tiny"})
    encoder = load_image_encoder("tiny")
    straight = train_motion(build_tiny_base(), clips, encoder, settings, CPU, torch.float32,
                            tmp_path / "a", SilentReporter())  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        train_motion(build_tiny_base(), clips, encoder, settings, CPU, torch.float32,
                     tmp_path / "b", InterruptAt(3))  # fmt: skip
    resumed = train_motion(build_tiny_base(), clips, encoder, settings, CPU, torch.float32,
                           tmp_path / "b", SilentReporter(), resume=True)  # fmt: skip
    assert all(torch.equal(straight.tensors[k], resumed.tensors[k]) for k in straight.tensors)
    conds = [k for k in straight.tensors if k.endswith("cond.weight")]
    assert conds and all(straight.tensors[k].shape[1] == encoder.embed_dim for k in conds)


def test_add_subject_registers_adapter_run_and_checkpoints(catalog, images) -> None:
    record = add_subject("cat", [images], catalog=catalog, preset="quick", keep_steps=[2, 4],
                         tags=["pet"], **FAST_SUBJECT)  # fmt: skip
    assert (record.ref, record.kind, record.token, record.base) == (
        "cat@1",
        "subject",
        "<cat>",
        "tiny",
    )
    assert catalog.show("cat").tags == ["pet"]
    assert sorted(catalog.checkpoint_steps("cat")) == [2, 4]
    run = catalog.run_row(record.run_id)
    assert run["status"] == "finished" and run["device"] == "cpu"
    assert [len(run["loss_curves"][s]) for s in ("inversion", "identity")] == [6, 6]
    assert len(run["data_fingerprints"]) == 3
    info = read_adapter_info(catalog.blobs.path(record.blob))
    assert (info.kind, info.token, info.initializer, info.base) == (
        "subject",
        "<cat>",
        "cat",
        "tiny",
    )
    assert info.base_fingerprint == catalog.base("tiny").fingerprint
    assert catalog.verify().ok and not any((catalog.home / "runs").iterdir())
    again = add_subject("cat", [images], catalog=catalog, preset="quick", seed=1, **FAST_SUBJECT)
    assert again.ref == "cat@2"
    catalog.rm("cat", all_versions=True)
    assert list(catalog.blobs.stored()) == []  # checkpoint blobs went with their adapters


def test_interrupted_run_registers_nothing_and_resumes(catalog, images) -> None:
    with pytest.raises(TrainingInterrupted):
        add_subject("cat", [images], catalog=catalog, preset="quick", reporter=InterruptAt(8),
                    **FAST_SUBJECT)  # fmt: skip
    assert catalog.adapter_rows() == []
    saved = {path: path.read_bytes() for path in (catalog.home / "runs").rglob("*.pt")}
    assert saved
    with pytest.raises(DvkitError, match="add --resume to continue it, or --restart"):
        add_subject("cat", [images], catalog=catalog, preset="quick", **FAST_SUBJECT)
    assert {path: path.read_bytes() for path in (catalog.home / "runs").rglob("*.pt")} == saved
    record = add_subject("cat", [images], catalog=catalog, preset="quick", resume=True,
                         **FAST_SUBJECT)  # fmt: skip
    assert record.ref == "cat@1"


def test_restart_discards_an_interrupted_run(cli, home, images) -> None:
    quick = ("--preset", "quick", "--inversion-steps", "3", "--identity-steps", "3")
    with Catalog.open(home) as catalog, pytest.raises(TrainingInterrupted):
        add_subject("cat", [images], catalog=catalog, preset="quick", reporter=InterruptAt(2),
                    inversion_steps=3, identity_steps=3)  # fmt: skip
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick)
    _one_error_line(code, err, "add --resume to continue it, or --restart to discard it")
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick,
                       "--resume", "--restart")  # fmt: skip
    _one_error_line(code, err, "give one")
    code, out, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick,
                         "--restart")  # fmt: skip
    assert code == 0 and "registered cat@1" in out, err
    assert not any((Path(home) / "runs").iterdir())


def test_add_motion_end_to_end(catalog, videos) -> None:
    record = add_motion("surfing", [videos], catalog=catalog, preset="quick", **FAST_MOTION)
    assert (record.kind, record.placement) == ("motion", ["attn1", "attn2", "ff"])
    assert record.training["caption"] == "surfing" and record.training["image_encoder"] == "tiny"


def test_training_draws_timesteps_from_the_chosen_band(catalog, images, videos, monkeypatch):
    import dvkit.train.diffusion as diffusion

    drawn = []
    add_noise = diffusion.add_noise

    def recording(*args, **kwargs):
        result = add_noise(*args, **kwargs)
        drawn.append(result[2])
        return result

    monkeypatch.setattr(diffusion, "add_noise", recording)
    band = {"high_noise_share": 1.0, "high_noise_band": (0.2, 0.3)}
    cat = add_subject("cat", [images], catalog=catalog, preset="quick", **FAST_SUBJECT, **band)
    surf = add_motion("surfing", [videos], catalog=catalog, preset="quick", **FAST_MOTION, **band)
    steps = torch.cat(drawn)
    assert len(drawn) == 6 + 6 + 6 and steps.min() >= 200 and steps.max() < 300
    for record in (cat, surf):
        assert record.training["high_noise_band"] == [0.2, 0.3]


def _one_error_line(code, err, expected):
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_cli_add_subject_and_add_motion(cli, home, images, videos) -> None:
    code, out, err = cli("--home", home, "add-subject", "cat", "--images", images, "--preset",
                         "quick", "--inversion-steps", "4", "--identity-steps", "4",
                         "--keep-steps", "2")  # fmt: skip
    assert code == 0, err
    assert "registered cat@1 (subject, base tiny, token <cat>" in out
    assert "checkpoints at steps 2" in out
    code, out, err = cli("--home", home, "add-motion", "surfing", "--videos", videos, "--preset",
                         "quick", "--steps", "4", "--frames", "3")  # fmt: skip
    assert code == 0 and "registered surfing@1 (motion, base tiny" in out, err
    code, out, _ = cli("--home", home, "show", "cat", "--json")
    assert json.loads(out)["checkpoints"] == [2]


def test_cli_training_errors_leave_catalog_unchanged(cli, home, images, videos, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken_image = tmp_path / "broken.png"
    broken_image.write_bytes(b"not an image")
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    quick = ("--preset", "quick", "--inversion-steps", "1", "--identity-steps", "1")
    cases = [
        (("add-subject", "cat", "--images", empty), "no images found"),
        (("add-subject", "cat", "--images", broken_image), "not a readable image"),
        (("add-subject", "cat", "--images", images, "--initializer", "zebra"), "must be one token"),
        (
            ("add-subject", "cat", "--images", images, "--token", "cat", *quick),
            "already has a token",
        ),
        (("add-subject", "cat", "--images", images, "--base", "nope"), "unknown base 'nope'"),
        (("add-subject", "cat", "--images", images, "--device", "tpu"), "unknown device 'tpu'"),
        (("add-subject", "cat", "--images", images, "--batch-size", "0"), "'0' is not a whole"),
        (("add-subject", "Cat", "--images", images), "invalid name"),
        (("add-subject", "cat", "--images", images, "--preset", "slow"), "unknown preset"),
        (
            ("add-subject", "cat", "--images", images, "--high-noise-band", "0.5", "1.5"),
            "'--high-noise-band': '1.5' is not a finite number from 0 to 1",
        ),
        (("add-motion", "surf", "--videos", broken_video), "not a readable video"),
        (("add-motion", "surf", "--videos", empty), "no videos found"),
        (
            ("add-motion", "surf", "--videos", videos, "--high-noise-band", "0.9", "0.5"),
            "invalid training settings: the high-noise band needs 0 ≤ LOW < HIGH ≤ 1",
        ),
        (
            ("add-motion", "surf", "--videos", videos, "--resume", "--preset", "quick"),
            "nothing to resume",
        ),
    ]
    before = Catalog.open(home).adapter_rows()
    for args, expected in cases:
        code, _, err = cli("--home", home, *args)
        _one_error_line(code, err, expected)
    assert Catalog.open(home).adapter_rows() == before == []


def test_data_parallel_run_registers_once(home, images) -> None:
    """What `accelerate launch` or `torchrun` does: two processes, gradients averaged (gloo)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "dvkit", "--home", str(home), "add-subject", "cat", "--images", str(images),
        "--preset", "quick", "--inversion-steps", "3", "--identity-steps", "3",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("registered cat@1") == 1
    with Catalog.open(home) as catalog:
        assert [row["name"] for row in catalog.adapter_rows(all_versions=True)] == ["cat"]
        assert catalog.verify().ok and not any((catalog.home / "runs").iterdir())


def test_gradient_checkpointing_gives_the_same_training(tmp_path) -> None:
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    plain = train_subject(build_tiny_base(), pixels, None, _subject_settings(), CPU,
                          torch.float32, tmp_path / "a", SilentReporter())  # fmt: skip
    checkpointed = train_subject(build_tiny_base(), pixels, None,
                                 _subject_settings(gradient_checkpointing=True), CPU,
                                 torch.float32, tmp_path / "b", SilentReporter())  # fmt: skip
    assert plain.loss_curves == checkpointed.loss_curves
    assert all(torch.allclose(plain.identity[k], checkpointed.identity[k], atol=1e-6)
               for k in plain.identity)  # fmt: skip


def test_block_checkpointing_keeps_fewer_activations() -> None:
    from dvkit.train.setup import checkpoint_blocks

    def saved_elements(unet) -> int:
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel()
            return tensor

        sample = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
        text = torch.randn(1, 77, 32)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            unet(sample, torch.tensor([10]), encoder_hidden_states=text).sample.sum()
        return total

    unet = build_tiny_base().unet
    before = saved_elements(unet)
    checkpoint_blocks(unet)
    assert saved_elements(unet) < before / 2


def test_training_says_what_it_trains_on_and_how_long_it_takes(cli, home, images, videos):
    code, out, err = cli("--home", home, "add-subject", "cat", "--images", images, "--preset",
                         "quick", "--inversion-steps", "4", "--identity-steps", "5")  # fmt: skip
    assert code == 0, err
    assert ("training on tiny (cpu): 3 images at 16×16; textual inversion 4 steps, identity "
            "adapter 5 steps, batch") in out  # fmt: skip
    assert "inversion: about" in err and "for the other 1 step (timed over 2 steps)" in err
    assert "identity: about" in err and "for the other 2 steps" in err
    assert "loss -" not in err
    code, out, err = cli("--home", home, "add-motion", "surf", "--videos", videos, "--preset",
                         "quick", "--steps", "2", "--frames", "3",
                         "--clip-windows", "1")  # fmt: skip
    assert code == 0, err
    assert ("training on tiny (cpu): 2 clips, 2 windows of 3 frames (6 frames kept) at 16×16; "
            "motion adapter 2 steps, batch 1") in out  # fmt: skip


def test_keep_steps_beyond_the_run_are_refused_before_any_work(cli, home, images, videos):
    quick = ("--preset", "quick", "--inversion-steps", "4", "--identity-steps", "4")
    code, _, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick,
                       "--keep-steps", "2,9")  # fmt: skip
    _one_error_line(code, err, "--keep-steps 9: the identity adapter trains for 4 steps")
    code, _, err = cli("--home", home, "add-motion", "surf", "--videos", videos, "--preset",
                       "quick", "--steps", "3", "--keep-steps", "0,3")  # fmt: skip
    _one_error_line(code, err, "checkpoints can be kept at steps 1 to 3")
    assert not (Path(home) / "runs").exists() or not any((Path(home) / "runs").iterdir())
    assert Catalog.open(home).adapter_rows() == []


def test_stills_and_litter_given_as_data_are_named(cli, home, tmp_path):
    still = tmp_path / "still.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(still)
    one_frame = tmp_path / "one.gif"
    Image.new("RGB", (20, 20), (0, 200, 0)).save(one_frame)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (20, 20)).save(photos / "a.png")
    Image.new("RGB", (30, 20)).save(photos / "b.png")
    litter = tmp_path / "._cat.jpg"
    litter.write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    cases = [
        (("add-motion", "m", "--videos", still), "still.png: a still image, not a clip"),
        (("add-motion", "m", "--videos", one_frame), "one.gif: a single frame (a still), not a"),
        (("add-motion", "m", "--videos", photos), "frames differ in size (a folder is read as"),
        (("add-subject", "c", "--images", litter), "no images given: skipped ._cat.jpg (hidden"),
    ]
    for args, expected in cases:
        code, _, err = cli("--home", home, *args, "--preset", "quick")
        _one_error_line(code, err, expected)
