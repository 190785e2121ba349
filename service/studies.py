"""What the study routes do: store a study in Optuna, hand it to the launcher, and read studies back from Optuna.

A phasetune study is an Optuna study with a ``phasetune:spec`` user attr; its id is the Optuna study id. Nothing here
talks to Ray: the launcher starts drivers, and a stop is a flag in the storage that the driver reads (the launcher
also ends a stopped study whose driver is gone).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.jsonsafe import json_safe
from phasetune.service.db import ID_MAX
from phasetune.service.errors import AlreadyExists, NotFound
from phasetune.service.launcher import Launcher
from phasetune.service.schemas import StudyCreate, StudyOut, TrialOut
from phasetune.service.settings import Settings
from phasetune.workers import epoch_log, optuna_study, study_attrs
from phasetune.workers.spec import StudySpec
from phasetune.workers.study_attrs import StudyStatus

PAGE_SIZE = 100  # trials per page of GET /studies/{id}/trials unless asked otherwise
MAX_PAGE_SIZE = 1000
# What grows with the epochs, left out when trials are read without their history (user attr key prefixes).
WITHOUT_HISTORY = (epoch_log.PREFIX, epoch_log.LEGACY_KEY, study_attrs.REALIZED_LR, study_attrs.REALIZED_MOMENTUM)


def create(*, storage: optuna.storages.RDBStorage, settings: Settings, request: StudyCreate,
           launcher: Launcher | None) -> StudyOut:
    """Validate, store atomically (one winner per name), and hand to the launcher if this app runs studies."""
    spec = StudySpec.parse({**request.model_dump(mode="json"), "data_root": settings.data_root})
    spec.check_limits()
    if launcher is not None and not settings.wait_for_nodes:
        resources = spec.resources_per_trial
        if (why := launcher.unplaceable(resources.cpu, resources.gpu)) is not None:
            raise RuleError(("resources_per_trial",), why)
    attrs = {
        study_attrs.STATUS: StudyStatus.QUEUED.value,
        study_attrs.CREATED_AT: datetime.now(timezone.utc).isoformat(),
        study_attrs.ARTIFACT_DIR: settings.artifacts_dir,
    }
    try:
        study_id = optuna_study.create_study(storage, spec, attrs)
    except optuna.exceptions.DuplicatedStudyError:
        raise AlreadyExists("study", spec.name) from None
    if launcher is not None:
        launcher.launch(spec.name)
    return view(storage=storage, settings=settings, study_id=study_id)


def _attrs(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any]:
    """The study's user attrs; NotFound unless it is a phasetune study."""
    if not 0 <= study_id <= ID_MAX:
        raise NotFound("study", study_id)
    try:
        attrs = storage.get_study_user_attrs(study_id)
    except KeyError:
        raise NotFound("study", study_id) from None
    if study_attrs.SPEC not in attrs:
        raise NotFound("study", study_id)  # an Optuna study made outside phasetune
    return attrs


def trial_out(trial: FrozenTrial, history: bool = True) -> TrialOut:
    """The trial as the API shows it, its history chunks joined into ``metrics``; without ``history``, ``metrics``
    is None (the trial was read without what grows with the epochs: ``WITHOUT_HISTORY``)."""
    attrs = {key: value for key, value in trial.user_attrs.items() if not epoch_log.is_history_key(key)}
    return TrialOut(
        number=trial.number,
        state=trial.state.name,
        value=json_safe(trial.value) if trial.values else None,
        params=trial.params,
        schedule=trial.user_attrs.get(study_attrs.SCHEDULE),
        metrics=epoch_log.history(trial.user_attrs) if history else None,
        user_attrs=attrs,
    )


def _out(storage: optuna.storages.RDBStorage, settings: Settings, study_id: int, name: str, attrs: dict[str, Any],
         best: FrozenTrial | None) -> StudyOut:
    counts = optuna_study.count_trials(storage, study_id)
    status = study_attrs.status_of(attrs)
    return StudyOut(
        id=study_id,
        name=name,
        status=status,
        spec=attrs[study_attrs.SPEC],
        created_at=attrs.get(study_attrs.CREATED_AT),
        n_trials=sum(counts.values()),
        trial_counts={state.name: n for state, n in sorted(counts.items(), key=lambda item: item[0].value)},
        best_trial=trial_out(best, history=False) if best is not None and json_safe(best.value) is not None else None,
        error=attrs.get(study_attrs.ERROR),
        waiting_for=attrs.get(study_attrs.WAITING_FOR) if status is StudyStatus.WAITING_FOR_RESOURCES else None,
        checkpoints=attrs.get(study_attrs.CHECKPOINTS),
        tree=attrs.get(study_attrs.TREE),
        dashboard_url=settings.dashboard_address if settings.start_dashboard or settings.dashboard_url else None,
    )


def view(*, storage: optuna.storages.RDBStorage, settings: Settings, study_id: int) -> StudyOut:
    """A constant number of queries however many trials the study has: counts by ``GROUP BY``, the best trial by
    one ordered query (optuna #760 is what loading every trial costs)."""
    attrs = _attrs(storage, study_id)
    return _out(storage, settings, study_id, storage.get_study_name_from_id(study_id), attrs,
                optuna_study.best_trial(storage, study_id, omit=WITHOUT_HISTORY))


def list_all(*, storage: optuna.storages.RDBStorage, settings: Settings) -> list[StudyOut]:
    """Every phasetune study with its counts; no trial is loaded (each study's best is in ``view``)."""
    return [_out(storage, settings, optuna_study.study_id(s), s.study_name, s.user_attrs, None)
            for s in storage.get_all_studies() if study_attrs.SPEC in s.user_attrs]


def trials(*, storage: optuna.storages.RDBStorage, study_id: int, offset: int = 0, limit: int = PAGE_SIZE,
           history: bool = True) -> tuple[list[TrialOut], int]:
    """One page of the study's trials in number order, and how many trials it has."""
    _attrs(storage, study_id)
    total = sum(optuna_study.count_trials(storage, study_id).values())
    omit = () if history else WITHOUT_HISTORY
    page = optuna_study.trials_page(storage, study_id, offset, limit, omit) if offset < total else []
    return [trial_out(t, history) for t in page], total


def stop(*, storage: optuna.storages.RDBStorage, settings: Settings, study_id: int,
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
