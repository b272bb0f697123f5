"""The DreamVideo metrics on constructed embeddings, the encoders and `dvkit score`."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.evaluate import metrics
from dvkit.evaluate.score import Scorer


def unit(*values):
    return metrics.normalise(torch.tensor(values, dtype=torch.float32))


def test_metrics_by_hand() -> None:
    text = unit(1.0, 0.0)
    frames = torch.stack([unit(1.0, 0.0), unit(0.0, 1.0), unit(1.0, 1.0)])
    assert metrics.text_alignment(text, frames) == pytest.approx((1 + 0 + math.sqrt(0.5)) / 3)
    references = torch.stack([unit(1.0, 0.0), unit(-1.0, 0.0)])
    # cosines: ref1 (1, 0, .707), ref2 (-1, 0, -.707): mean 0
    assert metrics.image_similarity(references, frames) == pytest.approx(0.0, abs=1e-7)
    assert metrics.image_similarity(references[:1], frames) == pytest.approx(
        (1 + 0 + math.sqrt(0.5)) / 3
    )
    # consecutive pairs: cos(f0, f1) = 0, cos(f1, f2) = .707
    assert metrics.temporal_consistency(frames) == pytest.approx(math.sqrt(0.5) / 2)
    assert metrics.temporal_consistency(frames[:1]) is None  # no pair: not applicable


def test_metrics_use_raw_cosines() -> None:
    frames = torch.stack([unit(1.0, 0.0), unit(-1.0, 0.0)])
    assert metrics.temporal_consistency(frames) == pytest.approx(-1.0)  # no clamping, no x100


@pytest.fixture(scope="module")
def scorer():
    return Scorer("tiny", "tiny", "cpu")


def test_constant_video_and_self_reference(scorer) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    video = np.repeat(image[None], 5, axis=0)
    result = scorer.score(video, "a cat", references=image[None])
    assert result["t_cons"] == pytest.approx(1.0, abs=1e-5)
    assert result["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert result["dino_i"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= result["clip_t"] <= 1.0


def test_different_content_scores_lower(scorer) -> None:
    rng = np.random.default_rng(1)
    reference = (rng.random((1, 24, 24, 3)) * 255).astype(np.uint8)
    noise = (rng.random((4, 24, 24, 3)) * 255).astype(np.uint8)
    assert scorer.score(noise, references=reference)["dino_i"] < 0.99
    assert scorer.score(noise)["t_cons"] < 0.999


def test_cli_score_on_files(cli, tmp_path) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(2)
    frames = (rng.random((4, 16, 16, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "v.gif", frames, plugin="pillow", duration=125, loop=0)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(frames[0]).save(refs / "a.png")
    Image.fromarray(frames[1]).resize((20, 12)).save(refs / "b.png")
    code, out, err = cli("score", tmp_path / "v.gif", "--prompt", "a cat", "--references", refs,
                         "--clip", "tiny", "--dino", "tiny", "--json")  # fmt: skip
    assert code == 0, err
    assert set(json.loads(out)) == {"clip_t", "clip_i", "dino_i", "t_cons"}
    code, out, _ = cli("score", tmp_path / "v.gif", "--clip", "tiny", "--dino", "tiny")
    assert code == 0 and out.startswith("T. Cons.")
    code, _, err = cli("score", tmp_path / "missing.mp4", "--clip", "tiny")
    assert code == 1 and err.strip() == f"error: {tmp_path / 'missing.mp4'}: no such video"


def test_missing_encoder_weights_are_named(run_dvkit, tmp_path) -> None:
    frames = (np.random.default_rng(3).random((2, 8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(frames[0]).save(tmp_path / "0.png")
    Image.fromarray(frames[1]).save(tmp_path / "1.png")
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    result = run_dvkit("score", tmp_path, "--dino", "tiny", env=offline)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "CLIP encoder 'ViT-B-32:openai' is not in the Hugging Face / open_clip cache" in lines[0]
