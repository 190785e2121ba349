"""Pydantic models of the API edge: the JSON shapes a client sends and gets back.

They check shapes and simple bounds (so a 422 names the field); the defaults are the domain's (``workers.spec``,
``search_spaces.probes``), read from there, so that each default has one owner. ``schedule`` and the workload's
params are checked by the domain (``search_spaces``, the workload registry), whose schemas ``phasetune.service.openapi``
publishes; the rest of the meaning by ``StudySpec.parse``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from phasetune.search_spaces.checks import Interval
from phasetune.search_spaces.families.base import LR_MAX, MAX_EPOCHS
from phasetune.search_spaces.probes import CurvatureOptions, LRRangeOptions
from phasetune.service.auth import Scope
from phasetune.service.db import TOKEN_NAME_MAX
from phasetune.service.openapi import SCHEDULE_FIELD
from phasetune.workers.early_stopping import BOUNDS, RETIRED, EarlyStopping, Policy
from phasetune.workers.probe_names import ProbeKind, ProbeStatus
from phasetune.workers.seeding import SEED_MAX, SeedPolicy, SeedScope
from phasetune.workers.spec import (
    MAX_CONCURRENT_TRIALS,
    MAX_TIME_LIMIT_S,
    Direction,
    Resources,
    SamplerName,
    SamplerSpec,
    StudySpec,
)
from phasetune.workers.study_attrs import StudyStatus
from phasetune.workers.tree import BOUNDS as TREE_BOUNDS
from phasetune.workers.tree import StrategyName, TreeOptions

# Every request model: unknown fields are errors, and so are infinite and NaN numbers (JSON allows neither, Python's
# parser accepts both, and no field of phasetune's means anything by them).
INPUT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _numeric(annotation: Any) -> bool:
    """The field takes a number and not a boolean (``int``, ``float | None``...)."""
    options = get_args(annotation) or (annotation,)
    return bool({int, float} & set(options)) and bool not in options


class RequestModel(BaseModel):
    """A request body's model: ``INPUT``'s rules, and a JSON boolean is no number (pydantic's lax mode reads
    ``"gpu": false`` as 0). A field validator, not strict types: strict ints would refuse ``5.0``, an integer to JSON
    Schema and to the domain, and annotated number types lose their bounds in the JSON Schema of ``X | None``."""

    model_config = INPUT

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _numeric(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
        return value


def _within(interval: Interval) -> dict[str, float]:
    """Pydantic's bounds for a domain ``Interval``: the API checks and documents what the domain does."""
    bounds = {}
    if interval.low is not None:
        bounds["gt" if interval.open_low else "ge"] = interval.low
    if interval.high is not None:
        bounds["lt" if interval.open_high else "le"] = interval.high
    return bounds


def _option(name: str, description: str) -> Any:
    """An early-stopping option: unset by default, within the domain's bounds for it."""
    return Field(None, **_within(BOUNDS[name]), description=description)


class WorkloadIn(RequestModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveIn(RequestModel):
    metric: str
    direction: Direction | None = Field(None, description="default: the metric's own (accuracy up, losses down)")


class SamplerIn(RequestModel):
    name: SamplerName = SamplerSpec.name
    seed: int | None = Field(SamplerSpec.seed, ge=0, le=SEED_MAX, description="default: the study's seed")
    n_startup_trials: int = Field(SamplerSpec.n_startup_trials, ge=0)


class ResourcesIn(RequestModel):
    cpu: float = Field(Resources.cpu, gt=0)
    gpu: float = Field(Resources.gpu, ge=0)


class SeedPolicyIn(RequestModel):
    """Which seeds vary per trial. The data always come from the study's seed."""
    init: SeedScope = Field(SeedPolicy.init, description="initial weights: the study's seed, or each trial's own")
    batch_order: SeedScope = Field(SeedPolicy.batch_order, description="batch order: the study's seed, or the trial's")


class EarlyStoppingIn(RequestModel):
    """Which trials of a plain study stop before their last epoch, on raw values (the baselines users know; a tree
    study takes its own decisions). Each policy takes only its own options (unset: the default): ``median``
    grace_period, min_peers; ``asha`` those and reduction_factor. See docs/search.md, "Early stopping"."""
    policy: Policy = EarlyStopping.policy
    grace_period: int | None = _option("grace_period", f"epochs before the first decision "
                                                       f"(default {EarlyStopping.grace_period})")
    min_peers: int | None = _option("min_peers", f"trials with a value at a point before any stops there "
                                                 f"(default {EarlyStopping.min_peers})")
    reduction_factor: float | None = _option("reduction_factor", f"rungs at grace_period * rf**k epochs; the top "
                                                                 f"1/rf go on (default "
                                                                 f"{EarlyStopping.reduction_factor:g})")

    @field_validator("policy", mode="before")
    @classmethod
    def _retired(cls, value: Any) -> Any:
        if isinstance(value, str) and value in RETIRED:
            raise PydanticCustomError("retired", RETIRED[value])
        return value


def _tree_option(name: str, description: str) -> Any:
    """A tree option: unset by default (TreeOptions' default), within the domain's bounds for it."""
    return Field(None, **_within(TREE_BOUNDS[name]),
                 description=f"{description} (default {getattr(TreeOptions, name):g})")


class StrategyIn(RequestModel):
    """How trials are chosen and run: ``plain`` (the sampler's trials, each from epoch 0; takes no options) or
    ``tree`` (shared schedule prefixes trained once and judged by a cooldown probe, leaves judged after their own
    decay, every stop gated by measured rank agreement). See docs/search.md, "The schedule tree"."""
    name: StrategyName = StrategyName.PLAIN
    grid: int | None = _tree_option("grid", "values per shared setting (every phase's but the last)")
    reduction_factor: float | None = _tree_option("reduction_factor", "the top 1/rf of the prefixes (leaves) at a "
                                                                      "rung go on")
    min_peers: int | None = _tree_option("min_peers", "prefixes (leaves) with a signal at a rung before any stops")
    gate_threshold: float | None = _tree_option("gate_threshold", "a rung stops nothing until its signal's rank "
                                                                  "agreement with completed leaves' finals is this")
    gate_min_pairs: int | None = _tree_option("gate_min_pairs", "completed leaves a rung's agreement needs")
    cooldown_fraction: float | None = _tree_option("cooldown_fraction", "the prefix probe's span, a share of the "
                                                                        "steps done")
    max_bytes: int | None = _tree_option("max_bytes", "the checkpoint store's cap")


class StudyCreate(RequestModel):
    """The public study spec (docs/spec.md explains it; docs/reference/spec.md lists every field)."""
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    workload: WorkloadIn
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    objective: ObjectiveIn
    schedule: Annotated[dict[str, Any], WithJsonSchema(SCHEDULE_FIELD)]
    n_trials: int = Field(ge=1, le=100_000)
    max_concurrent_trials: int = Field(StudySpec.max_concurrent_trials, ge=1, le=MAX_CONCURRENT_TRIALS,
                                       description="at most this many trials at once, and at most as many as the "
                                                   "cluster has room for (the driver caps it)")
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    resources_per_trial: ResourcesIn = Field(default_factory=ResourcesIn)
    seed: int = Field(StudySpec.seed, ge=0, le=SEED_MAX,
                      description="the study's seed: data, initial weights, batch order (see seed_policy), sampler")
    seed_policy: SeedPolicyIn = Field(default_factory=SeedPolicyIn)
    trial_time_limit_s: float | None = Field(StudySpec.trial_time_limit_s, gt=0, le=MAX_TIME_LIMIT_S,
                                             description="a trial still training after this long ends PRUNED")
    study_time_limit_s: float | None = Field(StudySpec.study_time_limit_s, gt=0, le=MAX_TIME_LIMIT_S,
                                             description="the study ends this long after it began running; its "
                                                         "running trials end PRUNED")
    early_stopping: EarlyStoppingIn = Field(default_factory=EarlyStoppingIn)
    strategy: StrategyIn = Field(default_factory=StrategyIn)
    branching: dict[str, Any] | None = Field(None, description="retired: the schedule tree (strategy) replaced it; a "
                                                               "spec that enables it is a 422", deprecated=True)


class TrialOut(BaseModel):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    schedule: dict[str, Any] | None
    metrics: list[dict[str, Any]] | None = Field(description="per-epoch records; null when asked without history")
    user_attrs: dict[str, Any]


class StudyOut(BaseModel):
    id: int  # the Optuna study id, the same the Optuna dashboard shows
    name: str
    status: StudyStatus
    spec: dict[str, Any]
    created_at: str | None
    n_trials: int
    trial_counts: dict[str, int]
    best_trial: TrialOut | None
    error: str | None = None
    waiting_for: str | None = Field(None, description="what a study waiting_for_resources waits for")
    checkpoints: dict[str, int] | None = Field(None, description="a tree study's checkpoint store: checkpoints "
                                                                 "and bytes it holds, reuses and reused_epochs")
    tree: dict[str, Any] | None = Field(None, description="a tree study's trunks and their leaves, the prefixes "
                                                           "probed at each candidate, stops by kind, each rung's "
                                                           "gate")
    dashboard_url: str | None = None


class ParamOut(BaseModel):
    name: str
    kind: str  # int | float | bool | str | path (relative to the service's data root)
    default: Any = None
    required: bool = False
    help: str = ""
    low: int | float | None = None
    high: int | float | None = None
    choices: list[Any] | None = None


class MetricOut(BaseModel):
    name: str
    direction: Direction
    final: bool = False  # reported once, at a trial's end, on the test split: never an objective


class WorkloadOut(BaseModel):
    name: str
    distribution: str  # the installed distribution that registers it
    version: str
    description: str = ""
    params: list[ParamOut] = Field(default_factory=list)
    metrics: list[MetricOut] = Field(default_factory=list)
    loss_kind: str | None = None  # set: the curvature probe (lr_crit) supports its loss
    unavailable: str | None = None  # set: what this machine lacks to run it (a 422 names it too)
    error: str | None = None  # set: its plugin failed to load (nothing else is)


class CurvatureOptionsIn(RequestModel):
    probe_batch: int = Field(CurvatureOptions.probe_batch, ge=1, description="examples in the fixed probe batch")
    iters: int = Field(CurvatureOptions.iters, ge=1, description="maximum G-vector products (Lanczos steps)")
    tol: float = Field(CurvatureOptions.tol, gt=0, description="stop once |dλ|/λ < tol")
    mode: Literal["train", "eval"] = CurvatureOptions.mode  # type: ignore[assignment]


class LRRangeOptionsIn(RequestModel):
    lr_low: float = Field(LRRangeOptions.lr_low, gt=0, le=LR_MAX)
    lr_high: float = Field(LRRangeOptions.lr_high, gt=0, le=LR_MAX, description="at most float32's largest")
    steps: int = Field(LRRangeOptions.steps, ge=2, le=100_000)
    batch_size: int | None = Field(LRRangeOptions.batch_size, ge=1, description="default: the workload's")


class ProbeCreate(RequestModel):
    """``POST /probes``: run one probe on a workload built as a study's trials would build it (same seed)."""
    kind: ProbeKind
    workload: WorkloadIn
    seed: int = Field(0, ge=0, le=SEED_MAX)
    options: dict[str, Any] = Field(default_factory=dict, description="CurvatureOptionsIn or LRRangeOptionsIn")
    resources: ResourcesIn = Field(default_factory=ResourcesIn)


class ProbeOut(BaseModel):
    id: int
    kind: str
    workload: dict[str, Any]
    seed: int
    options: dict[str, Any]
    resources: dict[str, Any] | None = None
    status: ProbeStatus = Field(description="running, then done (with its result) or failed (with its error)")
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: str


class TokenCreate(RequestModel):
    scope: Scope
    name: str = Field("", max_length=TOKEN_NAME_MAX, description="what the token is for (shown by token list)")


class TokenOut(BaseModel):
    id: int
    name: str
    scope: Scope
    created_at: datetime
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown this once, only its hash is stored")
