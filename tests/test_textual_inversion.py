"""Textual inversion: placeholder tokens, frozen other rows, moving embeddings between bases."""

import pytest
import torch

from dvkit.errors import ConflictError, NotFoundError
from dvkit.models.textual_inversion import (
    TextualInversionError,
    TrainableRows,
    add_placeholder_tokens,
    apply_token_embedding,
    expand_placeholder,
    placeholder_tokens,
    token_embedding,
    token_ids,
)
from dvkit.models.tiny import build_tiny_base


def encode(base, prompt):
    ids = base.tokenizer(prompt, padding="max_length", max_length=12, return_tensors="pt").input_ids
    return base.text_encoder(ids)[0]


def train_token(base, token="<cat>", num_vectors=2, steps=4):
    ids = add_placeholder_tokens(base.tokenizer, base.text_encoder, token, "cat", num_vectors)
    base.text_encoder.requires_grad_(False)
    rows = TrainableRows(base.text_encoder, ids)
    optimizer = torch.optim.AdamW([rows.rows], lr=1e-1, weight_decay=1e-2)
    prompt = expand_placeholder(f"a photo of {token} surfing", token, num_vectors)
    target = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(encode(base, prompt), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = rows.commit()
    assert torch.equal(base.text_encoder.get_input_embeddings().weight[ids], learned)
    return ids


def test_new_rows_start_from_the_initializer_word():
    base = build_tiny_base()
    size = len(base.tokenizer)
    ids = add_placeholder_tokens(base.tokenizer, base.text_encoder, "<cat>", "cat", num_vectors=3)
    assert ids == [size, size + 1, size + 2]
    assert len(base.tokenizer) == base.text_encoder.config.vocab_size == size + 3
    weight = base.text_encoder.get_input_embeddings().weight
    cat = weight[base.tokenizer.convert_tokens_to_ids("cat</w>")]
    assert all(torch.equal(weight[i], cat) for i in ids)
    assert token_ids(base.tokenizer, "<cat>") == ids
    prompt = expand_placeholder("a <cat> surfing", "<cat>", 3)
    assert base.tokenizer.tokenize(prompt) == [
        "a</w>",
        "<cat>",
        "<cat>_1",
        "<cat>_2",
        "surfing</w>",
    ]


def test_training_changes_only_the_new_rows():
    base = build_tiny_base()
    original = base.text_encoder.get_input_embeddings().weight.detach().clone()
    frozen_before = {k: v.clone() for k, v in base.text_encoder.state_dict().items()}
    ids = train_token(base)
    weight = base.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(weight[: original.shape[0]], original)
    cat = original[base.tokenizer.convert_tokens_to_ids("cat</w>")]
    assert all(not torch.equal(weight[i], cat) for i in ids)
    after = base.text_encoder.state_dict()
    embedding_key = next(k for k in after if k.endswith("token_embedding.weight"))
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items() if k != embedding_key)
    assert not any(p.requires_grad for p in base.text_encoder.parameters())


def test_spliced_rows_equal_committed_rows():
    base = build_tiny_base()
    ids = add_placeholder_tokens(base.tokenizer, base.text_encoder, "<cat>", "cat", 2)
    rows = TrainableRows(base.text_encoder, ids)
    with torch.no_grad():
        rows.rows.add_(torch.randn(rows.rows.shape, generator=torch.Generator().manual_seed(1)))
    prompt = expand_placeholder("a <cat> surfing", "<cat>", 2)
    spliced = encode(base, prompt)
    rows.commit()
    assert torch.allclose(encode(base, prompt), spliced, atol=1e-6)


def test_initializer_word_must_be_one_token():
    base = build_tiny_base()
    with pytest.raises(TextualInversionError, match=r"'zebra'.*5: z, e, b, r, a</w>"):
        add_placeholder_tokens(base.tokenizer, base.text_encoder, "<zebra>", "zebra")
    with pytest.raises(TextualInversionError, match="must be one token"):
        add_placeholder_tokens(base.tokenizer, base.text_encoder, "<x>", "")
    assert len(base.tokenizer) == base.text_encoder.config.vocab_size


def test_existing_tokens_are_refused():
    base = build_tiny_base()
    add_placeholder_tokens(base.tokenizer, base.text_encoder, "<cat>", "cat")
    size = len(base.tokenizer)
    for token in ("<cat>", "cat", "<|endoftext|>"):
        with pytest.raises(ConflictError, match="already has a token"):
            add_placeholder_tokens(base.tokenizer, base.text_encoder, token, "dog")
    assert len(base.tokenizer) == size


def test_learned_embedding_moves_to_a_fresh_base():
    trained = build_tiny_base()
    train_token(trained, num_vectors=2)
    embedding = token_embedding(trained.tokenizer, trained.text_encoder, "<cat>")
    assert embedding.shape == (2, 32)
    fresh = build_tiny_base()
    apply_token_embedding(fresh.tokenizer, fresh.text_encoder, "<cat>", embedding)
    assert len(fresh.tokenizer) == fresh.text_encoder.config.vocab_size
    prompt = expand_placeholder("a <cat> running", "<cat>", 2)
    with torch.no_grad():
        assert torch.equal(encode(fresh, prompt), encode(trained, prompt))
    apply_token_embedding(fresh.tokenizer, fresh.text_encoder, "<cat>", embedding * 2)
    assert torch.equal(token_embedding(fresh.tokenizer, fresh.text_encoder, "<cat>"), embedding * 2)
    with pytest.raises(ConflictError):
        apply_token_embedding(fresh.tokenizer, fresh.text_encoder, "<cat>", embedding[:1])
    with pytest.raises(TextualInversionError, match="width"):
        apply_token_embedding(fresh.tokenizer, fresh.text_encoder, "<dog>", torch.zeros(1, 8))
    with pytest.raises(NotFoundError):
        token_embedding(fresh.tokenizer, fresh.text_encoder, "<dog>")


def test_placeholder_expansion():
    assert placeholder_tokens("<cat>", 3) == ["<cat>", "<cat>_1", "<cat>_2"]
    assert expand_placeholder("a <cat> and a <cat>", "<cat>", 2) == (
        "a <cat> <cat>_1 and a <cat> <cat>_1"
    )
    assert expand_placeholder("a <cat>", "<cat>", 1) == "a <cat>"
    with pytest.raises(ValueError):
        placeholder_tokens("<cat>", 0)
