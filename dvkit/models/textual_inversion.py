"""Textual inversion: placeholder tokens whose embedding rows are the only thing trained.

A subject's token `<cat>` with `num_vectors` vectors is the token sequence
`<cat> <cat>_1 … <cat>_{n-1}`; prompts are written with `<cat>` and expanded with
`expand_placeholder` before tokenising.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dvkit.errors import ConflictError, DvkitError, NotFoundError


class TextualInversionError(DvkitError):
    """An unusable initializer word or a token embedding of the wrong shape."""


def placeholder_tokens(token: str, num_vectors: int = 1) -> list[str]:
    """The tokens that stand for `token`: itself, then `<token>_1`, `<token>_2`, …"""
    if num_vectors < 1:
        raise ValueError("num_vectors must be at least 1")
    return [token] + [f"{token}_{index}" for index in range(1, num_vectors)]


def expand_placeholder(prompt: str, token: str, num_vectors: int) -> str:
    """Replace each `token` in `prompt` by its full multi-vector token sequence."""
    sequence = " ".join(placeholder_tokens(token, num_vectors))
    return re.sub(re.escape(token) + r"(?!_\d)", lambda _match: sequence, prompt)


GENERIC_INITIALIZER = "object"
"""The word new rows start from when a subject's name has no sub-token with a letter."""
MEAN_PREFIX = "mean of "


@dataclass(frozen=True)
class Initializer:
    """Where a new placeholder token's rows start: the mean embedding of `ids`."""

    ids: tuple[int, ...]
    description: str
    """As recorded in the catalog and shown: a word ("cat", "object") or, for a mean of several
    sub-tokens, "mean of my, dog"."""


def choose_initializer(
    tokenizer: PreTrainedTokenizerBase, word: str, name: str = ""
) -> Initializer:
    """The initializer of a subject: `word` when given, else one derived from its `name`.

    A given word must be one token of the tokenizer (TextualInversionError otherwise). Without
    one: the name itself when it is one token; else the mean of the name's sub-tokens (the name
    split on `-` and `_`, then each part by the tokenizer; sub-tokens without a letter, such as
    digits, and special tokens are left out: `dog2` starts from `dog`); else, when no sub-token
    is left, GENERIC_INITIALIZER (itself by these rules: one token on CLIP, a mean of letters on
    the `tiny` base).
    """
    if word:
        return _one_token(tokenizer, word)
    if len(whole := tokenizer.encode(name, add_special_tokens=False)) == 1:
        return Initializer((whole[0],), name)
    special = set(tokenizer.all_special_ids)
    ids = [
        token
        for part in re.split(r"[-_]+", name)
        for token in tokenizer.encode(part, add_special_tokens=False)
        if token not in special and any(c.isalpha() for c in tokenizer.decode([token]))
    ]
    if not ids:
        return choose_initializer(tokenizer, "", GENERIC_INITIALIZER)
    pieces = [tokenizer.decode([token]).strip() for token in ids]
    return Initializer(tuple(ids), pieces[0] if len(ids) == 1 else MEAN_PREFIX + ", ".join(pieces))


def _one_token(tokenizer: PreTrainedTokenizerBase, word: str) -> Initializer:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = ", ".join(tokenizer.convert_ids_to_tokens(ids)) or "nothing"
        raise TextualInversionError(
            f"initializer word {word!r} must be one token but splits into "
            f"{len(ids)}: {pieces}; choose a word the tokenizer knows whole"
        )
    return Initializer((ids[0],), word)


def initializer_word(initializer: str | None, name: str) -> str:
    """A plain word for a subject in prompts without its token (e.g. bench's baselines): its
    initializer word; for a mean of sub-tokens, its name as words; GENERIC_INITIALIZER if none."""
    if not initializer:
        return GENERIC_INITIALIZER
    if initializer.startswith(MEAN_PREFIX):
        return " ".join(part for part in re.split(r"[-_]+", name) if part)
    return initializer


def add_placeholder_tokens(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: CLIPTextModel,
    token: str,
    initializer: str | Initializer,
    num_vectors: int = 1,
) -> list[int]:
    """Add `token` (and its extra vectors), each row the mean embedding of the initializer's ids.

    `initializer` is an Initializer (see `choose_initializer`) or a word, which must be one token
    of the tokenizer. The placeholder tokens must be new. Resizes the text encoder's input
    embeddings; returns the new token ids.
    """
    if isinstance(initializer, str):
        initializer = _one_token(tokenizer, initializer)
    ids = _add_tokens(tokenizer, text_encoder, placeholder_tokens(token, num_vectors))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[list(initializer.ids)].float().mean(0).to(weight.dtype)
    return ids


def token_ids(tokenizer: PreTrainedTokenizerBase, token: str) -> list[int]:
    """The ids of `token` and of all its extra-vector tokens present in the tokenizer."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise NotFoundError(f"the tokenizer has no token {token!r}")
    ids = [vocab[token]]
    while f"{token}_{len(ids)}" in vocab:
        ids.append(vocab[f"{token}_{len(ids)}"])
    return ids


def token_embedding(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, token: str
) -> torch.Tensor:
    """A copy of the learned embedding of `token`, shaped [num_vectors, dim]."""
    weight = text_encoder.get_input_embeddings().weight
    return weight[token_ids(tokenizer, token)].detach().clone()


def apply_token_embedding(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: CLIPTextModel,
    token: str,
    embedding: torch.Tensor,
) -> list[int]:
    """Install a learned embedding ([num_vectors, dim] or [dim]) for `token`; returns its ids.

    Adds the tokens when the tokenizer lacks them and overwrites their rows when it already has
    exactly as many vectors of `token`, so a loaded base can take a newer version of a subject.
    """
    embedding = embedding.reshape(-1, embedding.shape[-1])
    weight = text_encoder.get_input_embeddings().weight
    if embedding.shape[1] != weight.shape[1]:
        raise TextualInversionError(
            f"token embedding of {token!r} has width {embedding.shape[1]}, "
            f"the text encoder {weight.shape[1]}"
        )
    tokens = placeholder_tokens(token, embedding.shape[0])
    if token in tokenizer.get_vocab():
        ids = token_ids(tokenizer, token)
        if len(ids) != len(tokens):
            raise ConflictError(
                f"token {token!r} already has {len(ids)} vectors, the embedding {len(tokens)}"
            )
    else:
        ids = _add_tokens(tokenizer, text_encoder, tokens)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = embedding.to(device=weight.device, dtype=weight.dtype)
    return ids


class TrainableRows(nn.Module):
    """The embedding rows of placeholder tokens as a parameter of their own.

    A forward hook on the text encoder's token embedding puts `rows` in place of the looked-up
    vectors of the placeholder ids, so only they receive gradients and no other row of the
    embedding matrix can change (nor needs optimizer state). The hook sits on every embedding
    module sharing the input embedding's weight: UMT5 looks tokens up through
    `encoder.embed_tokens`, a module of its own tied to `shared`. `commit()` writes the learned
    rows into the matrix and removes the hooks.
    """

    def __init__(self, text_encoder: CLIPTextModel, ids: Sequence[int]) -> None:
        super().__init__()
        self.embedding = text_encoder.get_input_embeddings()
        weight = self.embedding.weight
        self.register_buffer("ids", torch.tensor(list(ids), device=weight.device))
        self.rows = nn.Parameter(weight[list(ids)].detach().clone().float())
        self._handles = [
            module.register_forward_hook(self._splice)
            for module in text_encoder.modules()
            if isinstance(module, nn.Embedding) and module.weight is weight
        ]

    def _splice(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        matches = args[0].unsqueeze(-1) == self.ids  # (batch, tokens, placeholders)
        found = matches.any(-1, keepdim=True)
        chosen = self.rows[matches.to(torch.uint8).argmax(-1)].to(output.dtype)
        return torch.where(found, chosen, output)

    @torch.no_grad()
    def commit(self) -> torch.Tensor:
        """Write the rows into the embedding matrix, remove the hooks; returns them [n, dim]."""
        for handle in self._handles:
            handle.remove()
        weight = self.embedding.weight
        weight[self.ids] = self.rows.detach().to(weight.dtype)
        return self.rows.detach().cpu().clone()


def check_new_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> None:
    """Refuse placeholder tokens the tokenizer already has (as a token or as one word piece)."""
    if any(not token or any(c.isspace() for c in token) for token in tokens):
        raise TextualInversionError(
            f"invalid token {tokens[0]!r}: it must be non-empty, without spaces"
        )
    for token in tokens:
        if token in tokenizer.get_vocab() or len(tokenizer.tokenize(token)) == 1:
            raise ConflictError(f"the tokenizer already has a token {token!r}; choose another")


def _add_tokens(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, tokens: Sequence[str]
) -> list[int]:
    """Add new tokens to the tokenizer and, when its embedding has no unused rows left for them
    (UMT5's has some past the tokenizer's vocabulary), rows to the text encoder; returns their
    ids. Existing rows never change."""
    check_new_tokens(tokenizer, tokens)
    tokenizer.add_tokens(list(tokens))
    if len(tokenizer) > text_encoder.get_input_embeddings().weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return tokenizer.convert_tokens_to_ids(list(tokens))
