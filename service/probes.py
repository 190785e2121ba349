"""What ``/probes`` does: check the request, run the probe on Ray with the requested resources, store the record."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from search_spaces import SpecError
from service import ray_cluster
from service.db import ProbeRecord
from service.schemas import CurvatureOptionsIn, LRRangeOptionsIn, ProbeCreate, ProbeOut
from service.settings import Settings
from workers import probing
from workers.workloads import resolve as resolve_workload

OPTION_MODELS: dict[str, type[BaseModel]] = {"curvature": CurvatureOptionsIn, "lr_range": LRRangeOptionsIn}
TIMEOUT_S = 900  # a probe costs well under an epoch of training; this only guards a stuck cluster (or a GPU wait)


class ProbeNotFound(Exception):
    pass


def _options(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The probe's options with defaults filled in; SpecError naming the option if one is bad."""
    try:
        options = OPTION_MODELS[kind].model_validate(raw).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        raise SpecError(("options", *first["loc"]), first["msg"]) from None
    if kind == "lr_range" and options["lr_low"] >= options["lr_high"]:
        raise SpecError(("options", "lr_low"), f"must be < lr_high ({options['lr_high']}), got {options['lr_low']}")
    return options


def create(*, engine: Engine, settings: Settings, request: ProbeCreate) -> ProbeOut:
    try:
        resolve_workload(request.workload.name, request.workload.params)
    except SpecError as err:
        raise err.under("workload") from None
    options = _options(request.kind, request.options)
    workload = {"name": request.workload.name, "params": request.workload.params}
    ray_cluster.connect(settings)
    probes = probing.probe_remote(workload, request.seed, (request.kind,), options, cpus=request.resources.cpu,
                                  gpus=request.resources.gpu, timeout=TIMEOUT_S)
    result = {**probes[request.kind], "units": probes["units"], "device": probes["device"]}
    record = ProbeRecord(kind=request.kind, workload=workload, seed=request.seed, options=options, result=result)
    with Session(engine) as session:
        session.add(record)
        session.commit()
        session.refresh(record)
        return _out(record)


def view(*, engine: Engine, probe_id: int) -> ProbeOut:
    with Session(engine) as session:
        record = session.get(ProbeRecord, probe_id)
        if record is None:
            raise ProbeNotFound(probe_id)
        return _out(record)


def _out(record: ProbeRecord) -> ProbeOut:
    return ProbeOut(id=record.id, kind=record.kind, workload=record.workload, seed=record.seed,
                    options=record.options, result=record.result, created_at=record.created_at.isoformat())
