"""The built-in `tiny-wan` base: a Wan 2.1-shaped base built from small configs and a seed, for
tests and smoke runs (its pictures mean nothing).

Same classes and layout as a real Wan base — a `WanTransformer3DModel` (2 blocks, width 24,
patches 1×2×2, cross-attention norm on as on Wan 2.1), an `AutoencoderKLWan` (8× in space, 4×
in time, 4 latent channels with their own `latents_mean` / `latents_std`), a `UMT5EncoderModel`
(width 32, vocabulary padded past the tokenizer's as umt5-xxl's is) and a
`UniPCMultistepScheduler` with Wan's flow settings — only small. The tokenizer is a WordPiece
model over the tiny vocabulary written here (no download), with T5's `<pad>` (0) and `</s>` (1)
appended to every prompt.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from dvkit.models.components import BaseComponents
from dvkit.models.tiny import TINY_WORDS

TINY_WAN_NAME = "tiny-wan"
TINY_WAN22_NAME = "tiny-wan22"
BOUNDARY_RATIO = 0.875
"""Where `tiny-wan22` passes from its high- to its low-noise expert (Wan2.2-T2V-A14B's
model_index.json)."""
TEXT_WIDTH = 32
MAX_TOKENS = 32
LATENT_CHANNELS = 4
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
EXTRA_WORDS = ("object", "my", "toy", "red", "blue")
VOCAB_PADDING = 16
"""The text encoder has rows for the tokenizer's vocabulary and up to the next multiple of this
past it (umt5-xxl has 256,384 rows for a smaller vocabulary): new tokens first take unused
rows."""


def build_tiny_wan_base(seed: int = 0) -> BaseComponents:
    """Build `tiny-wan`; the same seed always gives the same weights (and fingerprint)."""
    return _build(TINY_WAN_NAME, seed, experts=1)


def build_tiny_wan22_base(seed: int = 0) -> BaseComponents:
    """Build `tiny-wan22`: `tiny-wan` with a second, low-noise expert (its own random
    transformer) taking over below `BOUNDARY_RATIO` of the schedule, as Wan 2.2 A14B."""
    return _build(TINY_WAN22_NAME, seed, experts=2)


def _build(name: str, seed: int, experts: int) -> BaseComponents:
    tokenizer = build_wan_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers = [small_wan_transformer().eval() for _ in range(experts)]
        vae = small_wan_vae()
        text_encoder = small_umt5(len(tokenizer))
    return BaseComponents(
        unet=transformers[0],
        unet_2=transformers[1] if experts == 2 else None,
        boundary_ratio=BOUNDARY_RATIO if experts == 2 else None,
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=wan_scheduler(),
        name=name,
        architecture="wan",
    )


def small_wan_transformer() -> WanTransformer3DModel:
    """A freshly initialised 2-block Wan transformer (2 heads of 12; draws from torch's RNG)."""
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_WIDTH,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        rope_max_seq_len=32,
    )


def small_wan_vae() -> AutoencoderKLWan:
    """A freshly initialised Wan VAE: 3 downsamplings (8× in space), the last two also in time
    (4×), base width 8 (draws from torch's RNG)."""
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[1.5, 0.8, 1.2, 2.0],
    )


def small_umt5(tokens: int) -> UMT5EncoderModel:
    """A freshly initialised 2-layer UMT5 encoder with rows for `tokens` tokens and spare ones."""
    rows = (tokens // VOCAB_PADDING + 1) * VOCAB_PADDING
    return umt5_encoder(rows, TEXT_WIDTH, heads=4, head_width=8, ffn=37, layers=2, buckets=8)


def umt5_encoder(
    rows: int, width: int, heads: int, head_width: int, ffn: int, layers: int, buckets: int
) -> UMT5EncoderModel:
    """A freshly initialised UMT5 encoder: gated-GELU FFN, T5's special ids, relative positions
    in `buckets` buckets up to distance 4 × `buckets` (umt5-xxl: 32 up to 128); draws from
    torch's RNG."""
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=rows,
            d_model=width,
            d_kv=head_width,
            d_ff=ffn,
            num_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=buckets,
            relative_attention_max_distance=buckets * 4,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def wan_scheduler() -> UniPCMultistepScheduler:
    """UniPC with flow prediction and flow shift 3, as the Wan 2.1 480p bases' scheduler
    config."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    )


def build_wan_tokenizer(max_tokens: int = MAX_TOKENS) -> PreTrainedTokenizerFast:
    """A T5-style fast tokenizer over the tiny vocabulary: whole words, else single characters
    (WordPiece, `##` for continuations), `</s>` after every prompt, `<pad>` padding to
    `max_tokens`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    characters = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    words = dict.fromkeys(
        [*SPECIAL_TOKENS, *TINY_WORDS, *EXTRA_WORDS, *characters, *(f"##{c}" for c in characters)]
    )
    vocab = {word: index for index, word in enumerate(words)}
    model = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=64))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.decoder = decoders.WordPiece()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_tokens,
    )
