"""Every name phasetune stores, in one torch-free module: Optuna study and trial attrs, the keys of the results a
trial reports each epoch (what becomes its curve), and the study statuses.

Everything phasetune knows of a study lives in the Optuna storage (the spec, its status, its probe results), so a
driver restarted anywhere in the cluster needs only the storage URL and the study name, and the dashboard, the
``optuna`` CLI and ``optuna.load_study`` see what the API sees.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

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
RAY_TRIAL_ID = "ray_trial_id"  # Tune's id of the trial (its results directory)
LR_UNITS = "lr_units"  # the probe units its params are in (params hold unit values, the schedule absolute LRs)
TEST_METRICS = "test_metrics"  # the test split's metrics, reported once with the last epoch
SCHEDULE_PLOT_ERROR = "schedule_plot_error"  # why its schedule picture is missing
RUNG_ATTR = "early_stopping:"  # + the epochs completed: the score early stopping recorded there
DECISION_ATTR = "early_stopping"  # why early stopping stopped it: {policy, pruned_at_epoch, score, reason, ...}
PRUNED_AT_EPOCH = "pruned_at_epoch"  # the 0-based index of a stopped trial's last trained epoch
COOLDOWN_ATTR = "cooldown"  # what its cooldown probes cost: {probes, steps, seconds}
METRICS_PREFIX = "metrics:"  # + a 5-digit chunk index: the trial's per-epoch records (``workers.epoch_log``)
METRICS_LEGACY = "metrics"  # studies written before the history was chunked: one attr with every epoch
TREE_ATTR = "tree"  # a tree study's leaf: its trunk, transition, prefixes and every decision taken on it

# Keys of the result a trial reports each epoch, beside the epoch's metrics (``workers/train.py``); Tune flattens
# nested dicts, so the structured ones are JSON strings.
LAST_EPOCH = "last_epoch"  # true on the trial's last epoch: it trained to the end, diverged, or its schedule ended it
TRIAL_ERROR = "trial_error"  # the exception the trial raised (deterministic: it is not retried)
WORKER = "worker"  # JSON: the warm worker process that ran it ({"pid", "trial", "data", "model"}); also a trial attr
SCHEDULE_ATTRS = "schedule_attrs"  # JSON: what the plan adds to the trial's user attrs at its end
LARGE_STEP = "large_step_phase"  # its last step was inside a large-step phase (shown in the curve)
REUSED = "reused"  # true on an epoch copied from the checkpoint the trial branched from (not trained again)
BRANCH = "branch"  # JSON: the trial's use of the checkpoint store (``TrialBranch.summary``); also a trial attr
TIME_TOTAL_S = "time_total_s"  # Tune's own: seconds since the trial (this run of it) began
INITIAL_LOSS = "initial_loss"  # epoch 0's: the loss of the first batch before any step
COOLDOWN_PREFIX = "cooldown_"  # the cooldown probe's metrics: cooldown_val_loss, cooldown_steps, ...
COOLDOWN_STEPS = COOLDOWN_PREFIX + "steps"  # the optimizer steps the epoch's probe took
COOLDOWN_SECONDS = COOLDOWN_PREFIX + "seconds"
PLACEMENT_KEYS = ("ray_node_id", "ray_node_ip", "device", "workload_origin")  # where it ran (trial attrs at epoch 0)

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
