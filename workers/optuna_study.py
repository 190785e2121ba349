"""The Optuna side of a study: creating and opening it (sampler, pruner), how a trial's end maps to an Optuna
state, the stale-trial sweep, and the only uses of Optuna's private names.

Private names (each below says why it is needed; ``tests/test_optuna_contract.py`` fails loudly if a release of
Optuna changes them): ``Study._storage``, ``Trial._trial_id`` / ``FrozenTrial._trial_id``,
``FrozenStudy._study_id``, and for reads that must not load every trial of a study (``count_trials``,
``trials_page``, ``best_trial``) the RDB storage's models (``TrialModel`` with its ``find_*_value_trial_id``,
``TrialUserAttributeModel``) and ``RDBStorage._build_frozen_trial_from_trial_model``.
"""

from __future__ import annotations

import enum
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages._rdb import models as rdb_models  # private: see the module docstring

if TYPE_CHECKING:  # private too: what get_all_studies returns, with no public path (optuna.study does not export it)
    from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, or_, orm

from phasetune.workers import study_attrs
from phasetune.workers.spec import SamplerName, SamplerSpec, StudySpec
from phasetune.workers.study_attrs import LAST_EPOCH, TIME_TOTAL_S, TRIAL_ERROR


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, at the spec's sampler seed."""
    return sampler_for(spec.sampler, spec.sampler_seed)


def sampler_for(sampler: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    """TPE models the conditional (per-family) space jointly and lies about running trials so that concurrent
    trials spread out."""
    if sampler.name is SamplerName.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=sampler.n_startup_trials)


def make_pruner() -> optuna.pruners.BasePruner:
    """Optuna never prunes a phasetune trial: the driver owns every stop (study stop today, early stopping next).
    Optuna's default, a MedianPruner, would otherwise sit on every study with nothing calling it."""
    return optuna.pruners.NopPruner()


def create_study(storage: optuna.storages.BaseStorage, spec: StudySpec, attrs: Mapping[str, Any]) -> int:
    """Create the study and its user attrs; its id. ``DuplicatedStudyError`` if the name is taken.

    The name is claimed by the database's unique constraint (so of concurrent creations exactly one wins), and
    ``SPEC`` is written last: a study is phasetune's once it has a spec. If writing the attrs raises, the study is
    deleted again. (A process killed in between leaves an Optuna study without a spec: invisible to phasetune, but
    holding the name until deleted with ``optuna delete-study``.)
    """
    study = optuna.create_study(storage=storage, study_name=spec.name, sampler=make_sampler(spec),
                                pruner=make_pruner(), direction=spec.objective.direction.value)
    try:
        with warnings.catch_warnings():  # experimental in Optuna 4-5: the dashboard labels its curves with it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.objective.metric])
        for key, value in {**attrs, study_attrs.SPEC: spec.to_dict()}.items():
            study.set_user_attr(key, value)
    except BaseException:
        optuna.delete_study(study_name=spec.name, storage=storage)
        raise
    return study_id(study)


def load_study(storage: optuna.storages.BaseStorage, spec: StudySpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec),
                             pruner=make_pruner())


class TrialOutcome(enum.Enum):
    COMPLETE = TrialState.COMPLETE
    PRUNED = TrialState.PRUNED
    FAIL = TrialState.FAIL


@dataclass(frozen=True)
class TrialEnd:
    outcome: TrialOutcome
    value: float | None = None
    reason: str | None = None  # why it failed or was cut short (the trial's FAIL_REASON attr)


def past_time_limit(result: Mapping[str, Any] | None, limit_s: float | None) -> bool:
    """The trial has run ``limit_s`` seconds or more (the spec's ``trial_time_limit_s``; None: no limit)."""
    return limit_s is not None and result is not None and result.get(TIME_TOTAL_S, 0.0) >= limit_s


def trial_end(result: Mapping[str, Any] | None, *, lost: bool, stop_requested: bool, metric: str,
              time_limit_s: float | None = None, stopped_by: str | None = None) -> TrialEnd:
    """How a trial ended, from its last result: the one mapping from Tune's view of a trial to Optuna's.

    Args:
        result: the trial's last reported result (None if it reported none).
        lost: Tune ended the trial in error: its process or node died and the retries ran out (an exception in
            phasetune's own code is reported as a result with ``TRIAL_ERROR`` instead, and not retried).
        stop_requested: the study is being stopped (or its time is up).
        metric: the objective metric.
        time_limit_s: the spec's ``trial_time_limit_s``: a trial stopped for it before its last epoch is PRUNED.
        stopped_by: why early stopping stopped the trial (None: it did not): PRUNED with that reason, unless its
            training loss is non-finite: a diverged trial is FAIL, however it stopped (its val metric may still be a
            number: a NaN network still predicts some class).
    """
    result = result or {}
    if lost:
        return TrialEnd(TrialOutcome.FAIL, reason="its process or node was lost and Ray Tune's retries ran out")
    if result.get(TRIAL_ERROR):
        return TrialEnd(TrialOutcome.FAIL, reason=str(result[TRIAL_ERROR]))
    loss = result.get("train_loss")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):  # whatever stopped it, and whatever val says
        return TrialEnd(TrialOutcome.FAIL, reason=f"diverged: train_loss {loss}")
    if stopped_by is not None:
        return TrialEnd(TrialOutcome.PRUNED, reason=stopped_by)
    if not result.get(LAST_EPOCH) and stop_requested:
        return TrialEnd(TrialOutcome.PRUNED)
    if not result.get(LAST_EPOCH) and past_time_limit(result, time_limit_s):
        return TrialEnd(TrialOutcome.PRUNED, reason=f"trial_time_limit_s: still training after {time_limit_s:g} s")
    value = result.get(metric)
    if value is None or not math.isfinite(value):
        return TrialEnd(TrialOutcome.FAIL, reason=f"no finite {metric} (diverged?)")
    return TrialEnd(TrialOutcome.COMPLETE, float(value))


def tell(study: optuna.Study, trial: optuna.Trial, end: TrialEnd) -> None:
    """Record ``end`` on the running ``trial``: its reason first (a finished trial's attrs cannot change)."""
    if end.reason is not None:
        trial.set_user_attr(study_attrs.FAIL_REASON, end.reason)
    study.tell(trial, end.value, state=end.outcome.value)


SWEPT_REASON = ("swept: still RUNNING when no driver of its study was alive (the driver or its node was killed, or "
                "the study failed); it does not count toward n_trials")


def sweep_stale_trials(study: optuna.Study) -> int:
    """Fail every RUNNING trial of ``study`` (call only when no driver of it is alive); returns how many.

    Optuna's heartbeat does not cover ask/tell trials, so a driver that died leaves its trials RUNNING; they are
    marked ``SWEPT`` so that they do not use up the study's budget, and carry a ``FAIL_REASON`` as every FAIL does.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage_of(study).set_trial_user_attr(trial_id(trial), study_attrs.SWEPT, True)
        storage_of(study).set_trial_user_attr(trial_id(trial), study_attrs.FAIL_REASON, SWEPT_REASON)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def fail_study(storage: optuna.storages.BaseStorage, study_name: str, error: str) -> None:
    """The study failed: its error and status go to the storage, and nothing of it stays RUNNING. Written without
    its spec (the failure may be that the spec no longer parses), status before the sweep."""
    study_id = storage.get_study_id_from_name(study_name)
    storage.set_study_user_attr(study_id, study_attrs.ERROR, error)
    storage.set_study_user_attr(study_id, study_attrs.STATUS, study_attrs.StudyStatus.FAILED.value)
    sweep_stale_trials(optuna.load_study(study_name=study_name, storage=storage))


def set_intermediate_value(study: optuna.Study, trial: optuna.Trial, epoch: int, value: float) -> None:
    """The trial's value at ``epoch``, overwriting an earlier one: a trial Tune retried starts its curve again,
    where ``Trial.report`` would keep the stale value (it ignores a second report of a step)."""
    storage_of(study).set_trial_intermediate_value(trial_id(trial), epoch, value)


# ---- Optuna's private names: here and nowhere else --------------------------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study writes through (Optuna's cached wrapper of the RDB storage). No public accessor exists;
    writing through the same object keeps its cache of running trials consistent."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial, which the storage's own API takes. No public accessor exists (the public
    alternative, ``get_trial_id_from_study_id_trial_number``, costs a query per call and needs the study id)."""
    return trial._trial_id


def study_id(study: optuna.Study | FrozenStudy) -> int:
    """The storage's id of a study: phasetune's study id, the same the Optuna dashboard shows. ``Study`` and the
    ``FrozenStudy`` of ``get_all_studies`` have no public accessor."""
    return study._study_id


def count_trials(storage: optuna.storages.RDBStorage, study_id: int) -> dict[TrialState, int]:
    """How many trials of the study are in each state: one ``GROUP BY`` query. (``BaseStorage.get_n_trials``, which
    RDBStorage does not override, loads every trial to count them.)"""
    session = storage.scoped_session()
    try:
        rows = (session.query(rdb_models.TrialModel.state, func.count(rdb_models.TrialModel.trial_id))
                .filter(rdb_models.TrialModel.study_id == study_id).group_by(rdb_models.TrialModel.state).all())
    finally:
        session.close()
    return {TrialState(state) if not isinstance(state, TrialState) else state: n for state, n in rows}


def count_trials_with_attr(storage: optuna.storages.RDBStorage, study_id: int, key: str) -> int:
    """How many trials of the study carry the user attr ``key``: one query, no trial loaded."""
    session = storage.scoped_session()
    try:
        attr, trial = rdb_models.TrialUserAttributeModel, rdb_models.TrialModel
        return (session.query(func.count(attr.trial_user_attribute_id))
                .join(trial, trial.trial_id == attr.trial_id)
                .filter(trial.study_id == study_id, attr.key == key).scalar())
    finally:
        session.close()


def trials_page(storage: optuna.storages.RDBStorage, study_id: int, offset: int, limit: int,
                omit: tuple[str, ...] = ()) -> list[FrozenTrial]:
    """Trials numbered ``offset`` to ``offset + limit - 1``, in number order: a constant number of queries, however
    many trials the study has (Optuna's public reads load them all). See ``_load`` for ``omit``."""
    model = rdb_models.TrialModel
    return _load(storage, omit, model.study_id == study_id, model.number >= offset, model.number < offset + limit)


def best_trial(storage: optuna.storages.RDBStorage, study_id: int, omit: tuple[str, ...] = ()) -> FrozenTrial | None:
    """The best COMPLETE trial (the one ``Study.best_trial`` gives), or None: one ordered query, then the trial."""
    (direction,) = storage.get_study_directions(study_id)
    find = (rdb_models.TrialModel.find_max_value_trial_id if direction == optuna.study.StudyDirection.MAXIMIZE
            else rdb_models.TrialModel.find_min_value_trial_id)
    session = storage.scoped_session()
    try:
        best_id = find(study_id, 0, session)
    except ValueError:  # no trial is complete yet
        return None
    finally:
        session.close()
    (trial,) = _load(storage, omit, rdb_models.TrialModel.trial_id == best_id)
    return trial


def _load(storage: optuna.storages.RDBStorage, omit: tuple[str, ...], *where: Any) -> list[FrozenTrial]:
    """Trials as Optuna builds them, in number order, each relation in one query; without the user attrs whose keys
    start with one of ``omit`` (what grows with the epochs) and without intermediate values (the API shows none:
    the dashboard and ``load_study`` read them)."""
    model, attr = rdb_models.TrialModel, rdb_models.TrialUserAttributeModel
    attrs = model.user_attributes.and_(~or_(*(attr.key.startswith(p) for p in omit))) if omit else model.user_attributes
    session = storage.scoped_session()
    try:
        rows = (session.query(model)
                .options(orm.selectinload(model.params), orm.selectinload(model.values), orm.selectinload(attrs),
                         orm.selectinload(model.system_attributes), orm.noload(model.intermediate_values))
                .filter(*where).order_by(model.number).all())
        return [storage._build_frozen_trial_from_trial_model(row) for row in rows]
    finally:
        session.close()


def user_attrs_with_prefix(storage: optuna.storages.RDBStorage, study_id: int,
                           prefix: str) -> list[tuple[int, TrialState, str, Any]]:
    """``(trial number, state, key, value)`` of every user attr of the study's trials whose key starts with
    ``prefix``: one query, no trial loaded (what a restarted driver rebuilds its early-stopping rungs from)."""
    model, attr = rdb_models.TrialModel, rdb_models.TrialUserAttributeModel
    session = storage.scoped_session()
    try:
        rows = (session.query(model.number, model.state, attr.key, attr.value_json)
                .join(attr, attr.trial_id == model.trial_id)
                .filter(model.study_id == study_id, attr.key.startswith(prefix)).all())
    finally:
        session.close()
    return [(number, state if isinstance(state, TrialState) else TrialState(state), key, json.loads(value))
            for number, state, key, value in rows]
