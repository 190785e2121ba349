"""What the study routes do: store a study in Optuna, hand it to the launcher, and read studies back from Optuna.

A phasetune study is an Optuna study with a ``phasetune:spec`` user attr; its id is the Optuna study id. Nothing here
talks to Ray: the launcher starts drivers, and a stop is a flag in the storage that the driver reads (the launcher
also ends a stopped study whose driver is gone).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from service.db import ID_MAX
from service.launcher import Launcher
from service.schemas import StudyCreate, StudyOut, TrialOut
from service.settings import Settings
from workers import optuna_study, study_attrs
from workers.spec import StudySpec
from workers.study_attrs import StudyStatus


class StudyExists(Exception):
    pass


class StudyNotFound(Exception):
    pass


def create(*, storage: optuna.storages.BaseStorage, settings: Settings, request: StudyCreate,
           launcher: Launcher | None) -> StudyOut:
    """Validate, store atomically (one winner per name), and hand to the launcher if this app runs studies."""
    spec = StudySpec.parse({**request.model_dump(mode="json"), "data_root": settings.data_root})
    attrs = {
        study_attrs.STATUS: StudyStatus.QUEUED.value,
        study_attrs.CREATED_AT: datetime.now(timezone.utc).isoformat(),
        study_attrs.ARTIFACT_DIR: settings.artifacts_dir,
    }
    try:
        study_id = optuna_study.create_study(storage, spec, attrs)
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyExists(spec.name) from None
    if launcher is not None:
        launcher.launch(spec.name)
    return view(storage=storage, settings=settings, study_id=study_id)


def _attrs(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any]:
    """The study's user attrs; StudyNotFound unless it is a phasetune study."""
    if not 0 <= study_id <= ID_MAX:
        raise StudyNotFound(study_id)
    try:
        attrs = storage.get_study_user_attrs(study_id)
    except KeyError:
        raise StudyNotFound(study_id) from None
    if study_attrs.SPEC not in attrs:
        raise StudyNotFound(study_id)  # an Optuna study made outside phasetune
    return attrs


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def trial_out(trial: FrozenTrial) -> TrialOut:
    return TrialOut(
        number=trial.number,
        state=trial.state.name,
        value=_finite(trial.value) if trial.values else None,
        params=trial.params,
        schedule=trial.user_attrs.get(study_attrs.SCHEDULE),
        metrics=trial.user_attrs.get("metrics", []),
        user_attrs=trial.user_attrs,
    )


def _best(trials: list[FrozenTrial], direction: StudyDirection) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value) is not None]
    if not complete:
        return None
    pick = max if direction == StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda t: t.value)


def view(*, storage: optuna.storages.BaseStorage, settings: Settings, study_id: int) -> StudyOut:
    attrs = _attrs(storage, study_id)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    (direction,) = storage.get_study_directions(study_id)
    best = _best(trials, direction)
    return StudyOut(
        id=study_id,
        name=storage.get_study_name_from_id(study_id),
        status=study_attrs.status_of(attrs),
        spec=attrs[study_attrs.SPEC],
        created_at=attrs.get(study_attrs.CREATED_AT),
        n_trials=len(trials),
        trial_counts=counts,
        best_trial=trial_out(best) if best is not None else None,
        error=attrs.get(study_attrs.ERROR),
        dashboard_url=settings.dashboard_address if settings.start_dashboard or settings.dashboard_url else None,
    )


def list_all(*, storage: optuna.storages.BaseStorage, settings: Settings) -> list[StudyOut]:
    ids = [optuna_study.study_id(s) for s in storage.get_all_studies() if study_attrs.SPEC in s.user_attrs]
    return [view(storage=storage, settings=settings, study_id=i) for i in ids]


def trials(*, storage: optuna.storages.BaseStorage, study_id: int) -> list[TrialOut]:
    _attrs(storage, study_id)
    return [trial_out(t) for t in storage.get_all_trials(study_id, deepcopy=False)]


def stop(*, storage: optuna.storages.BaseStorage, settings: Settings, study_id: int,
         launcher: Launcher | None) -> StudyOut:
    """Stop a study: a flag in the storage, which its driver reads (within a second) and which outlives it.

    A study still queued has no trial running: it is stopped at once (a driver starting meanwhile sees the flag
    and stops before its first trial). A running one is also handed to the launcher, which ends it if its driver
    is gone. A finished study is left as it is.
    """
    attrs = _attrs(storage, study_id)
    status = study_attrs.status_of(attrs)
    if not status.finished:
        storage.set_study_user_attr(study_id, study_attrs.STOP_REQUESTED, True)
        if status is StudyStatus.QUEUED:
            storage.set_study_user_attr(study_id, study_attrs.STATUS, StudyStatus.STOPPED.value)
        elif launcher is not None:
            launcher.end_if_orphaned(attrs[study_attrs.SPEC]["name"])
    return view(storage=storage, settings=settings, study_id=study_id)
