"""What ``/probes`` does: check the request, run the probe on Ray with the requested resources, store the record."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import ray
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from search_spaces import SpecError
from search_spaces.probes import CurvatureOptions, LRRangeOptions
from service.db import ID_MAX, ProbeRecord, as_utc
from service.launcher import Launcher
from service.schemas import CurvatureOptionsIn, LRRangeOptionsIn, ProbeCreate, ProbeOut
from service.settings import Settings
from workers import probing
from workers.probing import ProbeKind
from workers.workloads import resolve as resolve_workload

OPTION_MODELS: dict[ProbeKind, tuple[type[BaseModel], type]] = {
    ProbeKind.CURVATURE: (CurvatureOptionsIn, CurvatureOptions),
    ProbeKind.LR_RANGE: (LRRangeOptionsIn, LRRangeOptions),
}
TIMEOUT_S = 900  # a probe costs well under an epoch of training; this only guards a stuck cluster (or a GPU wait)


class ProbeNotFound(Exception):
    pass


class ClusterUnavailable(Exception):
    """No Ray cluster is connected (yet), or it could not run the probe: a 503, the request may be retried."""


class ProbeTimeout(Exception):
    """The probe did not finish in ``TIMEOUT_S`` (a stuck cluster, or a wait for a GPU it does not have): a 504."""


def _options(kind: ProbeKind, raw: dict[str, Any]) -> CurvatureOptions | LRRangeOptions:
    """The probe's options with defaults filled in; SpecError naming the option if one is bad."""
    model, options_cls = OPTION_MODELS[kind]
    try:
        options = options_cls(**model.model_validate(raw).model_dump())
    except ValidationError as err:
        first = err.errors()[0]
        raise SpecError(("options", *first["loc"]), first["msg"]) from None
    if isinstance(options, LRRangeOptions) and options.lr_low >= options.lr_high:
        raise SpecError(("options", "lr_low"), f"must be < lr_high ({options.lr_high}), got {options.lr_low}")
    return options


def create(*, engine: Engine, settings: Settings, launcher: Launcher | None, request: ProbeCreate) -> ProbeOut:
    try:
        spec, _ = resolve_workload(request.workload.name, request.workload.params, settings.data_root)
    except SpecError as err:
        raise err.under("workload") from None
    try:
        probing.check_supported(request.kind, spec.name, spec.loss_kind)
    except probing.ProbeUnsupported as err:
        raise SpecError(("kind",), str(err)) from None
    options = _options(request.kind, request.options)
    if launcher is None or not launcher.connected.is_set():
        raise ClusterUnavailable("no Ray cluster is connected to run the probe on; retry shortly")
    workload = {"name": request.workload.name, "params": request.workload.params}
    by_kind = {"curvature": options} if request.kind is ProbeKind.CURVATURE else {"lr_range": options}
    try:
        probes = probing.probe_remote(workload, request.seed, (request.kind,), cpus=request.resources.cpu,
                                      gpus=request.resources.gpu, timeout=TIMEOUT_S, data_root=settings.data_root,
                                      **by_kind)  # type: ignore[arg-type]
    except ray.exceptions.GetTimeoutError:
        raise ProbeTimeout(f"the probe did not finish within {TIMEOUT_S} s; is the cluster short of "
                           f"{request.resources}?") from None
    except ray.exceptions.RayError as err:
        raise ClusterUnavailable(f"the cluster could not run the probe: {err}") from None
    result = {**probes[request.kind.value], "units": probes["units"], "device": probes["device"]}
    record = ProbeRecord(kind=request.kind.value, workload=workload, seed=request.seed, options=asdict(options),
                         result=result)
    with Session(engine) as session:
        session.add(record)
        session.commit()
        session.refresh(record)
        return _out(record)


def view(*, engine: Engine, probe_id: int) -> ProbeOut:
    with Session(engine) as session:
        record = session.get(ProbeRecord, probe_id) if 0 <= probe_id <= ID_MAX else None
        if record is None:
            raise ProbeNotFound(probe_id)
        return _out(record)


def _out(record: ProbeRecord) -> ProbeOut:
    return ProbeOut(id=record.id, kind=record.kind, workload=record.workload, seed=record.seed,
                    options=record.options, result=record.result, created_at=as_utc(record.created_at).isoformat())
