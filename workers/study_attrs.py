"""Names of what phasetune keeps in Optuna's study and trial attrs, and the study spec as workers read it.

The service writes the submitted spec into the Optuna study's user attrs; the driver reads it back from there, so a
driver restarted anywhere in the cluster needs only the storage URL and the study name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SPEC = "phasetune:spec"
STATUS = "phasetune:status"
ERROR = "phasetune:error"
STOP_REQUESTED = "phasetune:stop_requested"
ARTIFACT_DIR = "phasetune:artifact_dir"  # where trial artifacts (schedule plots) go; the dashboard reads it
UNITS = "phasetune:units"  # probe results that ranges with a ``unit`` scale by, e.g. {"lr_crit": 0.8}
SWEPT = "phasetune_swept"  # trial attr: failed by the stale-trial sweeper, not by its own training

STATUSES = ("queued", "running", "completed", "failed", "stopped")
EPOCH_METRICS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "momentum", "phase", "seconds")


@dataclass(frozen=True)
class StudySpec:
    """The validated study spec (a dict at the API edge), as the runner needs it."""

    raw: Mapping[str, Any]

    def _get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def workload(self) -> dict[str, Any]:
        return dict(self.raw["workload"])

    @property
    def epochs(self) -> int:
        return int(self.raw["epochs"])

    @property
    def metric(self) -> str:
        return self.raw["objective"]["metric"]

    @property
    def direction(self) -> str:
        return self.raw["objective"].get("direction", "minimize")

    @property
    def schedule(self) -> Mapping[str, Any]:
        return self.raw["schedule"]

    @property
    def n_trials(self) -> int:
        return int(self.raw["n_trials"])

    @property
    def max_concurrent_trials(self) -> int:
        return int(self._get("max_concurrent_trials", 1))

    @property
    def sampler(self) -> dict[str, Any]:
        return dict(self._get("sampler") or {"name": "tpe"})

    @property
    def seed(self) -> int:
        return int(self.sampler.get("seed") or 0)

    @property
    def cpus(self) -> float:
        return float((self._get("resources_per_trial") or {}).get("cpu", 1))

    @property
    def gpus(self) -> float:
        return float((self._get("resources_per_trial") or {}).get("gpu", 0))
