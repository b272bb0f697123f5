"""Prompts for CLIP text encoders: token ids, the check for cut prompts, text embeddings.

`tokenize` (used by training and the sampler alike, through the base's family) is the one place
that knows how prompts are cut to the text encoder's length.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dvkit.errors import DvkitError, DvkitWarning


class PromptTooLongError(DvkitError):
    """A prompt whose learned token falls past what the text encoder reads."""


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, L) of the prompts, padded and cut to the tokenizer's L = `model_max_length`.

    Checked first with `check_prompts`: warns when a prompt is cut, raises PromptTooLongError
    when a learned token would be cut.
    """
    check_prompts(tokenizer, prompts)
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def check_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], negative: Sequence[str] = ()
) -> dict[str, int]:
    """How many tokens the text encoder loses of each prompt that does not fit; {} if all fit.

    The text encoder reads `model_max_length` tokens (77 on CLIP) with its start and end tokens,
    so a prompt keeps its first 75 and the rest is cut. Each cut prompt gives a DvkitWarning that
    names how many tokens were dropped; a learned token (one added to the tokenizer, such as a
    subject's `<cat>` or any of its extra vectors `<cat>_1`, …) among them in any prompt raises
    PromptTooLongError instead, before any warning: the prompt would silently lose its subject.
    The error calls the prompts of `negative` (checked too) negative prompts.
    """
    given = set(prompts)
    prompts = [*prompts, *negative]
    capacity = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    learned = set(tokenizer.get_added_vocab().values()) - set(tokenizer.all_special_ids)
    distinct = list(dict.fromkeys(prompts))
    tokens = tokenizer(distinct, add_special_tokens=False, verbose=False).input_ids
    cut = {prompt: ids for prompt, ids in zip(distinct, tokens, strict=True) if len(ids) > capacity}
    for prompt, ids in cut.items():
        lost = [place for place, token in enumerate(ids) if place >= capacity and token in learned]
        if lost:
            name = _learned_name(tokenizer, tokenizer.convert_ids_to_tokens(ids[lost[0]]))
            role = "prompt" if prompt in given else "negative prompt"
            raise PromptTooLongError(
                f"{role} {_quote(prompt)} has the learned token {name} at token {lost[0] + 1}, "
                f"past the {capacity} the text encoder reads; shorten the prompt or put {name} "
                "earlier"
            )
    for prompt, ids in cut.items():
        warnings.warn(
            f"prompt {_quote(prompt)} is cut to the {capacity} tokens the text encoder reads: "
            f"{len(ids) - capacity} of its {len(ids)} tokens dropped "
            f"({_quote(tokenizer.decode(ids[capacity:]), at_end=True)})",
            DvkitWarning,
            stacklevel=1,  # this line, so the default filter shows a prompt's warning once
        )
    return {prompt: len(ids) - capacity for prompt, ids in cut.items()}


def encode_text(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, prompts: Sequence[str]
) -> torch.Tensor:
    """Last hidden states (N, tokens, width) of the prompts, with gradients if enabled.

    Prompts are checked and cut as `tokenize` does.
    """
    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(ids)[0]


def _learned_name(tokenizer: PreTrainedTokenizerBase, token: str) -> str:
    """`<cat>` for its extra vectors `<cat>_1`, `<cat>_2`, …; other tokens as they are."""
    stem = re.sub(r"_\d+$", "", token)
    return stem if stem in tokenizer.get_added_vocab() else token


def _quote(text: str, at_end: bool = False, width: int = 40) -> str:
    """`text` quoted, shortened to about `width` characters from its start (or its end)."""
    if len(text) > width:
        text = "…" + text[-width:].lstrip() if at_end else text[:width].rstrip() + "…"
    return repr(text)
