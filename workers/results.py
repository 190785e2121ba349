"""Keys a trial adds to the per-epoch results it reports to Ray Tune, beside the epoch's metrics (``train.py``).

Its own module, light to import: the trainable (in every worker process) and the driver's searcher both read them,
and the trainable must not pull in Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LAST_EPOCH = "last_epoch"  # true on the trial's last epoch: it trained to the end, diverged, or its schedule ended it
TRIAL_ERROR = "trial_error"  # the exception the trial raised (deterministic: it is not retried)
WORKER = "worker"  # JSON: the warm worker process that ran it ({"pid", "trial", "data", "model"})
SCHEDULE_ATTRS = "schedule_attrs"  # JSON: what the plan adds to the trial's user attrs at its end
LARGE_STEP = "large_step_phase"  # its last step was inside a large-step phase (shown in the curve)
REUSED = "reused"  # true on an epoch copied from the checkpoint the trial branched from (not trained again)
BRANCH = "branch"  # JSON: the trial's use of the checkpoint store (``phasetune.workers.branching.TrialBranch.summary``)
TIME_TOTAL_S = "time_total_s"  # Tune's own: seconds since the trial (this run of it) began


def past_time_limit(result: Mapping[str, Any] | None, limit_s: float | None) -> bool:
    """The trial has run ``limit_s`` seconds or more (the spec's ``trial_time_limit_s``; None: no limit)."""
    return limit_s is not None and result is not None and result.get(TIME_TOTAL_S, 0.0) >= limit_s
