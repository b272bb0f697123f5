"""Pydantic records stored in the catalog. Each row keeps its record as JSON in `record`;
`id` and `tags` live in their own columns and tables and are filled in on read."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AdapterKind = Literal["subject", "motion"]
ADAPTER_KINDS: tuple[str, ...] = ("subject", "motion")
AdapterMethod = Literal["dreamvideo", "lora"]


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def stored_json(self) -> str:
        """The JSON kept in the row's `record` column (without row-owned fields)."""
        return self.model_dump_json(exclude={"id", "tags"})


class BaseModelRecord(Record):
    """A frozen text-to-video base model known to the catalog."""

    name: str
    source: str = Field(description="Hub id, local folder or 'builtin:NAME'")
    fingerprint: str = Field(description="sha256 over architecture config and weights")
    architecture: str = Field(description="family, e.g. modelscope-t2v")
    builtin: bool = False
    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    created: datetime = Field(default_factory=utc_now)


class AdapterRecord(Record):
    """One version of a subject or motion adapter: DreamVideo adapters or a LoRA."""

    id: int | None = None
    kind: AdapterKind
    method: AdapterMethod = "dreamvideo"
    rank: int | None = None
    """A LoRA's (largest) rank."""
    alpha: float | None = None
    """A LoRA's alpha (None where its layers differ)."""
    name: str
    version: int = 0
    base: str
    base_fingerprint: str
    architecture: str = ""
    token: str | None = None
    initializer: str | None = None
    num_vectors: int | None = None
    hidden_ratio: float = 0.5
    placement: list[str] = Field(default_factory=list)
    """The layers adapters sit beside (attn1, attn2, ff), or a LoRA's target layer names."""
    training: dict[str, Any] = Field(default_factory=dict)
    data_fingerprints: list[str] = Field(default_factory=list)
    blob: str
    size: int
    weights_hash: str
    params: int
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    run_id: int | None = None
    created: datetime = Field(default_factory=utc_now)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class RunRecord(Record):
    """Provenance of one training run."""

    id: int | None = None
    adapter_id: int | None = None
    kind: AdapterKind
    status: Literal["running", "finished", "interrupted", "failed"] = "running"
    settings: dict[str, Any] = Field(default_factory=dict)
    data_fingerprints: list[str] = Field(default_factory=list)
    loss_curves: dict[str, list[tuple[int, float]]] = Field(default_factory=dict)
    base: str = ""
    wall_seconds: float = 0.0
    device: str = "cpu"
    created: datetime = Field(default_factory=utc_now)


class EvaluationRecord(Record):
    """One generated video: the adapters, prompt, seed and settings, its files and (once
    scored) its metrics."""

    id: int | None = None
    subject_id: int | None = None
    motion_id: int | None = None
    subject: str | None = None
    motion: str | None = None
    prompt: str
    seed: int
    sampler: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    """None: the metric does not apply (T. Cons. of a 1-frame video)."""
    files: list[str] = Field(default_factory=list)
    cell: str | None = None
    """Key of the grid cell (adapters, prompt, seed, sampler settings) for `dvkit bench`."""
    created: datetime = Field(default_factory=utc_now)
