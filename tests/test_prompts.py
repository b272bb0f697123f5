"""Prompts longer than the text encoder: cut with a warning, refused when a learned token is cut.

On `tiny` (CLIP's 77 tokens: start, 75 prompt tokens, end) every word of "a a a …" is one token.
"""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.catalog import Catalog
from dvkit.errors import DvkitWarning
from dvkit.evaluate.grid import bench
from dvkit.generate.compose import compose
from dvkit.generate.sampler import SamplerSettings
from dvkit.models.text import PromptTooLongError, check_prompts, encode_text, tokenize
from dvkit.models.textual_inversion import add_placeholder_tokens, expand_placeholder
from dvkit.models.tiny import build_tiny_base
from dvkit.train.api import add_motion, add_subject

CAPACITY = 75  # tokens of a prompt the tiny (CLIP) text encoder reads


def words(count: int, word: str = "a") -> str:
    return " ".join([word] * count)


@pytest.fixture(scope="module")
def base():
    """The tiny base with a learned token `<cat>` of 3 vectors."""
    tiny = build_tiny_base()
    add_placeholder_tokens(tiny.tokenizer, tiny.text_encoder, "<cat>", "cat", num_vectors=3)
    return tiny


def _warnings(call, action="default"):
    """The result of `call()` and the DvkitWarnings it gave (by default each distinct one once,
    as the CLI shows them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action)
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, DvkitWarning)]


def test_a_prompt_that_fits_is_not_cut(base) -> None:
    prompt = words(CAPACITY - 4) + " <cat> <cat>_1 <cat>_2"  # exactly 75 tokens
    cut, messages = _warnings(lambda: check_prompts(base.tokenizer, [prompt, "a cat"]))
    assert cut == {} and messages == []


def test_a_cut_prompt_warns_with_the_number_of_dropped_tokens(base) -> None:
    prompt = words(CAPACITY) + " cat surfing on the beach"  # 80 tokens
    cut, messages = _warnings(
        lambda: check_prompts(base.tokenizer, [prompt, prompt, "a dog"]), action="always"
    )
    assert cut == {prompt: 5}
    assert len(messages) == 1  # once per distinct prompt
    assert "5 of its 80 tokens dropped ('cat surfing on the beach')" in messages[0]
    assert "75 tokens the text encoder reads" in messages[0]
    ids, _ = _warnings(lambda: tokenize(base.tokenizer, [prompt]))
    a, eos = base.tokenizer.convert_tokens_to_ids(["a</w>", "<|endoftext|>"])
    assert ids.shape == (1, 77)
    assert ids[0, 1:76].tolist() == [a] * CAPACITY and ids[0, 76].item() == eos


def test_the_issue_example_a_96_token_prompt_ending_in_the_subject_is_refused(base) -> None:
    prompt = expand_placeholder(words(95) + " <cat>", "<cat>", 3)
    with pytest.raises(PromptTooLongError, match=r"learned token <cat> at token 96, past the 75"):
        check_prompts(base.tokenizer, [prompt])
    with pytest.raises(PromptTooLongError):
        tokenize(base.tokenizer, [prompt])
    with pytest.raises(PromptTooLongError, match=r"^negative prompt 'a a a"):
        check_prompts(base.tokenizer, ["a <cat>"], negative=[prompt])
    with pytest.raises(PromptTooLongError, match=r"^prompt 'a a a"):
        check_prompts(base.tokenizer, [prompt], negative=[prompt])


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (CAPACITY - 1, 76),  # `<cat>` is token 75, its vectors `<cat>_1`, `<cat>_2` past it
        (CAPACITY - 2, 76),  # only the last vector `<cat>_2` falls past
        (CAPACITY, 76),  # the whole token falls past, the prompt ending right after it
    ],
)
def test_any_cut_vector_of_a_multi_vector_token_is_refused(base, before, expected) -> None:
    prompt = words(before) + " <cat> <cat>_1 <cat>_2"
    with pytest.raises(PromptTooLongError, match=f"learned token <cat> at token {expected},"):
        check_prompts(base.tokenizer, [prompt])


def test_a_learned_token_before_the_cut_only_warns(base) -> None:
    prompt = "a <cat> <cat>_1 <cat>_2 " + words(CAPACITY)
    cut, messages = _warnings(lambda: check_prompts(base.tokenizer, [prompt]))
    assert cut == {prompt: 4} and "4 of its 79 tokens dropped" in messages[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("prompts")
    images, videos = root / "images", root / "videos"
    images.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(
            images / f"{index}.png"
        )
    iio.imwrite(videos / "0.mp4", (rng.random((4, 16, 16, 3)) * 255).astype("uint8"),
                plugin="FFMPEG", fps=8)  # fmt: skip
    return images, videos


@pytest.fixture(scope="module")
def trained_home(data, tmp_path_factory):
    """A catalog with subject `cat` and motions `surfing` and `long` (a 90-token caption)."""
    images, videos = data
    home = tmp_path_factory.mktemp("home") / "registry"
    catalog, _ = Catalog.init(home)
    with catalog:
        add_subject("cat", [images], catalog=catalog, preset="quick", inversion_steps=1,
                    identity_steps=1)  # fmt: skip
        add_motion("surfing", [videos], catalog=catalog, preset="quick", steps=1, frames=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DvkitWarning)
            add_motion("long", [videos], catalog=catalog, preset="quick", steps=1, frames=3,
                       seed=1, caption=words(90, "surfing"))  # fmt: skip
    return home


@pytest.fixture
def trained(trained_home, tmp_path):
    import shutil

    shutil.copytree(trained_home, tmp_path / "registry")
    with Catalog.open(tmp_path / "registry") as catalog:
        yield catalog


QUICK_COMPOSE = ("--steps", "2", "--frames", "2", "--size", "16")


def test_cli_compose_refuses_the_subject_token_past_the_limit(cli, trained, tmp_path) -> None:
    out = tmp_path / "v.mp4"
    code, stdout, err = cli("--home", trained.home, "compose", "--subject", "cat", "--motion",
                            "surfing", "--prompt", words(95) + " <cat>", "--out", out,
                            *QUICK_COMPOSE)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: prompt 'a a a") and "learned token <cat> at token 96" in err
    assert stdout == "" and not out.exists() and trained.evaluation_rows() == []


def test_cli_compose_warns_once_for_a_cut_prompt(cli, trained, tmp_path) -> None:
    prompt = "a <cat> surfing " + words(80)  # 83 tokens: 8 dropped
    code, stdout, err = cli("--home", trained.home, "compose", "--subject", "cat", "--prompt",
                            prompt, "--seed", "0", "--seed", "1", "--out", tmp_path,
                            *QUICK_COMPOSE)  # fmt: skip
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "8 of its 83 tokens dropped" in warned[0], err
    assert "Traceback" not in err and stdout.startswith(f"prompt: {prompt}")


def test_the_default_prompt_and_negative_prompt_are_checked(trained) -> None:
    result, messages = _warnings(
        lambda: compose(
            "cat",
            "long",
            catalog=trained,
            steps=2,
            frames=2,
            size=16,
            record=False,
            negative_prompt=words(76, "dog"),
        )  # fmt: skip
    )
    assert result.prompt == "a <cat> " + words(90, "surfing")
    assert len(messages) == 2
    assert "17 of its 92 tokens dropped" in messages[0]  # a <cat> + 90 words
    assert "1 of its 76 tokens dropped" in messages[1]


def test_a_cut_prompt_encodes_as_its_first_75_tokens(base) -> None:
    """Cutting is what the text encoder would do anyway, now with a warning."""
    long, fitting = "a <cat> " + words(CAPACITY), "a <cat> " + words(CAPACITY - 2)
    (cut, full), messages = _warnings(
        lambda: encode_text(base.tokenizer, base.text_encoder, [long, fitting])
    )
    assert len(messages) == 1 and torch.equal(cut, full)


def test_bench_checks_every_template_before_generating(trained) -> None:
    settings = SamplerSettings(steps=2, frames=2, height=16, width=16)
    templates = ["a {subject} {motion}", words(80) + " {subject} {motion}"]
    with pytest.raises(PromptTooLongError, match="learned token <cat> at token 81"):
        bench(trained, ["cat"], ["surfing"], templates, settings=settings, clip="tiny",
              dino="tiny", device="cpu")  # fmt: skip
    assert trained.evaluation_rows() == []
    assert not any((trained.home / "videos").rglob("*.gif"))


def test_cli_bench_refuses_a_template_with_one_line(cli, trained, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {subject} {motion}\n" + words(80) + " {subject} {motion}\n")
    code, stdout, err = cli("--home", trained.home, "bench", "--subject", "cat", "--motion",
                            "surfing", "--prompts", prompts, "--steps", "2", "--frames", "2",
                            "--size", "16", "--clip", "tiny", "--dino", "tiny")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "learned token <cat> at token 81" in lines[0], err
    assert trained.evaluation_rows() == []


def test_cli_bench_warns_for_a_cut_template(cli, trained, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {subject} {motion} " + words(80) + "\n")
    code, stdout, err = cli("--home", trained.home, "bench", "--subject", "cat", "--motion",
                            "surfing", "--prompts", prompts, "--steps", "2", "--frames", "2",
                            "--size", "16", "--clip", "tiny", "--dino", "tiny",
                            "--no-baselines", "--seed", "0", "--seed", "1",
                            "--batch-size", "1")  # fmt: skip
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, err  # checked up front and again by each batch: shown once
    assert "8 of its 83 tokens dropped" in warned[0]
    assert "2 cells: 2 generated" in stdout


def test_cli_training_prompts_are_checked(cli, home, data) -> None:
    images, videos = data
    quick = ("--preset", "quick", "--inversion-steps", "1", "--identity-steps", "1")
    code, stdout, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick,
                            "--prompt", words(80) + " {token}")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "learned token <cat> at token 81" in lines[0], err
    assert Catalog.open(home).adapter_rows() == []
    code, stdout, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick,
                            "--prompt", "a {token} " + words(80))  # fmt: skip
    assert code == 0 and "registered cat@1" in stdout, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "7 of its 82 tokens dropped" in warned[0]
    code, stdout, err = cli("--home", home, "add-motion", "surf", "--videos", videos,
                            "--preset", "quick", "--steps", "1", "--frames", "3",
                            "--caption", words(90, "surfing"))  # fmt: skip
    assert code == 0 and "registered surf@1" in stdout, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "15 of its 90 tokens dropped" in warned[0]
