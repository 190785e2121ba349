"""A study as the driver's searcher and stopper share it: opened lazily, pickled as its address.

Tune pickles its searcher and stopper into the experiment directory; a live storage engine or a lock cannot be
pickled, and phasetune does not restore from those pickles anyway (the database is the state), so only the
address travels.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from workers import study_attrs
from workers.storage import open_storage
from workers.study_attrs import StudySpec


class StudyHandle:
    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.study_name = study_name
        self.stop_requested = threading.Event()

    @cached_property
    def storage(self) -> optuna.storages.RDBStorage:
        return open_storage(self.storage_url)

    @cached_property
    def spec(self) -> StudySpec:
        summary = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return StudySpec(summary.user_attrs[study_attrs.SPEC])

    @cached_property
    def study(self) -> optuna.Study:
        from workers.runner import make_sampler

        return optuna.load_study(study_name=self.study_name, storage=self.storage,
                                 sampler=make_sampler(self.spec.sampler))

    @cached_property
    def steps_per_epoch(self) -> int:
        """The workload's optimizer steps per epoch (to draw a trial's schedule as it will run)."""
        from workers.workloads import build_workload

        workload = self.spec.workload
        return build_workload(workload["name"], workload.get("params"), self.spec.seed).steps_per_epoch

    @cached_property
    def artifact_store(self) -> FileSystemArtifactStore | None:
        directory = self.study.user_attrs.get(study_attrs.ARTIFACT_DIR)
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(directory)

    def refresh_stop_flag(self) -> bool:
        """True once a stop was requested here or (by any process) in the storage."""
        if not self.stop_requested.is_set() and self.study.user_attrs.get(study_attrs.STOP_REQUESTED):
            self.stop_requested.set()
        return self.stop_requested.is_set()

    def __getstate__(self) -> dict[str, Any]:
        return {"storage_url": self.storage_url, "study_name": self.study_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]
