"""One study's Ray Tune run: probe once, sweep what a previous driver left, run the remaining budget, record the end.

Called by the study's driver actor (``workers/driver.py``); everything it needs is in the Optuna storage, so a
restarted driver resumes with the remaining trial budget.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from ray import tune

from search_spaces import space
from workers import optuna_study, probing, study_attrs
from workers.handle import StudyHandle
from workers.searcher import OptunaStudySearcher
from workers.study_attrs import StudyStatus
from workers.trainable import run_trial

logger = logging.getLogger(__name__)
LOST_TRIAL_RETRIES = 2  # a trial whose process or node died is retried on another node this often


class _StopWhenRequested(tune.Stopper):
    """Stops the whole experiment once a stop is requested (in the storage, by any process)."""

    def __init__(self, handle: StudyHandle) -> None:
        self._handle = handle

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._handle.refresh_stop_flag()


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
        # Ranges in units of the model's own LRs: probe once, before the first trial.
        units = probing.ensure_units(study, spec)
        space.check_expandable(spec.schedule, spec.epochs, units)  # a preset with no regime to search fails here
        searcher = OptunaStudySearcher(handle, units=units)
        if searcher.remaining() > 0 and not handle.refresh_stop_flag(force=True):
            resources = spec.resources_per_trial
            tuner = tune.Tuner(
                tune.with_resources(run_trial, {"cpu": resources.cpu, "gpu": resources.gpu}),
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                            max_concurrent_trials=spec.max_concurrent_trials),
                run_config=tune.RunConfig(
                    name=f"phasetune-{handle.study_name}",
                    storage_path=str(Path(results_dir).resolve()),
                    stop=_StopWhenRequested(handle),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=LOST_TRIAL_RETRIES),
                ),
            )
            tuner.fit()
            searcher.close_open_trials()
        optuna_study.sweep_stale_trials(study)  # nothing of this study may stay RUNNING once its driver is done
        status = StudyStatus.STOPPED if handle.stop_requested.is_set() else StudyStatus.COMPLETED
    except Exception:
        _record_failure(handle, traceback.format_exc(limit=20))
        return StudyStatus.FAILED
    handle.set_status(status)
    return status


def _record_failure(handle: StudyHandle, error: str) -> None:
    """The study failed: its error and status go to the storage, and nothing of it stays RUNNING."""
    try:
        handle.set_attr(study_attrs.ERROR, error)
        handle.set_status(StudyStatus.FAILED)
        optuna_study.sweep_stale_trials(handle.study)
    except Exception:  # noqa: BLE001  (the storage itself failed: the log keeps the error, a restart retries)
        logger.exception("phasetune: study %r failed and the storage could not take all of it:\n%s",
                         handle.study_name, error)
