"""A study as the driver's searcher and stopper share it: opened lazily, pickled as its address.

Tune pickles its searcher and stopper into the experiment directory; a live storage engine or a lock cannot be
pickled, and phasetune does not restore from those pickles anyway (the database is the state), so only the
address travels.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from phasetune.workers import optuna_study, study_attrs
from phasetune.workers.spec import StudySpec
from phasetune.workers.storage import DRIVER_CONNECT_WAIT_S, open_storage

STOP_POLL_S = 1.0  # how often the stop flag is read from the storage (Tune asks many times a second)


class StudyHandle:
    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.study_name = study_name
        self.stop_requested = threading.Event()
        self.time_is_up = threading.Event()  # the study's time limit passed: it ends as completed
        self._stop_read_at = -float("inf")

    @cached_property
    def storage(self) -> optuna.storages.RDBStorage:
        return open_storage(self.storage_url, connect_wait_s=DRIVER_CONNECT_WAIT_S)

    @cached_property
    def study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study_name)

    @cached_property
    def spec(self) -> StudySpec:
        return StudySpec.parse(self.storage.get_study_user_attrs(self.study_id)[study_attrs.SPEC])

    @cached_property
    def study(self) -> optuna.Study:
        return optuna_study.load_study(self.storage, self.spec)

    @cached_property
    def artifact_store(self) -> FileSystemArtifactStore | None:
        directory = self.study.user_attrs.get(study_attrs.ARTIFACT_DIR)
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(directory)

    def refresh_stop_flag(self, force: bool = False) -> bool:
        """True once a stop was requested here or (by any process) in the storage, read at most every second
        unless ``force``."""
        now = time.monotonic()
        if not self.stop_requested.is_set() and (force or now - self._stop_read_at >= STOP_POLL_S):
            self._stop_read_at = now
            if self.study.user_attrs.get(study_attrs.STOP_REQUESTED):
                self.stop_requested.set()
        return self.stop_requested.is_set()

    @property
    def ending(self) -> bool:
        """Stopped, or out of time: no new trial starts, and running ones end PRUNED."""
        return self.stop_requested.is_set() or self.time_is_up.is_set()

    def set_attr(self, key: str, value: Any) -> None:
        """A study user attr, written without the spec (so also for a study whose spec no longer parses)."""
        self.storage.set_study_user_attr(self.study_id, key, value)

    def set_status(self, status: study_attrs.StudyStatus) -> None:
        self.set_attr(study_attrs.STATUS, status.value)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage_url": self.storage_url, "study_name": self.study_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]
