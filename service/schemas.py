"""Pydantic models of the API edge: the study spec as sent, and what the API returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WorkloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


class SamplerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = None
    n_startup_trials: int = Field(5, ge=0)


class ResourcesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class StudyCreate(BaseModel):
    """The public study spec (see README). ``schedule`` is checked by ``search_spaces`` (it is recursive)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    workload: WorkloadIn
    epochs: int = Field(ge=1, le=100_000)
    objective: ObjectiveIn
    schedule: dict[str, Any]
    n_trials: int = Field(ge=1, le=100_000)
    max_concurrent_trials: int = Field(1, ge=1)
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    resources_per_trial: ResourcesIn = Field(default_factory=ResourcesIn)


class TrialOut(BaseModel):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    schedule: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    user_attrs: dict[str, Any]


class StudyOut(BaseModel):
    id: int
    name: str
    status: str
    spec: dict[str, Any]
    created_at: str
    n_trials: int
    trial_counts: dict[str, int]
    best_trial: TrialOut | None
    error: str | None = None
    dashboard_url: str | None = None


class CurvatureOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probe_batch: int = Field(256, ge=1, description="examples in the fixed probe batch")
    iters: int = Field(50, ge=1, description="maximum G-vector products (Lanczos steps)")
    tol: float = Field(1e-3, gt=0, description="stop once |dλ|/λ < tol")
    mode: Literal["train", "eval"] = "train"


class LRRangeOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr_low: float = Field(1e-7, gt=0)
    lr_high: float = Field(10.0, gt=0)
    steps: int = Field(100, ge=2, le=100_000)
    batch_size: int | None = Field(None, ge=1, description="default: the workload's batch size")


class ProbeCreate(BaseModel):
    """``POST /probes``: run one probe on a workload built as a study's trials would build it (same seed)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["curvature", "lr_range"]
    workload: WorkloadIn
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict, description="CurvatureOptionsIn or LRRangeOptionsIn")
    resources: ResourcesIn = Field(default_factory=ResourcesIn)


class ProbeOut(BaseModel):
    id: int
    kind: str
    workload: dict[str, Any]
    seed: int
    options: dict[str, Any]
    result: dict[str, Any]
    created_at: str
