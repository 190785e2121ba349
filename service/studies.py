"""What the routes do: validate and store a submission, hand it to Ray, and read studies back through Optuna."""

from __future__ import annotations

import math
from typing import Any

import optuna
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from search_spaces import SpecError, presets, validate_schedule
from service import ray_cluster
from service.db import Submission
from service.schemas import StudyCreate, StudyOut, TrialOut
from service.settings import Settings
from workers import runner, study_attrs
from workers.workloads import resolve as resolve_workload

SUPPORTED_UNITS: frozenset[str] = frozenset({"lr_crit", "lr_div"})  # curvature probe, LR range test


class StudyExists(Exception):
    pass


class StudyNotFound(Exception):
    pass


def _units_in(node: Any, loc: tuple = ()) -> list[tuple[tuple, str]]:
    """Every ``unit`` a range in the schedule names, with where it stands."""
    found: list[tuple[tuple, str]] = []
    if isinstance(node, dict):
        if "unit" in node and ("low" in node or "high" in node):
            found.append(((*loc, "unit"), node["unit"]))
        for key, value in node.items():
            found += _units_in(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _units_in(value, (*loc, i))
    return found


def validate_spec(spec: StudyCreate) -> None:
    """Refuse what pydantic cannot see: unknown workload or metric, an invalid schedule space. Raises SpecError."""
    try:
        workload, _ = resolve_workload(spec.workload.name, spec.workload.params)
    except SpecError as err:
        raise err.under("workload") from None
    if spec.objective.metric not in workload.metrics:
        raise SpecError(("objective", "metric"),
                        f"workload {workload.name!r} reports {list(workload.metrics)}, not {spec.objective.metric!r}")
    try:
        validate_schedule(spec.schedule, spec.epochs)
    except SpecError as err:
        raise err.under("schedule") from None
    for loc, unit in _units_in(spec.schedule):
        if unit not in SUPPORTED_UNITS:
            raise SpecError(("schedule", *loc), f"unknown unit {unit!r}; supported: {sorted(SUPPORTED_UNITS)}")
        field = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), None)  # milestones.0 -> milestones
        if field not in presets.LR_FIELDS:
            raise SpecError(("schedule", *loc), f"only learning rates take a unit ({sorted(presets.LR_FIELDS)}), "
                                                f"not {field!r}")


def create(*, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings, spec: StudyCreate) -> StudyOut:
    validate_spec(spec)
    raw = spec.model_dump(mode="json")
    with Session(engine) as session:
        if session.scalar(select(Submission).where(Submission.name == spec.name)) is not None:
            raise StudyExists(spec.name)
        if _optuna_has_study(storage, spec.name):
            raise StudyExists(spec.name)
        submission = Submission(name=spec.name, spec=raw)
        session.add(submission)
        session.commit()
        session.refresh(submission)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.objective.direction)
    study.set_user_attr(study_attrs.SPEC, raw)
    study.set_user_attr(study_attrs.STATUS, "queued")
    study.set_user_attr("phasetune:id", submission.id)
    study.set_user_attr(study_attrs.ARTIFACT_DIR, settings.artifacts_dir)
    ray_cluster.connect(settings)
    runner.launch(settings.storage_url, spec.name, settings.results_dir)
    return view(engine=engine, storage=storage, settings=settings, study_id=submission.id)


def _optuna_has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """One lookup (not a listing of every study): a study made outside phasetune may hold the name."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _submission(engine: Engine, study_id: int) -> Submission:
    with Session(engine) as session:
        submission = session.get(Submission, study_id)
    if submission is None:
        raise StudyNotFound(study_id)
    return submission


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trial_out(trial: optuna.trial.FrozenTrial) -> TrialOut:
    return TrialOut(
        number=trial.number,
        state=trial.state.name,
        value=_finite(trial.value) if trial.values else None,
        params=trial.params,
        schedule=trial.user_attrs.get("schedule"),
        metrics=trial.user_attrs.get("metrics", []),
        user_attrs=trial.user_attrs,
    )


def view(*, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings, study_id: int) -> StudyOut:
    submission = _submission(engine, study_id)
    study = optuna.load_study(study_name=submission.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and _finite(t.value) is not None]
    best = None
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = trial_out(pick(complete, key=lambda t: t.value))
    attrs = study.user_attrs
    return StudyOut(
        id=submission.id,
        name=submission.name,
        status=attrs.get(study_attrs.STATUS, "queued"),
        spec=submission.spec,
        created_at=submission.created_at.isoformat(),
        n_trials=len(trials),
        trial_counts=counts,
        best_trial=best,
        error=attrs.get(study_attrs.ERROR),
        dashboard_url=settings.dashboard_address if settings.start_dashboard or settings.dashboard_url else None,
    )


def list_all(*, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings) -> list[StudyOut]:
    with Session(engine) as session:
        ids = session.scalars(select(Submission.id).order_by(Submission.id)).all()
    return [view(engine=engine, storage=storage, settings=settings, study_id=i) for i in ids]


def trials(*, engine: Engine, storage: optuna.storages.BaseStorage, study_id: int) -> list[TrialOut]:
    submission = _submission(engine, study_id)
    study = optuna.load_study(study_name=submission.name, storage=storage)
    return [trial_out(t) for t in study.get_trials(deepcopy=False)]


def stop(*, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings, study_id: int) -> StudyOut:
    """Stop a study: the flag in storage outlives any driver; a live driver is also told at once."""
    submission = _submission(engine, study_id)
    study = optuna.load_study(study_name=submission.name, storage=storage)
    status = study.user_attrs.get(study_attrs.STATUS, "queued")
    if status in ("queued", "running"):
        study.set_user_attr(study_attrs.STOP_REQUESTED, True)
        ray_cluster.connect(settings)
        if not runner.request_stop(settings.storage_url, submission.name):
            # No driver alive: nothing runs, so the study is stopped now (leftover RUNNING trials are swept).
            runner.sweep_stale_trials(study)
            study.set_user_attr(study_attrs.STATUS, "stopped")
    return view(engine=engine, storage=storage, settings=settings, study_id=study_id)


def reconcile(*, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings) -> None:
    """On API start: relaunch the drivers of unfinished studies (a no-op where one is alive)."""
    with Session(engine) as session:
        names = session.scalars(select(Submission.name)).all()
    if not names:
        return
    ray_cluster.connect(settings)
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        if study.user_attrs.get(study_attrs.STATUS, "queued") in ("queued", "running"):
            runner.launch(settings.storage_url, name, settings.results_dir)
