"""`dvkit demo` end to end on the sprites base, with a few training and sampling steps."""

import pytest

from dvkit.catalog import Catalog
from dvkit.sprites import demo

FEW = {"inversion_steps": 2, "identity_steps": 2, "steps": 2}


@pytest.fixture
def quick_training(monkeypatch):
    subject = {**demo.SUBJECT_TRAINING, "inversion_steps": 2, "identity_steps": 2}
    motion = {**demo.MOTION_TRAINING, "steps": 2}
    monkeypatch.setattr(demo, "SUBJECT_TRAINING", subject)
    monkeypatch.setattr(demo, "MOTION_TRAINING", motion)


def test_demo_trains_composes_and_scores_the_grid(tmp_path, quick_training, cli):
    folder = tmp_path / "demo"
    result = demo.run_demo(folder, seeds=1, steps=2, device="cpu")
    assert len(list((folder / "data" / "subject").glob("*.png"))) == demo.IMAGES
    assert len(list((folder / "data" / "motion").glob("*.gif"))) == demo.CLIPS
    assert [path.suffix for path in result.videos] == [".gif"] and result.videos[0].is_file()
    assert result.report.is_file() and "Subj. fid." in result.report.read_text()
    assert set(result.roles) == {"joint", "subject", "motion", "base"}
    for scores in result.roles.values():
        for key in ("gt_subject", "gt_motion", "gt_t_cons", "clip_t"):
            assert 0.0 <= scores[key] <= 1.0 or key == "clip_t"
    with Catalog.open(folder / "registry") as catalog:
        subject = catalog.show("orange-triangle")
        motion = catalog.show("zigzag")
        assert subject.base == motion.base == "sprites"
        assert subject.initializer == "triangle" and motion.training["caption"] == "zigzagging"
        assert motion.training["image_encoder"] == "sprites"  # the base's own encoder
        rows = catalog.evaluation_rows()
    assert {row["sampler"]["motion_until"] for row in rows} == {0.4}  # the base's default
    code, out, err = cli("demo", folder, "--seeds", "1", "--steps", "2", "--device", "cpu")
    assert code == 0, err
    assert "report:" in out and "joint" in out
    with Catalog.open(folder / "registry") as catalog:  # nothing trained or scored again
        assert catalog.versions("orange-triangle") == [1] and catalog.versions("zigzag") == [1]
        assert len(catalog.evaluation_rows()) == len(rows)


def test_demo_on_sprites_wan_and_one_base_per_folder(tmp_path, quick_training, cli):
    folder = tmp_path / "demo"
    code, out, err = cli("demo", folder, "--base", "sprites-wan", "--seeds", "1", "--steps",
                         "2", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "report:" in out and "joint" in out
    joint = next(line for line in out.splitlines() if line.startswith("joint")).split()[1:]
    assert "Subj. fid." in out and len(joint) == 4 and "-" not in joint  # GT metrics measured
    with Catalog.open(folder / "registry") as catalog:
        subject, motion = catalog.show("orange-triangle"), catalog.show("zigzag")
        assert subject.base == motion.base == "sprites-wan"
        assert (subject.architecture, motion.placement) == ("sprites-pixel-wan", ["attn1", "ff"])
    code, _, err = cli("demo", folder, "--seeds", "1", "--device", "cpu")
    assert code == 1 and err.count("\n") == 1
    assert "holds a demo on base sprites-wan; run --base sprites in another folder" in err
    code, _, err = cli("demo", tmp_path / "other", "--base", "tiny-wan")
    assert code == 1 and "the demo runs on a sprites base: sprites or sprites-wan" in err
