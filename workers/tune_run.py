"""One study's Ray Tune run: probe once, sweep what a previous driver left, run the remaining budget, record the end.

Called by the study's driver actor (``workers/driver.py``); everything it needs is in the Optuna storage, so a
restarted driver resumes with the remaining trial budget.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune

from phasetune.search_spaces import space
from phasetune.workers import optuna_study, probing, study_attrs
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import past_time_limit
from phasetune.workers.searcher import OptunaStudySearcher
from phasetune.workers.spec import Resources
from phasetune.workers.study_attrs import EndedBy, StudyStatus
from phasetune.workers.trainable import run_trial

logger = logging.getLogger(__name__)
LOST_TRIAL_RETRIES = 2  # a trial whose process or node died is retried on another node this often
SLOT_WAIT_S = 600.0  # how long a study waits for a node that can run its trials before it fails
SLOT_POLL_S = 2.0


class _Stopper(tune.Stopper):
    """Ends a trial that early stopping stops (the searcher decides) or that is past the spec's
    ``trial_time_limit_s``, and the whole run once a stop is requested (in the storage, by any process) or the
    study's ``study_time_limit_s`` has passed since it first ran."""

    def __init__(self, handle: StudyHandle, deadline: float | None) -> None:
        self._handle = handle
        self._trial_limit_s = handle.spec.trial_time_limit_s
        self._deadline = deadline  # time.time() at which the study's time is up
        self.searcher: OptunaStudySearcher | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.searcher is not None and self.searcher.should_stop(trial_id, result):
            return True
        return past_time_limit(result, self._trial_limit_s)

    def stop_all(self) -> bool:
        if self._deadline is not None and time.time() >= self._deadline:
            self._handle.time_is_up.set()
        return self._handle.refresh_stop_flag() or self._handle.time_is_up.is_set()


CHECKPOINT_DIR = "checkpoints"


def trial_slots(resources: Resources, nodes: list[dict[str, Any]] | None = None) -> int:
    """How many trials needing ``resources`` the cluster's alive nodes can run at once (a trial runs on one node)."""
    slots = 0
    for node in ray.nodes() if nodes is None else nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fits = [have.get(kind, 0.0) / need for kind, need in (("CPU", resources.cpu), ("GPU", resources.gpu)) if need]
        slots += int(min(fits) + 1e-9) if fits else 0
    return slots


def _concurrency(handle: StudyHandle) -> int | None:
    """The spec's ``max_concurrent_trials``, capped by the cluster's slots: Tune would otherwise start trials that
    wait for resources while Optuna shows them RUNNING. Recorded with the study. With no slot yet (the workers have
    not joined: a cluster restarting) it waits, up to ``SLOT_WAIT_S``, then fails the study saying why; None if the
    study was stopped while it waited."""
    resources = handle.spec.resources_per_trial
    deadline = time.monotonic() + SLOT_WAIT_S
    need = f"a node with resources_per_trial = {{cpu: {resources.cpu:g}, gpu: {resources.gpu:g}}}"
    waited = False
    while (slots := trial_slots(resources)) == 0:
        if handle.refresh_stop_flag(force=True):
            return None
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no node of the cluster can run a trial: none came with {need} "
                               f"(waited {SLOT_WAIT_S:g} s)")
        if not waited:  # visible while it waits: GET /studies/{id} says what for
            handle.set_attr(study_attrs.WAITING_FOR, f"{need}, up to {SLOT_WAIT_S:g} s")
            handle.set_status(StudyStatus.WAITING_FOR_RESOURCES)
            waited = True
        time.sleep(SLOT_POLL_S)
    if waited:
        handle.set_attr(study_attrs.WAITING_FOR, None)
        handle.set_status(StudyStatus.RUNNING)
    concurrency = min(handle.spec.max_concurrent_trials, slots)
    handle.set_attr(study_attrs.CONCURRENCY, concurrency)
    return concurrency


def _deadline(handle: StudyHandle) -> float | None:
    """When the study's time is up: ``study_time_limit_s`` after its first driver began (a restart keeps it)."""
    started = handle.study.user_attrs.get(study_attrs.STARTED_AT)  # (read before probing: probes count too)
    if started is None:
        started = time.time()
        handle.set_attr(study_attrs.STARTED_AT, started)
    limit = handle.spec.study_time_limit_s
    return None if limit is None else float(started) + limit


def run_study(handle: StudyHandle, results_dir: str) -> StudyStatus:
    """Run (or resume) a study to the end of its budget; returns and records its final status.

    A stop requested before the run (a study stopped while queued) ends it before anything runs, probes included.
    Any failure, reading the study included, is recorded as the study's error (when the storage can take it).
    """
    try:
        study, spec = handle.study, handle.spec
        optuna_study.sweep_stale_trials(study)
        if handle.refresh_stop_flag(force=True):
            handle.set_status(StudyStatus.STOPPED)
            return StudyStatus.STOPPED
        handle.set_status(StudyStatus.RUNNING)
        stopper = _Stopper(handle, _deadline(handle))
        # Ranges in units of the model's own LRs: probe once, before the first trial.
        units = probing.ensure_units(study, spec)
        space.check_expandable(spec.schedule, spec.epochs, units)  # a preset with no regime to search fails here
        # A tree study's checkpoints beside Tune's results (in the compose cluster the results volume every node
        # mounts), one directory per study.
        checkpoints = str(Path(results_dir).resolve() / CHECKPOINT_DIR / handle.study_name)
        searcher = OptunaStudySearcher(handle, units=units, checkpoint_root=checkpoints)
        stopper.searcher = searcher
        ready = searcher.remaining() > 0 and not handle.refresh_stop_flag(force=True) and not stopper.stop_all()
        concurrency = _concurrency(handle) if ready else None
        if concurrency is not None:
            resources = spec.resources_per_trial
            tuner = tune.Tuner(
                tune.with_resources(run_trial, {"cpu": resources.cpu, "gpu": resources.gpu}),
                # Warm workers: a trial runs in the process of an earlier one (no start-up, imports, data or
                # model construction again: workers.workloads.cache).
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True,
                                            max_concurrent_trials=concurrency),
                run_config=tune.RunConfig(
                    name=f"phasetune-{handle.study_name}",
                    storage_path=str(Path(results_dir).resolve()),
                    stop=stopper,
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=LOST_TRIAL_RETRIES),
                ),
            )
            try:
                tuner.fit()
                searcher.close_open_trials()
            finally:
                searcher.close()  # tells queued behind their pictures land before anything is swept
        optuna_study.sweep_stale_trials(study)  # nothing of this study may stay RUNNING once its driver is done
        status = StudyStatus.STOPPED if handle.stop_requested.is_set() else StudyStatus.COMPLETED
        if handle.time_is_up.is_set() and not handle.stop_requested.is_set():
            handle.set_attr(study_attrs.ENDED_BY, EndedBy.STUDY_TIME_LIMIT.value)
    except Exception:
        _record_failure(handle, traceback.format_exc(limit=20))
        return StudyStatus.FAILED
    handle.set_status(status)
    return status


def _record_failure(handle: StudyHandle, error: str) -> None:
    """The study failed: its error and status go to the storage, and nothing of it stays RUNNING."""
    try:
        optuna_study.fail_study(handle.storage, handle.study_name, error)
    except Exception:  # noqa: BLE001  (the storage itself failed: the log keeps the error, a restart retries)
        logger.exception("phasetune: study %r failed and the storage could not take all of it:\n%s",
                         handle.study_name, error)
