"""Names of what phasetune keeps in Optuna's study and trial attrs, and the study statuses.

Everything phasetune knows of a study lives in the Optuna storage (the spec, its status, its probe results), so a
driver restarted anywhere in the cluster needs only the storage URL and the study name, and the dashboard, the
``optuna`` CLI and ``optuna.load_study`` see what the API sees.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from phasetune.workers.results import LARGE_STEP, REUSED

# Study user attrs.
SPEC = "phasetune:spec"  # StudySpec.to_dict(): a study without it is not phasetune's
STATUS = "phasetune:status"  # a StudyStatus value
CREATED_AT = "phasetune:created_at"  # ISO 8601, UTC
ERROR = "phasetune:error"  # why the study failed
WAITING_FOR = "phasetune:waiting_for"  # what a study waiting_for_resources waits for (None once it runs)
STOP_REQUESTED = "phasetune:stop_requested"
ARTIFACT_DIR = "phasetune:artifact_dir"  # where trial artifacts (schedule plots) go; the dashboard reads it
UNITS = "phasetune:units"  # probe results that ranges with a ``unit`` scale by, e.g. {"lr_crit": 0.8}
STARTED_AT = "phasetune:started_at"  # time.time() when its first driver began running it (its time limit counts)
CONCURRENCY = "phasetune:concurrency"  # max_concurrent_trials as the driver ran it, capped by the cluster's slots
ENDED_BY = "phasetune:ended_by"  # an EndedBy value, set when a limit rather than its trial budget ended it
CHECKPOINTS = "phasetune:checkpoints"  # the branching store: {checkpoints, bytes, reuses, reused_epochs}
TREE_STATE = "phasetune:tree_state"  # the tree strategy's decisions' inputs (workers.tree.TreeState, JSON)
TREE = "phasetune:tree"  # what GET /studies/{id} shows of it (workers.tree.TreeSearch.summary)
PROBES = "phasetune:probes"  # the probes' full results: {"curvature": {...}, "lr_range": {...}, "units", "device"}

# Trial user attrs.
SCHEDULE = "schedule"  # the concrete schedule the trial trained with (numbers only)
SEEDS = "seeds"  # the seeds it used: {"data", "init", "batch_order"}
FAIL_REASON = "fail_reason"  # why it ended FAIL, naming the fields where a sample broke a rule
REALIZED_LR = "realized_lr"  # per epoch: the lr the optimizer used at the epoch's first step
REALIZED_MOMENTUM = "realized_momentum"  # the same for momentum (Adam's beta1)
SWEPT = "phasetune_swept"  # failed by the stale-trial sweeper, not by its own training

# Beside the workload's metrics, in each epoch's record.
EPOCH_KEYS = ("epoch", "lr", "momentum", "phase", "seconds", LARGE_STEP, REUSED)


class StudyStatus(str, enum.Enum):
    QUEUED = "queued"  # stored; no driver has run it yet
    RUNNING = "running"
    # Running, but no node of the cluster can take one of its trials yet (workers still joining, an autoscaler):
    # the reason is in WAITING_FOR; the study fails once SLOT_WAIT_S passes without one.
    WAITING_FOR_RESOURCES = "waiting_for_resources"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in (StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.STOPPED)


class EndedBy(str, enum.Enum):
    STUDY_TIME_LIMIT = "study_time_limit_s"


def status_of(attrs: Mapping[str, Any]) -> StudyStatus:
    """A study's status from its user attrs (queued until a driver has written one)."""
    return StudyStatus(attrs.get(STATUS, StudyStatus.QUEUED.value))
