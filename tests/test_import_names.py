"""The same weights under another name: every path that registers (import of dvkit files, import
of official .pth checkpoints, add-subject, add-motion) gives a new name its own record; the same
name with the same weights is reported, not registered twice."""

import numpy as np
import pytest
from PIL import Image
from test_vgen_import import (
    IDENTITY_SLOTS,
    MOTION_SLOTS,
    TINY_SPATIAL,
    TINY_TEMPORAL,
    save_adapter,
    save_embedding,
    vgen_state,
)

from dvkit.catalog import Catalog


def _names(home) -> list[tuple[str, int]]:
    with Catalog.open(home) as catalog:
        return [(row["name"], row["version"]) for row in catalog.adapter_rows(all_versions=True)]


def test_dvkit_file_under_another_name_gets_its_own_record(cli, home, make_adapter) -> None:
    path = make_adapter("cat", seed=3)
    assert "imported as cat@1" in cli("--home", home, "import", path)[1]
    code, out, err = cli("--home", home, "import", path, "--name", "dog")
    assert code == 0, err
    assert out.strip() == f"{path}: imported as dog@1 (subject, base tiny, token <dog>)"
    code, out, _ = cli("--home", home, "import", path)
    assert code == 0 and out.strip() == f"{path}: already in the catalog as cat@1 (same weights)"
    code, out, _ = cli("--home", home, "import", path, "--name", "dog")
    assert code == 0 and out.strip() == f"{path}: already in the catalog as dog@1 (same weights)"
    assert _names(home) == [("cat", 1), ("dog", 1)]
    with Catalog.open(home) as catalog:
        cat, dog = catalog.show("cat"), catalog.show("dog")
        assert cat.blob == dog.blob and cat.weights_hash == dog.weights_hash  # one file, shared
        assert len(list(catalog.blobs.stored())) == 1
        assert (cat.token, dog.token) == ("<cat>", "<dog>")  # renamed: its default token too
        catalog.rm("cat")
        assert catalog.blobs.path(dog.blob).is_file()  # still used by dog
        assert catalog.verify().ok


def test_dvkit_file_takes_a_new_token(cli, home, make_adapter) -> None:
    path = make_adapter("cat", seed=3)
    code, out, err = cli("--home", home, "import", path, "--name", "kitty", "--token", "<kit>")
    assert code == 0 and out.strip().endswith("(subject, base tiny, token <kit>)"), err
    code, out, _ = cli("--home", home, "import", path, "--name", "kitty", "--token", "<kit>")
    assert code == 0 and "already in the catalog as kitty@1" in out
    code, out, _ = cli("--home", home, "import", path, "--name", "tom", "--token", "<kit>")
    assert code == 0 and "imported as tom@1 (subject, base tiny, token <kit>)" in out
    for args, message in [
        (("--token", "a b"), "invalid token 'a b'"),
        ((make_adapter("surf", "motion"), "--token", "<x>"), "--token applies to subjects"),
        ((make_adapter("dog"), make_adapter("cow"), "--token", "<x>"), "importing one dvkit"),
        (("--name", "kitty", "--token", "<kat>"), "kitty@1 holds these weights with token <kit>"),
    ]:
        files = [] if str(args[0]).endswith(".safetensors") else [path]
        code, out, err = cli("--home", home, "import", *files, *args)
        lines = err.strip().splitlines()
        assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith("error: ")
        assert message in lines[0], err
    assert _names(home) == [("kitty", 1), ("tom", 1)]


def test_file_named_otherwise_in_its_header_is_a_new_adapter(catalog, make_adapter) -> None:
    cat = catalog.import_file(make_adapter("cat", seed=5))
    dog = catalog.import_file(make_adapter("dog", seed=5))  # same tensors, header says dog
    assert (cat.duplicate, dog.duplicate) == (False, False)
    assert (cat.adapter.ref, dog.adapter.ref) == ("cat@1", "dog@1")
    assert cat.adapter.weights_hash == dog.adapter.weights_hash
    assert dog.adapter.token == "<dog>"
    again = catalog.import_file(make_adapter("dog", seed=5))
    assert again.duplicate and again.adapter.ref == "dog@1"
    other = catalog.import_file(make_adapter("dog", seed=6))
    assert not other.duplicate and other.adapter.ref == "dog@2"
    back = catalog.import_file(make_adapter("dog", seed=5))  # an older version's weights
    assert back.duplicate and back.adapter.ref == "dog@1"
    assert catalog.versions("dog") == [1, 2]


def test_official_checkpoint_under_another_name(cli, home, tmp_path) -> None:
    motion = save_adapter(
        tmp_path / "carTurn_adapter_00001500.pth",
        vgen_state(TINY_TEMPORAL, MOTION_SLOTS, cond_dim=32, seed=1),
        step=1500,
    )
    code, out, err = cli("--home", home, "import", motion, "--base", "tiny")
    assert code == 0 and out.strip() == f"{motion}: imported as carturn@1 (motion, base tiny)", err
    code, out, err = cli("--home", home, "import", motion, "--base", "tiny", "--name", "car-turn")
    assert code == 0 and out.strip() == f"{motion}: imported as car-turn@1 (motion, base tiny)", err
    code, out, _ = cli("--home", home, "import", motion, "--base", "tiny", "--name", "car-turn")
    assert out.strip() == f"{motion}: already in the catalog as car-turn@1 (same weights)"
    identity = save_adapter(
        tmp_path / "dog2_adapter_00000500.pth", vgen_state(TINY_SPATIAL, IDENTITY_SLOTS)
    )
    embedding = save_embedding(tmp_path / "text_embedding_of_dog2_0003000.pth")
    for name in ("dog2", "rex"):
        code, out, err = cli("--home", home, "import", identity, "--base", "tiny",
                             "--embedding", embedding, "--name", name)  # fmt: skip
        assert code == 0 and f"imported as {name}@1 (subject, base tiny, token <{name}>)" in out
    assert _names(home) == [("car-turn", 1), ("carturn", 1), ("dog2", 1), ("rex", 1)]
    with Catalog.open(home) as catalog:
        assert catalog.show("rex").token == "<rex>" and catalog.show("dog2").token == "<dog2>"
        assert catalog.show("rex").weights_hash == catalog.show("dog2").weights_hash


@pytest.fixture
def media(tmp_path):
    import imageio.v3 as iio

    images, videos = tmp_path / "images", tmp_path / "videos"
    images.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = (rng.random((20, 20, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(images / f"{index}.png")
    iio.imwrite(videos / "0.mp4", (rng.random((6, 32, 32, 3)) * 255).astype("uint8"),
                plugin="FFMPEG", fps=8)  # fmt: skip
    return images, videos


def test_training_the_same_data_under_two_names(cli, home, media) -> None:
    images, videos = media
    subject = ("--images", images, "--preset", "quick", "--inversion-steps", "1",
               "--identity-steps", "1", "--initializer", "cat")  # fmt: skip
    motion = ("--videos", videos, "--preset", "quick", "--steps", "1", "--frames", "2",
              "--caption", "surfing")  # fmt: skip
    runs = [
        ("add-subject", "cat", subject, "registered cat@1 (subject, base tiny, token <cat>"),
        ("add-subject", "dog", subject, "registered dog@1 (subject, base tiny, token <dog>"),
        ("add-subject", "cat", subject,
         "already in the catalog as cat@1 (same weights): nothing new registered"),
        ("add-motion", "surf", motion, "registered surf@1 (motion, base tiny"),
        ("add-motion", "wave", motion, "registered wave@1 (motion, base tiny"),
    ]  # fmt: skip
    for command, name, options, expected in runs:
        code, out, err = cli("--home", home, command, name, *options)
        lines = out.strip().splitlines()
        assert code == 0 and any(line.startswith(expected) for line in lines), (out, err)
    assert _names(home) == [("cat", 1), ("dog", 1), ("surf", 1), ("wave", 1)]
    with Catalog.open(home) as catalog:
        cat, dog = catalog.show("cat"), catalog.show("dog")
        assert cat.weights_hash == dog.weights_hash  # the same weights: the premise of the test
        assert (cat.token, dog.token) == ("<cat>", "<dog>")
        assert catalog.show("surf").weights_hash == catalog.show("wave").weights_hash
        assert catalog.verify().ok
