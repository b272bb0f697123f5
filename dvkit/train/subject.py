"""Subject learning: textual inversion (stage 1), then the identity adapter (stage 2).

Stage 1 is skipped when the token's vectors are given (an imported textual inversion): they are
installed as they are and stay fixed while the identity adapter trains.

Images are 1-frame videos. Their VAE posteriors and (in stage 2, with the embedding frozen) the
prompt's text embedding are computed once; each step samples latents from the cached posterior.
With subject masks, both stages count only the subject's pixels (the official step-1 and step-2
configs both set `use_mask_diffusion: True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dvkit.distributed import SINGLE_PROCESS, World
from dvkit.models.components import BaseComponents
from dvkit.models.injection import AdapterInjector
from dvkit.models.textual_inversion import (
    TrainableRows,
    add_placeholder_tokens,
    apply_token_embedding,
    choose_initializer,
    expand_placeholder,
)
from dvkit.train.diffusion import diffusion_loss, latent_masks, sample_latents
from dvkit.train.loop import Reporter, Stage, run_stage
from dvkit.train.settings import SubjectSettings
from dvkit.train.setup import loop_settings, make_generator, prepare_base, trained_denoisers
from dvkit.train.weights import fresh_weights, kept_tensors, release

ADAPTER_NAME = "identity"


@dataclass
class SubjectResult:
    identity: dict[str, torch.Tensor]
    """Identity-adapter (or spatial LoRA) tensors under their file-format names."""
    embedding: torch.Tensor
    """The learned token embedding [num_vectors, dim]."""
    kept: dict[int, dict[str, torch.Tensor]]
    """Identity-adapter tensors at the kept steps."""
    loss_curves: dict[str, list[tuple[int, float]]]
    initializer: str
    """What the token's rows started from, as `Initializer.description` gives it (empty when
    the vectors were given)."""


def train_subject(
    base: BaseComponents,
    pixels: torch.Tensor,
    masks: torch.Tensor | None,
    settings: SubjectSettings,
    device: torch.device,
    dtype: torch.dtype,
    folder: Path,
    reporter: Reporter,
    resume: bool = False,
    world: World = SINGLE_PROCESS,
    name: str = "",
    embedding: torch.Tensor | None = None,
) -> SubjectResult:
    """Train a subject on `pixels` (N, 3, S, S) in [-1, 1]; `masks` (N, 1, S, S) or None.

    The token starts from `settings.initializer`, or when that is empty from the subject's `name`
    (see `choose_initializer`). With a given `embedding` [num_vectors, dim] the token takes
    those vectors, fixed: textual inversion is skipped and only the identity adapter trains
    (the result's `initializer` is then empty).
    """
    family, unet, text_encoder = base.family, base.unet, base.text_encoder
    denoisers = trained_denoisers(base, settings.experts, "subject")
    prepare_base(base, device, dtype, settings, denoisers)
    if embedding is None:
        initializer = choose_initializer(base.tokenizer, settings.initializer, name)
        ids = add_placeholder_tokens(
            base.tokenizer, text_encoder, settings.token, initializer, settings.num_vectors
        )
    else:
        apply_token_embedding(base.tokenizer, text_encoder, settings.token, embedding)
    prompt = expand_placeholder(
        settings.prompt.format(token=settings.token), settings.token, settings.num_vectors
    )
    input_ids = family.tokenize(base, [prompt]).to(device)
    mean, std = (t.unsqueeze(2) for t in family.encode_frames(base, pixels))  # (N, C, 1, h, w)
    subject_masks = None
    if masks is not None:
        subject_masks = latent_masks(masks, mean.shape[-2:]).unsqueeze(2).to(device)  # (N,1,1,h,w)
    generator = make_generator(settings.seed, device, world)
    batch = settings.batch_size
    loop = loop_settings(settings, device, dtype, world)

    def noisy_batch(gen: torch.Generator) -> tuple[torch.Tensor | None, ...]:
        index = torch.randint(len(mean), (batch,), generator=gen, device=device)
        latents = sample_latents(mean[index], std[index], gen)
        noisy, target, timesteps = family.add_noise(
            base, latents, gen, settings.offset_noise,
            settings.high_noise_share, settings.high_noise_band, tuple(denoisers),
        )  # fmt: skip
        mask = subject_masks[index] if subject_masks is not None else None
        return noisy.to(dtype), target, timesteps, mask

    curves: dict[str, list[tuple[int, float]]] = {}
    if embedding is None:
        rows = TrainableRows(text_encoder, ids)

        def inversion_loss(gen: torch.Generator) -> torch.Tensor:
            noisy, target, timesteps, mask = noisy_batch(gen)
            text = family.embed_ids(base, input_ids.expand(batch, -1))
            prediction = family.predict(base, noisy, timesteps, text)
            return diffusion_loss(prediction, target, mask)

        inversion = run_stage(
            Stage("inversion", settings.inversion_steps, settings.inversion_lr,
                  {"token_embedding": rows.rows}, inversion_loss),
            loop, folder, generator, reporter, resume,
        )  # fmt: skip
        embedding, curves["inversion"] = rows.commit(), inversion.loss_curve
        described = initializer.description
    else:
        embedding, described = embedding.detach().float().cpu().clone(), ""

    with torch.no_grad():
        text = family.embed_ids(base, input_ids).expand(batch, -1, -1)
    injector = AdapterInjector(unet, base.unet_2, device)
    weights = fresh_weights(injector, base, denoisers, "subject", settings, ADAPTER_NAME)

    def identity_loss(gen: torch.Generator) -> torch.Tensor:
        noisy, target, timesteps, mask = noisy_batch(gen)
        prediction = family.predict(base, noisy, timesteps, text)
        return diffusion_loss(prediction, target, mask)

    try:
        identity = run_stage(
            Stage("identity", settings.identity_steps, settings.identity_lr,
                  weights.parameters_by_name(), identity_loss, settings.keep_steps),
            loop, folder, generator, reporter, resume,
        )  # fmt: skip
        tensors = {name: value.cpu().clone() for name, value in weights.tensors().items()}
    finally:
        release(injector, weights)
    return SubjectResult(
        identity=tensors,
        embedding=embedding,
        kept=kept_tensors(weights, identity.kept),
        loss_curves={**curves, "identity": identity.loss_curve},
        initializer=described,
    )
