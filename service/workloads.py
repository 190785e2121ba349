"""What ``/workloads`` shows: every workload an installed distribution registers, as a client needs to use it."""

from __future__ import annotations

from phasetune.service.schemas import MetricOut, ParamOut, WorkloadOut
from phasetune.workers.spec import Direction
from phasetune.workers.workloads import Registered, WorkloadSpec, registered


def _metrics(spec: WorkloadSpec) -> list[MetricOut]:
    def out(reported: dict[str, bool], final: bool) -> list[MetricOut]:
        return [MetricOut(name=name, direction=Direction.MAXIMIZE if higher else Direction.MINIMIZE, final=final)
                for name, higher in reported.items()]

    return out(spec.epoch_metrics(), False) + out(spec.final_metrics(), True)


def workload_out(entry: Registered) -> WorkloadOut:
    out = WorkloadOut(name=entry.name, distribution=entry.distribution, version=entry.version, error=entry.error)
    spec = entry.spec
    if spec is None:
        return out
    out.description, out.loss_kind, out.metrics = spec.description, spec.loss_kind, _metrics(spec)
    out.unavailable = spec.unavailable() if spec.unavailable is not None else None
    out.params = [
        ParamOut(name=name, kind=param.type_name, default=param.default, required=param.required, help=param.help,
                 low=param.low, high=param.high, choices=list(param.choices) if param.choices is not None else None)
        for name, param in spec.params.items()
    ]
    return out


def list_all() -> list[WorkloadOut]:
    return [workload_out(entry) for entry in registered().values()]
