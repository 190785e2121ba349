"""Hands studies to Ray from one background thread, so that no request handler starts, joins or waits for Ray.

At start it connects to the cluster (a local head is started by ``phasetune serve`` before the app) and relaunches
the driver of every unfinished study, a no-op where one is alive; then it launches each study the API stores. While
no cluster answers, a stored study waits, ``queued``, and nothing is lost: the next start launches it.

Between jobs it reconciles, every ``reconcile_s``: an unfinished study whose driver is gone (killed more often
than its restart budget, or its node lost) is relaunched, at most ``MAX_RELAUNCHES`` times, then failed with the
reason, so no study stays ``queued`` or ``running`` with nobody to run it. A cluster that stops answering (its head
restarted) is reconnected, and every unfinished study relaunched on it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
import ray

from phasetune.service import ray_cluster
from phasetune.service.settings import Settings
from phasetune.workers import driver, optuna_study, study_attrs
from phasetune.workers.spec import Resources
from phasetune.workers.study_attrs import StudyStatus
from phasetune.workers.tune_run import trial_slots

logger = logging.getLogger(__name__)
CONNECT_RETRY_S = 5.0
PING_TIMEOUT_S = 30.0  # a cluster that runs no task (of no CPUs) in this long is gone: reconnect
MAX_RELAUNCHES = 3  # relaunches of one study's driver by reconciliation before the study is failed
_CLOSE = object()


class Launcher:
    def __init__(self, settings: Settings, storage: optuna.storages.BaseStorage) -> None:
        self._settings = settings
        self._storage = storage
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = threading.Event()
        self.connected = threading.Event()
        self.ray_error: str | None = None  # why the cluster did not answer the last reconciliation
        self.relaunched: dict[str, int] = {}  # studies whose driver reconciliation found gone: how many times
        # The cluster's nodes as last seen (ray.nodes(), at connection and each reconciliation): requests check
        # resources against them without a Ray call of their own. None: not seen yet.
        self.nodes: list[dict[str, Any]] | None = None
        self._thread = threading.Thread(target=self._run, name="phasetune-launcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def launch(self, study_name: str) -> None:
        """Launch this study's driver soon (after every job handed in before)."""
        self._queue.put((self._launch, study_name))

    def end_if_orphaned(self, study_name: str) -> None:
        """Soon: if the study has no driver alive, end it as stopped (nothing runs it; none may stay RUNNING)."""
        self._queue.put((self._end_if_orphaned, study_name))

    def close(self, timeout: float = 10) -> None:
        self._closed.set()
        self._queue.put(_CLOSE)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        if not self._connect():
            return
        next_reconcile = time.monotonic() + self._settings.reconcile_s
        while True:
            try:  # every reconcile_s, however many jobs come in between
                job = self._queue.get(timeout=max(0.0, next_reconcile - time.monotonic()))
            except queue.Empty:
                job = None
            if job is _CLOSE:
                return
            if job is not None:
                self._do(*job)  # type: ignore[misc]
            if time.monotonic() >= next_reconcile:
                self._reconcile()
                next_reconcile = time.monotonic() + self._settings.reconcile_s

    def _connect(self) -> bool:
        """Connect (retrying until closed), then relaunch every unfinished study; False if closed first."""
        while not self._closed.is_set():
            try:
                ray_cluster.connect(self._settings)
                break
            except Exception as err:  # noqa: BLE001  (no cluster yet: studies wait queued, we retry)
                self.ray_error = f"{type(err).__name__}: {err}"
                logger.warning("phasetune: no Ray cluster yet (%s); retrying in %.0f s", err, CONNECT_RETRY_S)
                self._closed.wait(CONNECT_RETRY_S)
        else:
            return False
        self.ray_error = None
        self._see_nodes()
        self.connected.set()
        try:
            unfinished = unfinished_studies(self._storage)
        except Exception:  # noqa: BLE001  (they stay as they are; a later start of the API relaunches them)
            logger.exception("phasetune: could not list the unfinished studies to relaunch")
            unfinished = []
        for name in unfinished:
            self._do(self._launch, name)
        return True

    def _reconcile(self) -> None:
        try:
            unfinished = unfinished_studies(self._storage)
        except Exception:  # noqa: BLE001  (the storage is down: /health says so; nothing to do until it is back)
            logger.exception("phasetune: reconciliation could not list the unfinished studies")
            return
        try:
            ray_cluster.check_alive(PING_TIMEOUT_S)
            self._see_nodes()
            gone = [name for name in unfinished
                    if driver.find_driver(self._settings.storage_url, name) is None]
        except Exception as err:  # noqa: BLE001  (the cluster stopped answering: reconnect, relaunch everything)
            logger.warning("phasetune: the Ray cluster does not answer (%s); reconnecting", err)
            self.ray_error = f"{type(err).__name__}: {err}"
            self.connected.clear()
            ray_cluster.disconnect()
            self._connect()
            return
        for name in gone:
            self._do(self._relaunch, name)

    def _see_nodes(self) -> None:
        try:
            self.nodes = [{"Alive": n.get("Alive"), "Resources": dict(n.get("Resources", {}))} for n in ray.nodes()]
        except Exception:  # noqa: BLE001  (unknown for now: requests are admitted, drivers wait and say so)
            self.nodes = None
            logger.warning("phasetune: could not list the cluster's nodes", exc_info=True)

    def unplaceable(self, cpu: float, gpu: float) -> str | None:
        """Why no node of the cluster, as last seen, can run one task needing ``cpu`` CPUs and ``gpu`` GPUs; None
        if one can, or if the cluster has not been seen yet."""
        if self.nodes is None:
            return None
        if trial_slots(Resources(cpu=cpu, gpu=gpu), self.nodes) > 0:
            return None
        have = [{k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")} for n in self.nodes if n["Alive"]]
        return (f"no node of the cluster has {{cpu: {cpu:g}, gpu: {gpu:g}}}; its nodes have {have} (a cluster that "
                f"gains nodes later: set PHASETUNE_WAIT_FOR_NODES=true, and studies wait, waiting_for_resources)")

    def _relaunch(self, study_name: str) -> None:
        if self._status(study_name).finished:
            return  # it ended between the listing and now
        count = self.relaunched.get(study_name, 0) + 1
        self.relaunched[study_name] = count
        if count > MAX_RELAUNCHES:
            logger.error("phasetune: study %r lost its driver %d times; failing it", study_name, count)
            optuna_study.fail_study(self._storage, study_name,
                                    f"its driver was lost {count} times (killed, or its node died, beyond Ray's "
                                    f"restarts and {MAX_RELAUNCHES} relaunches by the API)")
            return
        logger.warning("phasetune: study %r has no driver; relaunching it (%d of %d)", study_name, count,
                       MAX_RELAUNCHES)
        driver.launch(self._settings.storage_url, study_name, self._settings.results_dir)

    @staticmethod
    def _do(action: Callable[[str], None], study_name: str) -> None:
        try:
            action(study_name)
        except Exception:  # noqa: BLE001  (the study keeps its state; the next start of the API retries it)
            logger.exception("phasetune: %s of study %r failed", action.__name__, study_name)

    def _status(self, study_name: str) -> StudyStatus:
        return study_attrs.status_of(self._storage.get_study_user_attrs(
            self._storage.get_study_id_from_name(study_name)))

    def _launch(self, study_name: str) -> None:
        if not self._status(study_name).finished:  # stopped while it waited here: nothing to run
            driver.launch(self._settings.storage_url, study_name, self._settings.results_dir)

    def _end_if_orphaned(self, study_name: str) -> None:
        if driver.find_driver(self._settings.storage_url, study_name) is not None:
            return  # its driver reads the stop flag itself
        if not self._status(study_name).finished:
            study = optuna.load_study(study_name=study_name, storage=self._storage)
            optuna_study.sweep_stale_trials(study)
            study.set_user_attr(study_attrs.STATUS, StudyStatus.STOPPED.value)


def unfinished_studies(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of phasetune's studies that are queued or running (one query for all studies, no trials)."""
    return [
        study.study_name for study in storage.get_all_studies()
        if study_attrs.SPEC in study.user_attrs and not study_attrs.status_of(study.user_attrs).finished
    ]

