"""The plugin contract: what a package imports to register a workload with phasetune.

::

    from phasetune.workloads import ACCURACY, Data, Metric, Param, TensorSplit, WorkloadSpec

    SPEC = WorkloadSpec(name="mycnn", data=..., model=..., params={...}, loss=..., metrics={"accuracy": ACCURACY})

and in the plugin's ``pyproject.toml``::

    [project.entry-points."phasetune.workloads"]
    mycnn = "mypackage.workload:SPEC"

The fields are documented on ``WorkloadSpec`` (``phasetune.workers.workloads.contract``). This module is the
stable import path; the implementation's module layout may move.
"""

from __future__ import annotations

from phasetune.search_spaces.errors import SpecError
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
from phasetune.workers.workloads.registry import GROUP

__all__ = [
    "ACCURACY",
    "GROUP",
    "LOSSES",
    "LOSS_KINDS",
    "Data",
    "Metric",
    "Param",
    "SpecError",
    "Split",
    "TensorSplit",
    "WorkloadSpec",
]
