"""The study spec: one frozen object, built once from the validated request and read back from the storage the
same way, so the service, the driver and the trials read one set of defaults.

The API edge (``service/schemas.py``) checks the JSON's shape and takes its defaults from here; ``StudySpec.parse``
does the rest: the workload and its params, the objective metric, and the schedule space at the workload's real
steps per epoch (``search_spaces`` owns every rule of the schedule, units included). ``to_dict`` is what the
storage keeps; ``parse(spec.to_dict()) == spec``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from phasetune.search_spaces import SpecError, presets, validate_schedule
from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.jsonsafe import json_safe
from phasetune.workers.early_stopping import EarlyStopping, Policy
from phasetune.workers.seeding import SeedPolicy, Seeds, SeedScope, trial_seeds
from phasetune.workers.tree import FixedProbes, Strategy, StrategyName, check_space
from phasetune.workers.workloads import resolve_runtime, workload_steps


class Direction(str, enum.Enum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class SamplerName(str, enum.Enum):
    TPE = "tpe"
    RANDOM = "random"


@dataclass(frozen=True)
class WorkloadRef:
    name: str
    params: Mapping[str, Any]  # every parameter, defaults filled in


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction = Direction.MINIMIZE


@dataclass(frozen=True)
class SamplerSpec:
    name: SamplerName = SamplerName.TPE
    seed: int | None = None  # None: the study's seed
    n_startup_trials: int = 5  # TPE's random trials before it models the space


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


MAX_EPOCH_TRIALS = 1_000_000  # epochs × n_trials: what one study may ask of the machine
MAX_CONCURRENT_TRIALS = 256  # beyond any cluster this is deployed on; the driver caps it by the cluster's slots
MAX_TIME_LIMIT_S = 30 * 24 * 3600.0


@dataclass(frozen=True)
class StudySpec:
    """A study as every part of phasetune reads it. ``steps_per_epoch`` is the workload's, from its params."""

    name: str
    workload: WorkloadRef
    epochs: int
    objective: Objective
    schedule: Mapping[str, Any]
    n_trials: int
    steps_per_epoch: int
    max_concurrent_trials: int = 1
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    resources_per_trial: Resources = field(default_factory=Resources)
    seed: int = 0  # the study's seed: data, initial weights and batch order (per ``seed_policy``), and the sampler's
    seed_policy: SeedPolicy = field(default_factory=SeedPolicy)
    data_root: str | None = None  # where the workload's ``path`` params are: the service's, recorded at submission
    trial_time_limit_s: float | None = None  # a trial still training after this long ends PRUNED (checked per epoch)
    study_time_limit_s: float | None = None  # the study ends (completed) this long after it began running
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)  # none: every trial to its last epoch
    strategy: Strategy = field(default_factory=Strategy)  # plain: the sampler's trials; tree: workers.tree

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> StudySpec:
        """The spec of a shape-checked request (or a stored ``to_dict``); SpecError naming the field if invalid."""
        data_root = raw.get("data_root")
        try:
            workload, params, runtime = resolve_runtime(raw["workload"]["name"], raw["workload"].get("params"),
                                                        data_root)
            steps_per_epoch = workload_steps(workload, runtime)
        except SpecError as err:
            raise err.under("workload") from None
        objective = _objective(raw["objective"], workload.epoch_metrics(), workload.name)
        epochs, n_trials = int(raw["epochs"]), int(raw["n_trials"])
        try:
            validate_schedule(raw["schedule"], epochs, steps_per_epoch)
        except SpecError as err:
            raise err.under("schedule") from None
        if "lr_crit" in presets.required_units(raw["schedule"]) and workload.loss_kind is None:
            raise RuleError(("schedule",), f"ranges in units of lr_crit need the curvature probe, which does not "
                                           f"know workload {workload.name!r}'s loss (it declares no loss_kind)")
        early_stopping = EarlyStopping.parse(raw.get("early_stopping"))
        if early_stopping.policy is not Policy.NONE and not early_stopping.rungs(epochs):
            raise RuleError(("early_stopping", "grace_period"),
                            f"must be below epochs ({epochs}): at {early_stopping.grace_period} no trial is judged")
        sampler = raw.get("sampler") or {}
        policy = raw.get("seed_policy") or {}
        seed_policy = _build(SeedPolicy, policy, init=SeedScope, batch_order=SeedScope)
        _check_retired_branching(raw.get("branching"))
        strategy = Strategy.parse(raw.get("strategy"))
        if strategy.name is StrategyName.TREE:
            _check_tree(raw["schedule"], epochs, seed_policy, early_stopping)
        return cls(
            name=raw["name"],
            workload=WorkloadRef(workload.name, params),
            epochs=epochs,
            objective=objective,
            schedule=raw["schedule"],
            n_trials=n_trials,
            steps_per_epoch=steps_per_epoch,
            max_concurrent_trials=int(raw.get("max_concurrent_trials", cls.max_concurrent_trials)),
            sampler=_build(SamplerSpec, sampler, name=SamplerName),
            resources_per_trial=_build(Resources, raw.get("resources_per_trial") or {}, cpu=float, gpu=float),
            seed=int(raw.get("seed", cls.seed)),
            seed_policy=seed_policy,
            data_root=data_root,
            trial_time_limit_s=_optional_float(raw.get("trial_time_limit_s")),
            study_time_limit_s=_optional_float(raw.get("study_time_limit_s")),
            early_stopping=early_stopping,
            strategy=strategy,
        )

    def check_limits(self) -> None:
        """The limits that protect the machine, checked at submission (a study stored before a limit changed
        still runs): SpecError naming the field."""
        if self.epochs * self.n_trials > MAX_EPOCH_TRIALS:
            raise RuleError(("n_trials",), f"epochs × n_trials = {self.epochs * self.n_trials:,} exceeds the limit "
                                           f"of {MAX_EPOCH_TRIALS:,} epochs per study")

    def to_dict(self) -> dict[str, Any]:
        """The JSON the storage keeps (enums as their values); ``steps_per_epoch`` is derived, not kept."""
        out: dict[str, Any] = json_safe(asdict(self))
        out.pop("steps_per_epoch")
        out["early_stopping"] = self.early_stopping.to_dict()  # the policy's own options only
        out["strategy"] = self.strategy.to_dict()
        return out

    @property
    def sampler_seed(self) -> int:
        return self.seed if self.sampler.seed is None else self.sampler.seed

    def trial_seeds(self, trial_number: int) -> Seeds:
        """The seeds trial ``trial_number`` trains with, under this study's seed policy."""
        return trial_seeds(self.seed, self.seed_policy, trial_number)

    def trial_config(self, number: int, schedule: Mapping[str, Any], branching: Mapping[str, Any] | None = None,
                     probe_at: tuple[int, ...] = ()) -> TrialConfig:
        """What trial ``number`` trains: this study's workload, epochs and seeds, and its own concrete schedule."""
        fraction = self.strategy.tree.cooldown_fraction if self.strategy.tree is not None else 0.0
        return TrialConfig(number=number, schedule=schedule, workload=self.workload, epochs=self.epochs,
                           seeds=self.trial_seeds(number), metric=self.objective.metric, data_root=self.data_root,
                           cpus=self.resources_per_trial.cpu, branching=branching, probe_at=probe_at,
                           probe_fraction=fraction)


@dataclass(frozen=True)
class TrialConfig:
    """One trial as the trainable reads it: built by the searcher from the study's spec, parsed nowhere else.

    It crosses Ray Tune whole, as the only value of the trial's config (``TRIAL_CONFIG``): Tune flattens nested
    dicts in what it logs, and a frozen object needs no re-parsing in every trial.
    """

    number: int  # the Optuna trial number
    schedule: Mapping[str, Any]  # the concrete schedule (numbers only)
    workload: WorkloadRef
    epochs: int
    seeds: Seeds
    metric: str  # the objective: an error result carries it too (Tune refuses a result without it)
    data_root: str | None
    cpus: float
    branching: Mapping[str, Any] | None = None  # the checkpoint store: {root, max_bytes, epochs, parent}; None: none
    probe_at: tuple[int, ...] = ()  # the tree's cooldown probes: after these epoch counts
    probe_fraction: float = 0.0

    def probes(self) -> FixedProbes | None:
        """After which epochs the trial runs a cooldown probe (a tree's leaf probes the prefixes nobody has)."""
        return FixedProbes(self.probe_at, self.probe_fraction) if self.probe_at else None


TRIAL_CONFIG = "trial"  # the key of the ``TrialConfig`` in the config Tune hands the trainable


def _check_retired_branching(raw: Any) -> None:
    """The spec's ``branching`` is retired (the tree shares prefixes): a spec that turns it on is refused; a stored
    spec of an earlier version, which holds it switched off, still parses."""
    if raw is None or (isinstance(raw, Mapping) and not raw.get("enabled")):
        return
    raise RuleError(("branching",), 'retired: the schedule tree replaced it ("strategy": {"name": "tree"}: every '
                                    'shared prefix trained once, leaves resumed from its checkpoints; docs/search.md)')


def _check_tree(schedule: Mapping[str, Any], epochs: int, seed_policy: SeedPolicy,
                early_stopping: EarlyStopping) -> None:
    """The tree takes every stopping decision and shares prefixes itself: a phases space, study-wide seeds, and no
    early stopping beside it."""
    check_space(schedule, epochs)
    if early_stopping.policy is not Policy.NONE:
        raise RuleError(("early_stopping", "policy"), "the tree strategy takes its own stopping decisions (prefix "
                                                      "probes, leaf rungs, its gate): leave early_stopping 'none'")
    per_trial = [name for name in ("init", "batch_order") if getattr(seed_policy, name) is SeedScope.TRIAL]
    if per_trial:
        raise RuleError(("seed_policy", per_trial[0]), "trials with their own seeds share no prefix: the tree "
                                                        "strategy needs 'study' seeds")


def _objective(raw: Mapping[str, Any], reported: Mapping[str, bool], workload: str) -> Objective:
    """The objective: a metric every epoch reports; its direction, unless given, the metric's own."""
    metric = raw["metric"]
    if metric not in reported:
        why = " (test metrics are reported once, at the end: never an objective)" if metric.startswith("test_") else ""
        raise RuleError(("objective", "metric"), f"workload {workload!r} reports {list(reported)} every epoch, "
                                                 f"not {metric!r}{why}")
    direction = raw.get("direction")
    if direction is None:
        direction = Direction.MAXIMIZE if reported[metric] else Direction.MINIMIZE
    return Objective(metric, Direction(direction))


def _build(cls: type, raw: Mapping[str, Any], **convert: Any) -> Any:
    """A dataclass from the given keys of ``raw`` (the rest at their defaults), each converted as named."""
    names = {f.name for f in fields(cls)}
    return cls(**{key: convert.get(key, _same)(value) for key, value in raw.items() if key in names})


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _same(value: Any) -> Any:
    return value


