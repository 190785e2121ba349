"""``/workloads``: the workloads this installation can train (built-in and from installed plugins)."""

from __future__ import annotations

from fastapi import APIRouter

from service import workloads
from service.schemas import WorkloadOut

router = APIRouter(prefix="/workloads", tags=["workloads"])


@router.get("")
def list_workloads() -> list[WorkloadOut]:
    """Every registered workload: its distribution and version, params with defaults, metrics with directions."""
    return workloads.list_all()
