"""``/workloads``: the workloads this installation can train (built-in and from installed plugins)."""

from __future__ import annotations

from fastapi import APIRouter

from phasetune.service import workloads
from phasetune.service.auth import AUTH_RESPONSES, READ
from phasetune.service.schemas import WorkloadOut

router = APIRouter(prefix="/workloads", tags=["workloads"], responses=AUTH_RESPONSES, dependencies=[READ])


@router.get("")
def list_workloads() -> list[WorkloadOut]:
    """Every registered workload: its distribution and version, params with defaults, metrics with directions."""
    return workloads.list_all()
