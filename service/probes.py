"""What ``/probes`` does: check the request and store the probe, which ``ProbeRunner`` runs on Ray (the request does
not wait for it); read it back."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from phasetune.search_spaces import SpecError
from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.probes import CurvatureOptions, LRRangeOptions
from phasetune.service.db import ID_MAX, ProbeRecord, as_utc
from phasetune.service.errors import ClusterUnavailable, NotFound
from phasetune.service.launcher import Launcher
from phasetune.service.probe_runner import ProbeRunner
from phasetune.service.schemas import CurvatureOptionsIn, LRRangeOptionsIn, ProbeCreate, ProbeOut
from phasetune.service.settings import Settings
from phasetune.workers import probing
from phasetune.workers.probe_names import ProbeKind, ProbeStatus
from phasetune.workers.workloads import resolve as resolve_workload

OPTION_MODELS: dict[ProbeKind, tuple[type[BaseModel], type]] = {
    ProbeKind.CURVATURE: (CurvatureOptionsIn, CurvatureOptions),
    ProbeKind.LR_RANGE: (LRRangeOptionsIn, LRRangeOptions),
}


def _options(kind: ProbeKind, raw: dict[str, Any]) -> CurvatureOptions | LRRangeOptions:
    """The probe's options with defaults filled in; SpecError naming the option if one is bad."""
    model, options_cls = OPTION_MODELS[kind]
    try:
        options = options_cls(**model.model_validate(raw).model_dump())
    except ValidationError as err:
        first = err.errors()[0]
        raise RuleError(("options", *first["loc"]), first["msg"]) from None  # which options depends on kind
    if isinstance(options, LRRangeOptions) and options.lr_low >= options.lr_high:
        raise RuleError(("options", "lr_low"), f"must be < lr_high ({options.lr_high}), got {options.lr_low}")
    return options


def create(*, engine: Engine, settings: Settings, launcher: Launcher | None, runner: ProbeRunner | None,
           request: ProbeCreate) -> ProbeOut:
    """Check the request, store the probe as running and hand it to the runner: it answers at once (202)."""
    try:
        spec, _ = resolve_workload(request.workload.name, request.workload.params, settings.data_root)
    except SpecError as err:
        raise err.under("workload") from None
    try:
        probing.check_supported(request.kind, spec.name, spec.loss_kind)
    except probing.ProbeUnsupported as err:
        raise RuleError(("kind",), str(err)) from None
    options = _options(request.kind, request.options)
    if runner is not None and (launcher is None or not launcher.connected.is_set()):
        raise ClusterUnavailable("no Ray cluster is connected to run the probe on; retry shortly")
    if launcher is not None and not settings.wait_for_nodes:
        if (why := launcher.unplaceable(request.resources.cpu, request.resources.gpu)) is not None:
            raise RuleError(("resources",), why)
    workload = {"name": request.workload.name, "params": request.workload.params}
    resources = {"cpu": request.resources.cpu, "gpu": request.resources.gpu}
    record = ProbeRecord(kind=request.kind.value, workload=workload, seed=request.seed, options=asdict(options),
                         resources=resources, status=ProbeStatus.RUNNING.value)
    with Session(engine) as session:
        session.add(record)
        session.commit()
        session.refresh(record)
        out = _out(record)
    if runner is not None:  # an app that runs nothing (run_studies=False) stores the probe, as it does studies
        runner.submit(out.id)  # the Ray agent reads the rest from the record
    return out


def view(*, engine: Engine, probe_id: int) -> ProbeOut:
    with Session(engine) as session:
        record = session.get(ProbeRecord, probe_id) if 0 <= probe_id <= ID_MAX else None
        if record is None:
            raise NotFound("probe", probe_id)
        return _out(record)


def _out(record: ProbeRecord) -> ProbeOut:
    return ProbeOut(id=record.id, kind=record.kind, workload=record.workload, seed=record.seed,
                    options=record.options, resources=record.resources, status=ProbeStatus(record.status),
                    result=record.result, error=record.error, created_at=as_utc(record.created_at).isoformat())
