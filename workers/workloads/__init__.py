"""Built-in workloads; importing this package registers ps10, digits and quadratic."""

from __future__ import annotations

from workers.workloads import digits, ps10, quadratic  # noqa: F401  (registration side effects)
from workers.workloads.base import WORKLOADS, Workload, WorkloadSpec, build_workload, resolve, steps_per_epoch

__all__ = ["WORKLOADS", "Workload", "WorkloadSpec", "build_workload", "resolve", "steps_per_epoch"]
