"""Runs the probes ``POST /probes`` stores, on Ray, from one thread of its own: a request stores its probe as
``running`` and returns 202 at once; this thread submits the Ray task, waits for every pending probe at once
(``ray.wait``) and writes each one's result or error to its record. No request waits for a probe."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from phasetune.search_spaces.probes import CurvatureOptions, LRRangeOptions
from phasetune.service.db import ProbeRecord, ProbeStatus
from phasetune.workers import probing
from phasetune.workers.probing import ProbeKind

logger = logging.getLogger(__name__)
TIMEOUT_S = 900  # a probe costs well under an epoch of training; this only guards a stuck cluster (or a GPU wait)
POLL_S = 0.5


@dataclass(frozen=True)
class ProbeJob:
    probe_id: int
    kind: ProbeKind
    workload: dict[str, Any]
    seed: int
    options: CurvatureOptions | LRRangeOptions
    cpus: float
    gpus: float
    data_root: str


class ProbeRunner:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: queue.Queue[ProbeJob] = queue.Queue()
        self._pending: dict[ray.ObjectRef, tuple[ProbeJob, float]] = {}  # task -> its job and deadline
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phasetune-probes", daemon=True)

    def start(self) -> None:
        """Fail the probes a previous API process left running (their waiter is gone), then start waiting."""
        self._write(ProbeRecord.status == ProbeStatus.RUNNING.value, ProbeStatus.FAILED,
                    error="the API stopped while the probe ran; run it again")
        self._thread.start()

    def submit(self, job: ProbeJob) -> None:
        self._jobs.put(job)

    def close(self, timeout: float = 10) -> None:
        self._closed.set()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._submit_queued()
            if not self._pending:
                self._closed.wait(POLL_S)
                continue
            try:
                ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=POLL_S)
            except Exception:  # noqa: BLE001  (the cluster is gone: the tasks' gets below say so, one by one)
                ready = list(self._pending)
            for ref in ready:
                self._finish(ref)
            now = time.monotonic()
            for ref, (job, deadline) in list(self._pending.items()):
                if now > deadline:
                    self._pending.pop(ref)
                    ray.cancel(ref, force=True)
                    self._write(ProbeRecord.id == job.probe_id, ProbeStatus.FAILED,
                                error=f"the probe did not finish within {TIMEOUT_S} s; is the cluster short of "
                                      f"{job.cpus:g} CPUs and {job.gpus:g} GPUs?")

    def _submit_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            by_kind = {"curvature": job.options} if job.kind is ProbeKind.CURVATURE else {"lr_range": job.options}
            try:
                ref = probing.start_probe(job.workload, job.seed, (job.kind,), cpus=job.cpus, gpus=job.gpus,
                                          data_root=job.data_root, **by_kind)  # type: ignore[arg-type]
            except Exception as err:  # noqa: BLE001  (the cluster could not take it: the record says why)
                self._write(ProbeRecord.id == job.probe_id, ProbeStatus.FAILED,
                            error=f"Ray could not start it: {err}")
                continue
            self._pending[ref] = (job, time.monotonic() + TIMEOUT_S)

    def _finish(self, ref: ray.ObjectRef) -> None:
        job, _ = self._pending.pop(ref)
        try:
            probes = ray.get(ref, timeout=0)
        except Exception as err:  # noqa: BLE001  (the probe's own error, or its node lost: recorded, not raised)
            self._write(ProbeRecord.id == job.probe_id, ProbeStatus.FAILED,
                        error=f"{type(err).__name__}: {str(err)[:2000]}")
            return
        result = {**probes[job.kind.value], "units": probes["units"], "device": probes["device"]}
        self._write(ProbeRecord.id == job.probe_id, ProbeStatus.DONE, result=result)

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
