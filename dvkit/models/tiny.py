"""The built-in `tiny` base: small components built from fixed configs and a seed, no download.

Meant for tests and smoke runs: fast and deterministic, its pictures mean nothing. Its tokenizer
is a small byte-level BPE whose vocab.json and merges.txt dvkit writes itself.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dvkit.models.components import BaseComponents, dreamvideo_scheduler

TINY_NAME = "tiny"
TINY_ARCHITECTURE = "modelscope-t2v"
TEXT_WIDTH = 32
MAX_TOKENS = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# Whole words the tokenizer knows as one token each; everything else falls back to bytes.
TINY_WORDS = (
    "a", "an", "the", "of", "in", "on", "at", "is", "and", "with",
    "photo", "video", "cat", "dog", "bear", "bird", "car", "man", "woman", "person",
    "surfing", "running", "dancing", "riding", "flying", "walking", "skiing", "beach", "snow",
)  # fmt: skip


def build_tiny_base(seed: int = 0) -> BaseComponents:
    """Build the `tiny` base; the same seed always gives the same weights (and fingerprint)."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = small_unet(sample_size=8, channels=4, widths=(16, 32), text_width=TEXT_WIDTH)
        vae = small_vae()
        text_encoder = small_text_encoder(tokenizer, TEXT_WIDTH, intermediate=37)
    scheduler = dreamvideo_scheduler()
    return BaseComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        name=TINY_NAME,
        architecture=TINY_ARCHITECTURE,
    )


def small_vae() -> AutoencoderKL:
    """A freshly initialised one-level `AutoencoderKL` with 4 latent channels and no
    downsampling (draws from torch's RNG)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(16,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    )


def small_unet(
    sample_size: int, channels: int, widths: tuple[int, int], text_width: int
) -> UNet3DConditionModel:
    """A freshly initialised two-level 3D UNet (cross-attention and spatial/temporal transformers
    at the first level and in the middle, 4 heads), as the built-in bases use (draws from torch's
    RNG)."""
    return UNet3DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=widths,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=text_width,
        attention_head_dim=4,  # diffusers' name for the number of heads
    )


def small_text_encoder(
    tokenizer: CLIPTokenizer, width: int, intermediate: int, layers: int = 2, heads: int = 4
) -> CLIPTextModel:
    """A freshly initialised CLIP text encoder sized for `tokenizer` (draws from torch's RNG)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=intermediate,
            projection_dim=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over the tiny vocabulary."""
    return build_word_tokenizer(TINY_WORDS, MAX_TOKENS)


def build_word_tokenizer(words: Sequence[str], max_tokens: int) -> CLIPTokenizer:
    """A CLIP tokenizer knowing `words` whole, loaded from files written to a temp folder."""
    with tempfile.TemporaryDirectory(prefix="dvkit-tokenizer-") as folder:
        write_word_vocab(Path(folder), words)
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_tokens)


def write_word_vocab(folder: Path, words: Sequence[str] = TINY_WORDS) -> None:
    """Write a byte-level BPE tokenizer's `vocab.json` and `merges.txt` into `folder`.

    The vocabulary holds the 256 byte characters of byte-level BPE, each again with the end-of-word
    suffix, the merge results that spell every word of `words`, then the start and end tokens.
    Each word is spelled by merging left to right; longer words' merges rank first so that a short
    word's merge cannot split a longer word. A word whose inner letters start a longer word (e.g.
    "striped" beside "triangle") loses those letters to the longer word's merges and becomes a
    few tokens; every word of `TINY_WORDS` is one token.
    """
    characters = _byte_characters()
    vocab = {symbol: index for index, symbol in enumerate(characters)}
    for character in characters:
        vocab[character + END_OF_WORD] = len(vocab)
    merges: list[str] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        merged = word[0]
        for position, character in enumerate(word[1:], start=2):
            symbol = character + (END_OF_WORD if position == len(word) else "")
            merge = f"{merged} {symbol}"
            if merge not in merges:
                merges.append(merge)
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")


def _byte_characters() -> list[str]:
    """The printable stand-in character of each byte 0..255, as byte-level BPE (GPT-2, CLIP) uses.

    Printable Latin-1 bytes stand for themselves; the others take code points from 256 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    characters = []
    next_code_point = 256
    for byte in range(256):
        if byte in printable:
            characters.append(chr(byte))
        else:
            characters.append(chr(next_code_point))
            next_code_point += 1
    return characters
