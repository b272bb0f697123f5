"""The sprites base's training script: a few steps from scratch, resumed, and from weights."""

import json

from dvkit.sprites.base import WEIGHTS_FILE, build_sprites_base, build_sprites_wan_base
from dvkit.sprites.train_base import main, trained_steps

TINY_RUN = ["--clips", "1", "--images", "1", "--save-every", "1"]


def test_trains_resumes_and_starts_from_weights(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    main(["--out", str(out), "--steps", "2", *TINY_RUN])
    assert trained_steps(out) == 2 and out.with_suffix(".state.pt").is_file()
    first = build_sprites_base(out).fingerprint()
    assert first != build_sprites_base(weights=None).fingerprint()
    main(["--out", str(out), "--steps", "3", "--resume", *TINY_RUN])
    assert trained_steps(out) == 3 and build_sprites_base(out).fingerprint() != first
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert done[-1] == {"done": 3, "weights": str(out)}
    started = tmp_path / "from-shipped.safetensors"
    main(["--out", str(started), "--steps", "1", "--init", str(WEIGHTS_FILE), *TINY_RUN])
    shipped = build_sprites_base().fingerprint()
    tuned = build_sprites_base(started).fingerprint()
    assert tuned != shipped and trained_steps(started) == trained_steps(WEIGHTS_FILE) + 1


def test_the_same_loop_trains_sprites_wan_with_flow_matching(tmp_path, capsys):
    out = tmp_path / "wan.safetensors"
    main(["--base", "sprites-wan", "--out", str(out), "--steps", "2", *TINY_RUN])
    assert trained_steps(out) == 2
    trained = build_sprites_wan_base(out)
    assert trained.family.name == "sprites-pixel-wan"
    assert trained.fingerprint() != build_sprites_wan_base(weights=None).fingerprint()
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"done": 2, "weights": str(out)}
