"""A study's driver: one detached Ray actor per study, which owns its run. What the service calls.

The actor reads everything it needs from the Optuna storage, so any process that knows the storage URL and the
study name can (re)start it: restarting the API loses nothing, and ``launch`` is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import ray

from phasetune.workers.handle import StudyHandle
from phasetune.workers.tune_run import run_study

NAMESPACE = "phasetune"


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
        try:
            run_study(self._handle, results_dir)
        finally:
            # Done, however it ended: free the name and the process (a later launch can start a new driver). The
            # outcome is in the storage; no restart for a finished run.
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
