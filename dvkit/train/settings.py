"""Training settings, validated up front. Defaults follow the official DreamVideo settings
(VGen `configs/dreamvideo/`; for motions its playingGuitar config); presets are named sets of
overrides: `official-carturn` is the other released motion config, `quick` is for smoke runs on
small bases.

No float field takes NaN or an infinity (`allow_inf_nan=False`); give each its range with
`Field(ge=/gt=/le=)`, and its CLI option `parser=number(RANGE)` with the equal range from
`dvkit.ranges` (`tests/test_float_options.py` checks both); int fields likewise take the
bounds of their options' `Whole` ranges (`tests/test_int_options.py`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dvkit.errors import DvkitError
from dvkit.models.builtin import BUILTINS
from dvkit.ranges import SEED, TRAINING_FRAMES
from dvkit.templates import check_template

Preset = Literal["official", "official-carturn", "quick"]
MEMORY_MODES = ("checkpoint", "fp8", "offload")
"""Memory modes of training (`dvkit.train.setup.prepare_base`)."""


class CommonSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN is never a setting

    preset: Preset = "official"
    resolution: int = Field(256, ge=8, le=2048)
    batch_size: int = Field(4, ge=1)
    seed: int = Field(0, ge=SEED.low, le=SEED.high)
    hidden_ratio: float = Field(0.5, gt=0, le=4)
    adapter: Literal["dreamvideo", "lora"] = Field(
        "dreamvideo", description="what trains: DreamVideo adapters or a MotionDirector-style LoRA"
    )
    lora_rank: int = Field(4, ge=1, le=256)
    lora_alpha: float | None = Field(None, gt=0, le=1024, description="LoRA alpha (None: rank)")
    warmup_steps: int = Field(10, ge=0)
    offset_noise: float = Field(0.1, ge=0, le=1)
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    keep_steps: list[int] = Field(
        default_factory=list, description="adapter steps kept as selectable checkpoints"
    )
    gradient_checkpointing: bool = False
    memory: list[Literal["checkpoint", "fp8", "offload"]] = Field(
        default_factory=list,
        description="memory modes (train.setup.prepare_base); gradient_checkpointing adds "
        "checkpoint",
    )
    high_noise_share: float = Field(
        0.0, ge=0, le=1, description="share of steps drawn from `high_noise_band`"
    )
    high_noise_band: tuple[float, float] = Field(
        (0.5, 1.0), description="timesteps of those steps, as fractions of the schedule"
    )
    experts: Literal["high", "low", "both"] | None = Field(
        None,
        description="on a base with two experts (Wan 2.2 A14B): the high-noise, the low-noise "
        "or both transformers get adapters; None: the kind's default (train.setup)",
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _split_memory(cls, value: Any) -> Any:
        """ "checkpoint,fp8" → ["checkpoint", "fp8"]; "none" → []; each mode once, in
        `MEMORY_MODES` order."""
        if isinstance(value, str):
            value = [] if value.strip() == "none" else value.split(",")
        if isinstance(value, (list, tuple)):
            value = [str(mode).strip() for mode in value]
            unknown = [mode for mode in value if mode not in MEMORY_MODES]
            if unknown:
                raise ValueError(
                    f"unknown memory mode {unknown[0]!r} (expected none alone, or a "
                    f"comma-separated list of {', '.join(MEMORY_MODES)})"
                )
            value = [mode for mode in MEMORY_MODES if mode in value]
        return value

    @model_validator(mode="after")
    def _check_band(self) -> CommonSettings:
        low, high = self.high_noise_band
        if not 0 <= low < high <= 1:
            raise ValueError(
                "the high-noise band needs 0 ≤ LOW < HIGH ≤ 1 (fractions of the schedule)"
            )
        return self


class SubjectSettings(CommonSettings):
    """Textual inversion (stage 1) then the identity adapter (stage 2), on 1-frame videos."""

    token: str = ""
    initializer: str = ""
    num_vectors: int = Field(1, ge=1, le=16)
    prompt: str = "a {token}"
    inversion_steps: int = Field(3000, ge=0)
    inversion_lr: float = Field(1e-4, gt=0)
    identity_steps: int = Field(1000, ge=0)
    identity_lr: float = Field(1e-5, gt=0)
    use_masks: bool = False
    from_embedding: dict[str, Any] | None = Field(
        None,
        description="where the token's fixed vectors come from when textual inversion is "
        "skipped (add_subject's `from_embedding`)",
    )

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: str) -> str:
        try:
            return check_template(prompt, ["token"])
        except DvkitError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> SubjectSettings:
        if self.inversion_steps + self.identity_steps == 0:
            raise ValueError("nothing to train: both stages have 0 steps")
        check_keep_steps(self.keep_steps, self.identity_steps, "the identity adapter trains")
        return self


class MotionSettings(CommonSettings):
    """Motion adapters on whole clips, with appearance guidance from one random frame.

    Defaults are the official playingGuitar config (`configs/dreamvideo/motionLearning/
    playingGuitar_motionLearning.yaml`); `CARTURN` holds where the carTurn config differs.
    """

    batch_size: int = Field(2, ge=1)
    frames: int = Field(32, ge=TRAINING_FRAMES.low, le=TRAINING_FRAMES.high)
    fps: float | None = Field(8.0, gt=0)
    clip_windows: int = Field(
        8, ge=1, le=256, description="windows kept per clip, each step draws one (train.windows)"
    )
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-5, gt=0)
    caption: str = ""
    text_dropout: float = Field(0.5, ge=0, le=1)
    image_dropout: float = Field(0.0, ge=0, le=1)
    image_strength_uncond: float = Field(
        0.0,
        ge=0,
        le=10,
        description="appearance-guidance λ of the unconditional branch when composing",
    )
    image_encoder: str = ""
    """open_clip `MODEL:PRETRAINED`; empty: the base's default (see `default_image_encoder`)."""

    @model_validator(mode="after")
    def _check_keep(self) -> MotionSettings:
        check_keep_steps(self.keep_steps, self.steps, "the motion adapter trains")
        return self


def check_keep_steps(keep: list[int], steps: int, what: str) -> None:
    """Kept checkpoints must be steps of the adapter's stage: 1 to `steps`."""
    outside = [step for step in keep if not 1 <= step <= steps]
    if outside:
        raise ValueError(
            f"--keep-steps {','.join(map(str, outside))}: {what} for {steps} steps, so "
            f"checkpoints can be kept at steps 1 to {steps}"
        )


QUICK = {
    "subject": {
        "resolution": 16,
        "batch_size": 2,
        "inversion_steps": 30,
        "inversion_lr": 5e-3,
        "identity_steps": 30,
        "identity_lr": 1e-3,
        "checkpoint_every": 10,
    },
    "motion": {
        "resolution": 16,
        "batch_size": 1,
        "frames": 4,
        "fps": None,
        "steps": 30,
        "lr": 1e-3,
        "checkpoint_every": 10,
    },
}


# The official carTurn motion config, where it differs from playingGuitar (MotionSettings).
CARTURN = {"image_dropout": 0.5, "steps": 3000, "batch_size": 1, "image_strength_uncond": 1.0}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "official": {"subject": {}, "motion": {}},
    "official-carturn": {"motion": CARTURN},
    "quick": QUICK,
}


def preset_values(preset: str, kind: str) -> dict[str, Any]:
    """The overrides of `preset` for a `kind` ("subject" or "motion") run, with the preset's
    name; a `DvkitError` for an unknown preset or one that does not apply to `kind`."""
    if preset not in PRESETS:
        raise DvkitError(f"unknown preset {preset!r} (expected {', '.join(PRESETS)})")
    if kind not in PRESETS[preset]:
        known = ", ".join(name for name, kinds in PRESETS.items() if kind in kinds)
        raise DvkitError(f"preset {preset!r} does not apply to a {kind} (use {known})")
    return {**PRESETS[preset][kind], "preset": preset}


REAL_IMAGE_ENCODER = "ViT-H-14:laion2b_s32b_b79k"


def default_image_encoder(base: str) -> str:
    """The official OpenCLIP ViT-H/14 for real bases; built-in bases' own offline encoders."""
    builtin = BUILTINS.get(base)
    return REAL_IMAGE_ENCODER if builtin is None else builtin.image_encoder
