"""Workloads: the public contract a package implements (``contract``), and the registry of installed ones.

A plugin imports the contract from its stable path, ``phasetune.workloads``::

    from phasetune.workloads import ACCURACY, Data, Metric, Param, TensorSplit, WorkloadSpec

and declares its ``WorkloadSpec`` under the entry-point group ``phasetune.workloads`` (see ``contract``).
"""

from __future__ import annotations

from phasetune.workers.workloads.contract import (
    ACCURACY,
    LOSS_KINDS,
    LOSSES,
    Data,
    Metric,
    Param,
    Split,
    TensorSplit,
    WorkloadSpec,
)
from phasetune.workers.workloads.registry import (
    GROUP,
    Registered,
    build_workload,
    registered,
    reload,
    resolve,
    resolve_runtime,
    runtime_params,
    steps_per_epoch,
    workload_steps,
    workloads,
)
from phasetune.workers.workloads.runtime import Workload

__all__ = [
    "ACCURACY",
    "GROUP",
    "LOSSES",
    "LOSS_KINDS",
    "Data",
    "Metric",
    "Param",
    "Registered",
    "Split",
    "TensorSplit",
    "Workload",
    "WorkloadSpec",
    "build_workload",
    "registered",
    "reload",
    "resolve",
    "resolve_runtime",
    "runtime_params",
    "steps_per_epoch",
    "workload_steps",
    "workloads",
]
