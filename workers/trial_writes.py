"""What a study's searcher writes of its running trials into Optuna, in constant work per epoch.

The searcher decides (which trial, stop or go on, how it ended); ``TrialWrites`` records: at a trial's start its
schedule, seeds and picture; each epoch the objective as an intermediate value and the epoch's record into its
chunk of the history (``epoch_log``); what is written once at the first or last epoch; at its end what the
throttle held back, its use of the checkpoint store, and the ``tell``. Each trial's schedule plot is drawn and
attached on a background thread; a trial whose picture is not ready when it ends is told after it, on a thread of
its own, so that neither starting nor ending a trial waits for a picture. Nothing is swallowed: a failed ``tell``
raises (from ``close`` if it was queued).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any

import optuna

from phasetune.search_spaces.plot import upload_schedule_png
from phasetune.workers import optuna_study, study_attrs
from phasetune.workers.checkpoints import CheckpointStore
from phasetune.workers.epoch_log import EpochLog
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import TrialEnd
from phasetune.workers.workloads import workloads

logger = logging.getLogger(__name__)


class TrialWrites:
    """The running trials of one study, as Optuna records them. Trials are known by Tune's trial id."""

    def __init__(self, handle: StudyHandle, store: CheckpointStore | None = None) -> None:
        self._handle = handle
        self._store = store  # the study's checkpoint store, whose use is reported in the study's attrs
        self._trials: dict[str, optuna.Trial] = {}
        self._logs: dict[str, EpochLog] = {}
        self._last: dict[str, dict[str, Any]] = {}  # each running trial's last epoch result
        self._cooldown: dict[str, dict[str, float]] = {}  # each running trial's cooldown-probe cost so far
        self._plots: dict[str, Future[Any]] = {}
        self._pending: list[Future[None]] = []  # tells queued behind their trial's picture

    @cached_property
    def _epoch_keys(self) -> tuple[str, ...]:
        """What each epoch's record in the history holds: the loop's own keys and the workload's metrics."""
        workload = workloads()[self._handle.spec.workload.name]
        return (*study_attrs.EPOCH_KEYS, *workload.epoch_metrics())

    @cached_property
    def _final_keys(self) -> frozenset[str]:
        return frozenset(workloads()[self._handle.spec.workload.name].final_metrics())

    @cached_property
    def _plotter(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="schedule-plot")

    @cached_property
    def _teller(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tell-after-plot")

    @cached_property
    def _store_use(self) -> dict[str, int]:
        """The study's reuses so far, counted on from what earlier drivers recorded."""
        recorded = self._handle.study.user_attrs.get(study_attrs.CHECKPOINTS) or {}
        return {"reuses": int(recorded.get("reuses", 0)), "reused_epochs": int(recorded.get("reused_epochs", 0))}

    # ---- the running trials ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._trials)

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._trials

    def ids(self) -> list[str]:
        return list(self._trials)

    def trial(self, trial_id: str) -> optuna.Trial | None:
        return self._trials.get(trial_id)

    def last(self, trial_id: str) -> dict[str, Any] | None:
        return self._last.get(trial_id)

    def epochs(self, trial_id: str) -> int:
        """Epochs recorded for the trial so far."""
        return self._logs[trial_id].epochs

    def set(self, trial_id: str, attrs: Mapping[str, Any]) -> None:
        trial = self._trials[trial_id]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    # ---- start, each epoch, end ---------------------------------------------------------------------------------

    def start(self, trial_id: str, trial: optuna.Trial, schedule: dict[str, Any], attrs: Mapping[str, Any]) -> None:
        """A trial begins: its schedule, seeds and Tune id with ``attrs``; its picture drawn off this thread."""
        spec = self._handle.spec
        trial.set_user_attr(study_attrs.SCHEDULE, schedule)
        trial.set_user_attr(study_attrs.SEEDS, spec.trial_seeds(trial.number).as_attrs())
        trial.set_user_attr(study_attrs.RAY_TRIAL_ID, trial_id)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self._handle.artifact_store is not None:
            # Attached while the trial runs (a finished trial's attrs cannot change).
            self._plots[trial_id] = self._plotter.submit(
                upload_schedule_png, trial, schedule, spec.epochs, spec.steps_per_epoch, self._handle.artifact_store)
        self._trials[trial_id] = trial
        self._logs[trial_id] = EpochLog()

    def never_started(self, trial: optuna.Trial, end: TrialEnd, attrs: Mapping[str, Any]) -> None:
        """A trial that ends before it trains (an invalid sample, a leaf whose prefix is already known to lose)."""
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        optuna_study.tell(self._handle.study, trial, end)

    def probe_cost(self, trial_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
        """What the trial's cooldown probes have cost so far, as an attr, when this result carries one (a reused
        epoch's probe was paid by the trial that trained it)."""
        if study_attrs.COOLDOWN_STEPS not in result or result.get(study_attrs.REUSED):
            return {}
        cost = self._cooldown.setdefault(trial_id, {"probes": 0, "steps": 0, "seconds": 0.0})
        cost["probes"] += 1
        cost["steps"] += int(result[study_attrs.COOLDOWN_STEPS])
        cost["seconds"] += float(result.get(study_attrs.COOLDOWN_SECONDS, 0.0))
        return {study_attrs.COOLDOWN_ATTR: dict(cost)}

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Constant work per epoch: the objective as the epoch's intermediate value, the epoch's record into its
        chunk of the history; what is written once goes at the trial's first or last epoch."""
        trial = self._trials[trial_id]
        if study_attrs.TRIAL_ERROR in result:
            return  # not an epoch: the trial's error, which its end records
        epoch, done = int(result["epoch"]), bool(result.get(study_attrs.LAST_EPOCH))
        log = self._logs[trial_id]
        log.add({k: v for k, v in result.items()
                 if k in self._epoch_keys or k.startswith(study_attrs.COOLDOWN_PREFIX)})
        self._last[trial_id] = result
        value = result.get(self._handle.spec.objective.metric)
        if value is not None and math.isfinite(value):
            optuna_study.set_intermediate_value(self._handle.study, trial, epoch, float(value))
        attrs: dict[str, Any] = log.due(final=done or epoch == 0)
        if epoch == 0:  # where the trial runs changes only when Tune retries it, and a retry restarts at epoch 0
            attrs.update({key: result.get(key) for key in study_attrs.PLACEMENT_KEYS})
            if result.get(study_attrs.WORKER):
                attrs[study_attrs.WORKER] = json.loads(result[study_attrs.WORKER])
        if done:
            attrs.update({**log.realised(), **json.loads(result.get(study_attrs.SCHEDULE_ATTRS) or "{}")})
            final = {k: v for k, v in result.items() if k in self._final_keys}
            if final:  # the test split's metrics, reported once with the last epoch
                attrs[study_attrs.TEST_METRICS] = final
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)

    def end(self, trial_id: str, end: TrialEnd, attrs: Mapping[str, Any]) -> optuna.Trial:
        """Write what is left of the trial (``attrs``, what the throttle held back, its use of the store) and tell
        Optuna its end; if its picture is still being drawn, the tell follows the picture on the teller thread, so
        that Tune's loop (which calls this) never waits for it. Returns the trial."""
        trial = self._trials.pop(trial_id)
        last = self._last.pop(trial_id, None)
        if last is not None and last.get(study_attrs.BRANCH):
            self._record_branch(trial, json.loads(last[study_attrs.BRANCH]))
        self._cooldown.pop(trial_id, None)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        log = self._logs.pop(trial_id, None)
        if log is not None:  # what the throttle held back, and (for a trial cut short) its realised lr and momentum
            for key, value in {**log.due(final=True), **({} if log.realised_written else log.realised())}.items():
                trial.set_user_attr(key, value)
        plot = self._plots.pop(trial_id, None)
        if plot is None or plot.done():
            self._tell_after(plot, trial, end)
        else:  # on a thread of its own, which waits for this trial's picture only
            self._pending.append(self._teller.submit(self._tell_after, plot, trial, end))
        return trial

    def _record_branch(self, trial: optuna.Trial, branch: dict[str, Any]) -> None:
        """The trial's use of the store in its attrs; the study's (what the store holds, reuses) in the study's."""
        trial.set_user_attr(study_attrs.BRANCH, branch)
        if branch.get("parent") is not None:
            self._store_use["reuses"] += 1
            self._store_use["reused_epochs"] += int(branch.get("reused_epochs") or 0)
        if self._store is not None:
            self._handle.set_attr(study_attrs.CHECKPOINTS, {**self._store.stats(), **self._store_use})

    def _tell_after(self, plot: Future[Any] | None, trial: optuna.Trial, end: TrialEnd) -> None:
        if plot is not None and plot.exception() is not None:  # waits for it; a missing one loses no result
            err = plot.exception()
            logger.warning("schedule plot of trial %d failed: %s", trial.number, err)
            trial.set_user_attr(study_attrs.SCHEDULE_PLOT_ERROR, f"{type(err).__name__}: {err}")
        optuna_study.tell(self._handle.study, trial, end)

    def close(self) -> None:
        """Wait for the tells that follow a picture; the first that failed raises (nothing is swallowed)."""
        pending, self._pending = self._pending, []
        try:
            wait(pending)
        finally:
            for name in ("_teller", "_plotter"):
                if name in self.__dict__:
                    self.__dict__.pop(name).shutdown(wait=True)
        for future in pending:
            future.result()
