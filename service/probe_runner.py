"""Runs the probes ``POST /probes`` stores, on Ray, without a request waiting: the request stores its probe as
``running``, answers 202 and hands the probe's id to the Ray agent (``ProbeRunner``); in the agent, ``ProbeTasks``
reads the record, submits the Ray task, waits for every pending probe at once (``ray.wait``) and writes each one's
result or error to its record. The record is the job: an agent that starts (the API's first, or one after the
cluster was lost) runs again every probe still ``running``, and a probe has ``TIMEOUT_S`` from its creation."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from phasetune.search_spaces.probes import CurvatureOptions, LRRangeOptions
from phasetune.service.db import ProbeRecord, as_utc
from phasetune.workers.probe_names import ProbeKind, ProbeStatus

if TYPE_CHECKING:
    import ray

    from phasetune.service.launcher import Launcher

logger = logging.getLogger(__name__)
TIMEOUT_S = 900  # a probe costs well under an epoch of training; this only guards a stuck cluster (or a GPU wait)
OPTIONS = {ProbeKind.CURVATURE: CurvatureOptions, ProbeKind.LR_RANGE: LRRangeOptions}


class ProbeRunner:
    """In the API: hands stored probes to the Ray agent (no Ray call here)."""

    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher

    def submit(self, probe_id: int) -> None:
        self._launcher.run_probe(probe_id)


class ProbeTasks:
    """In the Ray agent: the probes' Ray tasks, and their outcomes written to their records."""

    def __init__(self, engine: Engine, data_root: str) -> None:
        self._engine = engine
        self._data_root = data_root
        self._pending: dict[ray.ObjectRef, tuple[int, ProbeKind, float]] = {}  # task -> probe id, kind, deadline

    @property
    def pending(self) -> int:
        return len(self._pending)

    def resume(self) -> None:
        """Submit every probe still ``running`` (stored while no agent ran, or left by one that ended)."""
        with Session(self._engine) as session:
            ids = session.scalars(select(ProbeRecord.id).where(
                ProbeRecord.status == ProbeStatus.RUNNING.value)).all()
        for probe_id in ids:
            self.submit(probe_id)

    def submit(self, probe_id: int) -> None:
        """Start the probe's task unless it runs already or is no longer ``running``."""
        from phasetune.workers import probing

        if any(pending[0] == probe_id for pending in self._pending.values()):
            return
        with Session(self._engine) as session:
            record = session.get(ProbeRecord, probe_id)
            if record is None or record.status != ProbeStatus.RUNNING.value:
                return
            kind, options = ProbeKind(record.kind), dict(record.options)
            workload, seed, resources = dict(record.workload), record.seed, dict(record.resources or {})
            deadline = as_utc(record.created_at).timestamp() + TIMEOUT_S
        cpus, gpus = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
        by_kind = {kind.value: OPTIONS[kind](**options)}
        try:
            ref = probing.start_probe(workload, seed, (kind,), cpus=cpus, gpus=gpus, data_root=self._data_root,
                                      **by_kind)  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001  (the cluster could not take it: the record says why)
            self._write(ProbeRecord.id == probe_id, ProbeStatus.FAILED, error=f"Ray could not start it: {err}")
            return
        self._pending[ref] = (probe_id, kind, deadline)

    def poll(self) -> None:
        """Record the probes that ended; fail those past their deadline. Raises if the cluster does not answer (the
        agent then ends, and the next one runs them again)."""
        import ray

        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        for ref in ready:
            self._finish(ref)
        for ref, (probe_id, _, deadline) in list(self._pending.items()):
            if time.time() > deadline:
                self._pending.pop(ref)
                ray.cancel(ref, force=True)
                self._write(ProbeRecord.id == probe_id, ProbeStatus.FAILED,
                            error=f"the probe did not finish within {TIMEOUT_S} s; is the cluster short of the "
                                  f"CPUs and GPUs it asks for?")

    def _finish(self, ref: ray.ObjectRef) -> None:
        import ray

        probe_id, kind, _ = self._pending.pop(ref)
        try:
            probes = ray.get(ref, timeout=0)
        except Exception as err:  # noqa: BLE001  (the probe's own error, or its node lost: recorded, not raised)
            self._write(ProbeRecord.id == probe_id, ProbeStatus.FAILED,
                        error=f"{type(err).__name__}: {str(err)[:2000]}")
            return
        result = {**probes[kind.value], "units": probes["units"], "device": probes["device"]}
        self._write(ProbeRecord.id == probe_id, ProbeStatus.DONE, result=result)

    def _write(self, rows: Any, status: ProbeStatus, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        """Set the probe records that match ``rows`` (a SQL condition) to ``status``."""
        try:
            with Session(self._engine) as session:
                session.execute(update(ProbeRecord).where(rows).values(status=status.value, result=result,
                                                                        error=error))
                session.commit()
        except Exception:  # noqa: BLE001  (the storage is down: the record stays running; /health says why)
            logger.exception("phasetune: could not record probes %s as %s", rows, status.value)
