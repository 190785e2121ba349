"""Runs a study on Ray Tune. The run is owned by a detached Ray actor (one per study), not by the API process.

The actor reads everything it needs (the spec) from the Optuna storage, so it can be (re)started by any process that
knows the storage URL and the study name: restarting the API loses nothing, and a restarted driver resumes with the
remaining trial budget after failing the trials its previous incarnation left RUNNING (Optuna's heartbeat does not
cover ask/tell trials, so we sweep them ourselves).
"""

from __future__ import annotations

import hashlib
import os
import threading
import traceback
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from workers import probing, study_attrs
from workers.handle import StudyHandle
from workers.searcher import OptunaStudySearcher
from workers.trainable import run_trial

NAMESPACE = "phasetune"


def make_sampler(sampler: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names. TPE models the conditional (per-family) space jointly and lies about
    running trials so concurrent trials spread out."""
    name, seed = sampler.get("name", "tpe"), sampler.get("seed")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=int(sampler.get("n_startup_trials", 5)))
    raise ValueError(f"unknown sampler {name!r}")


def sweep_stale_trials(study: optuna.Study) -> int:
    """Fail every RUNNING trial of ``study`` (call only when no driver of it is alive); returns how many."""
    storage = study._storage
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, study_attrs.SWEPT, True)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


class _StopWhenRequested(tune.Stopper):
    """Stops the whole experiment once a stop is requested (by the API, through the actor or the storage)."""

    def __init__(self, handle: StudyHandle) -> None:
        self._handle = handle

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._handle.refresh_stop_flag()


def run_study(handle: StudyHandle, results_dir: str) -> str:
    """Run (or resume) a study to the end of its budget; returns and records its final status."""
    study, spec = handle.study, handle.spec
    handle.refresh_stop_flag()
    sweep_stale_trials(study)
    study.set_user_attr(study_attrs.STATUS, "running")
    try:
        # Ranges in units of the model's own LRs (issue 5): probe once, before the first trial.
        units = probing.ensure_units(study, spec)
        searcher = OptunaStudySearcher(handle, units=units)
        if searcher.remaining() > 0 and not handle.stop_requested.is_set():
            trainable = tune.with_resources(run_trial, {"cpu": spec.cpus, "gpu": spec.gpus})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                            max_concurrent_trials=spec.max_concurrent_trials),
                run_config=tune.RunConfig(
                    name=f"phasetune-{handle.study_name}",
                    storage_path=str(Path(results_dir).resolve()),
                    stop=_StopWhenRequested(handle),
                    verbose=0,
                    # A trial whose node died is retried on another node before it counts as failed.
                    failure_config=tune.FailureConfig(max_failures=2),
                ),
            )
            tuner.fit()
            searcher.close_open_trials()
        sweep_stale_trials(study)  # nothing of this study may stay RUNNING once its driver is done
        status = "stopped" if handle.stop_requested.is_set() else "completed"
    except Exception:
        sweep_stale_trials(study)
        study.set_user_attr(study_attrs.ERROR, traceback.format_exc(limit=20))
        status = "failed"
    study.set_user_attr(study_attrs.STATUS, status)
    return status


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=3)
class StudyDriver:
    """Owns one study's run. The run starts in a thread at construction, so no caller has to stay alive."""

    def __init__(self, storage_url: str, study_name: str, results_dir: str) -> None:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        self._handle = StudyHandle(storage_url, study_name)
        self._thread = threading.Thread(target=self._run, args=(results_dir,), daemon=True)
        self._thread.start()

    def _run(self, results_dir: str) -> None:
        run_study(self._handle, results_dir)
        # Done: free the name and the process. The outcome is in the storage; no restart for a finished run.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def stop(self) -> None:
        self._handle.stop_requested.set()


def driver_name(storage_url: str, study_name: str) -> str:
    """One driver per study *in one storage*: two storages may hold studies of the same name on one cluster."""
    storage_key = hashlib.sha1(storage_url.encode()).hexdigest()[:12]
    return f"study:{storage_key}:{study_name}"


def launch(storage_url: str, study_name: str, results_dir: str) -> None:
    """Start the study's driver unless one is alive (idempotent: safe to call on every API start)."""
    # On the head node: the driver must outlive worker nodes, and only the head must reach the storage and results.
    StudyDriver.options(name=driver_name(storage_url, study_name), namespace=NAMESPACE, lifetime="detached",
                        get_if_exists=True, resources={"node:__internal_head__": 0.001},
                        ).remote(storage_url, study_name, results_dir)


def find_driver(storage_url: str, study_name: str) -> Any | None:
    try:
        return ray.get_actor(driver_name(storage_url, study_name), namespace=NAMESPACE)
    except ValueError:
        return None


def request_stop(storage_url: str, study_name: str) -> bool:
    """Ask a live driver to stop; returns False if none is alive."""
    driver = find_driver(storage_url, study_name)
    if driver is None:
        return False
    try:
        ray.get(driver.stop.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        return False  # it finished (and exited) meanwhile
    return True
