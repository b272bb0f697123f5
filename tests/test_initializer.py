"""Initializers of subject tokens: the name, the mean of its sub-tokens, or a generic word."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dvkit.catalog import Catalog
from dvkit.models.textual_inversion import (
    GENERIC_INITIALIZER,
    Initializer,
    TextualInversionError,
    add_placeholder_tokens,
    choose_initializer,
    initializer_word,
)
from dvkit.models.tiny import build_tiny_base, build_tiny_tokenizer
from dvkit.train.api import add_subject

# A CLIP byte-level BPE vocabulary in the shape of the real one: single characters with and
# without the end-of-word mark, then merge results; words it knows whole end in </w>, and
# "odd" is a word start, so "oddball" splits into odd + ball</w> as on the real CLIP tokenizer.
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
MERGES = [
    "m y</w>", "d o", "do g</w>", "o d", "od d", "b a", "ba l", "bal l</w>", "c a", "ca t</w>",
    "o b", "ob j", "obj e", "obje c", "objec t</w>",
]  # fmt: skip


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip-tokenizer")
    vocab = [*CHARACTERS, *(c + "</w>" for c in CHARACTERS)]
    vocab += [merge.replace(" ", "") for merge in MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    assert tokenizer.tokenize("my-dog oddball") == ["my</w>", "-</w>", "dog</w>", "odd", "ball</w>"]
    return tokenizer


def ids(tokenizer, *tokens: str) -> tuple[int, ...]:
    return tuple(tokenizer.convert_tokens_to_ids(list(tokens)))


@pytest.mark.parametrize(
    ("name", "tokens", "description"),
    [
        ("cat", ["cat</w>"], "cat"),  # one token: the name itself, as before
        ("my-dog", ["my</w>", "dog</w>"], "mean of my, dog"),  # split on -
        ("my_dog", ["my</w>", "dog</w>"], "mean of my, dog"),  # and on _
        ("oddball", ["odd", "ball</w>"], "mean of odd, ball"),  # split by the tokenizer
        ("dog2", ["dog</w>"], "dog"),  # sub-tokens without a letter are left out
        ("my-dog-2", ["my</w>", "dog</w>"], "mean of my, dog"),
        ("2024-01", ["object</w>"], GENERIC_INITIALIZER),  # nothing left: the generic word
    ],
)
def test_initializer_from_the_name_on_a_clip_tokenizer(clip_tokenizer, name, tokens, description):
    chosen = choose_initializer(clip_tokenizer, "", name)
    assert chosen == Initializer(ids(clip_tokenizer, *tokens), description)


@pytest.mark.parametrize(
    ("name", "tokens", "description"),
    [
        ("cat", ["cat</w>"], "cat"),
        ("fox", ["f", "o", "x</w>"], "mean of f, o, x"),  # tiny knows few words whole
        ("surfing-dog", ["surfing</w>", "dog</w>"], "mean of surfing, dog"),
        ("dog2", ["dog</w>"], "dog"),
        # no letter in the name: the generic word, which tiny does not know whole either
        ("42", ["o", "b", "j", "e", "c", "t</w>"], "mean of o, b, j, e, c, t"),
    ],
)
def test_initializer_from_the_name_on_tiny(name, tokens, description):
    tokenizer = build_tiny_tokenizer()
    assert choose_initializer(tokenizer, "", name) == Initializer(
        ids(tokenizer, *tokens), description
    )


def test_a_given_word_that_splits_keeps_its_error(clip_tokenizer) -> None:
    assert choose_initializer(clip_tokenizer, "dog", "oddball").description == "dog"
    with pytest.raises(TextualInversionError, match=r"'oddball' must be one token .* odd, ball"):
        choose_initializer(clip_tokenizer, "oddball", "cat")


def test_new_rows_are_the_exact_mean_of_the_sub_token_rows() -> None:
    base = build_tiny_base()
    weight = base.text_encoder.get_input_embeddings().weight
    f, o, x = (weight[i].detach().clone() for i in ids(base.tokenizer, "f", "o", "x</w>"))
    chosen = choose_initializer(base.tokenizer, "", "fox")
    new = add_placeholder_tokens(base.tokenizer, base.text_encoder, "<fox>", chosen, num_vectors=3)
    weight = base.text_encoder.get_input_embeddings().weight.detach()
    expected = torch.stack([f, o, x]).mean(0)
    assert all(torch.equal(weight[i], expected) for i in new)  # every vector starts there
    assert torch.allclose(expected, (f + o + x) / 3, rtol=0, atol=1e-7)
    assert not torch.equal(expected, f)


def test_initializer_word_for_prompts_without_the_token() -> None:
    assert initializer_word("cat", "cat") == "cat"
    assert initializer_word("mean of my, dog", "my-dog") == "my dog"
    assert initializer_word("mean of f, o, x", "fox") == "fox"
    assert initializer_word(None, "dog2") == GENERIC_INITIALIZER


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        pixels = (rng.random((16, 16, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def test_add_subject_fox_on_tiny_starts_from_the_mean_and_records_it(catalog, images) -> None:
    """The issue's example: `add-subject fox` on tiny used to stop with "must be one token"."""
    record = add_subject("fox", [images], catalog=catalog, preset="quick", inversion_steps=0,
                         identity_steps=1, num_vectors=2)  # fmt: skip
    assert (record.ref, record.token, record.initializer) == ("fox@1", "<fox>", "mean of f, o, x")
    assert record.training["initializer"] == ""  # none was given
    from dvkit.io.adapter_file import load_adapter_tensors

    stored = load_adapter_tensors(catalog.read_blob(record.blob)).token_embedding
    fresh = build_tiny_base()
    weight = fresh.text_encoder.get_input_embeddings().weight.detach()
    mean = weight[list(ids(fresh.tokenizer, "f", "o", "x</w>"))].mean(0)
    assert stored.shape == (2, 32)
    assert torch.equal(stored[0], mean) and torch.equal(stored[1], mean)  # no inversion steps


def test_cli_add_subject_says_and_show_shows_the_initializer(cli, home, images) -> None:
    quick = ("--preset", "quick", "--inversion-steps", "1", "--identity-steps", "1")
    code, out, err = cli("--home", home, "add-subject", "surfing-dog", "--images", images, *quick)
    assert code == 0, err
    assert out.splitlines()[-1] == (
        "initializer: mean of surfing, dog (surfing-dog is not one token; "
        "--initializer WORD sets one)"
    )
    code, out, err = cli("--home", home, "show", "surfing-dog")
    assert code == 0 and re.search(r"\n initializer +mean of surfing, dog +\n", out), out
    code, out, _ = cli("--home", home, "show", "surfing-dog", "--json")
    assert json.loads(out)["initializer"] == "mean of surfing, dog"
    code, out, err = cli("--home", home, "add-subject", "cat", "--images", images, *quick)
    assert code == 0 and out.splitlines()[-1] == "initializer: cat", err
    code, out, err = cli("--home", home, "add-subject", "fox", "--images", images, *quick,
                         "--initializer", "dog")  # fmt: skip
    assert code == 0 and out.splitlines()[-1] == "initializer: dog", err


def test_cli_a_given_initializer_that_splits_is_one_error_line(cli, home, images) -> None:
    code, out, err = cli("--home", home, "add-subject", "fox", "--images", images,
                         "--initializer", "fox")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0] == (
        "error: initializer word 'fox' must be one token but splits into 3: f, o, x</w>; "
        "choose a word the tokenizer knows whole"
    )
    assert Catalog.open(home).adapter_rows() == []
