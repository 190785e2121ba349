"""The Ray agent: the one process of the service that talks to Ray, a child of the API that the API restarts.

Why a child process, and not Ray's Job Submission API or threads in the API: a process that calls ``ray.init`` is
a Ray driver, and Ray's core worker ends a driver whose raylet dies (``Exiting because the Raylet IPC connection
failed``) and blocks its calls while its GCS is away (``.remote()`` waits in ``_internal_kv_put`` before any
``timeout=`` applies). A thread cannot be stopped from outside, so a deadline on a Ray call made in the API process
does not hold; a child process can be killed. The Job Submission API would move the problem, not remove it: it needs
the head's dashboard (off here) and a driver process per study, and still some process must watch the cluster,
start the local head again and launch what is unfinished. So every Ray call (connecting, starting the local head,
launching and finding study drivers, probes' tasks, node queries) runs here, and each has a deadline: the agent's
main thread watches its worker thread, and ends the process when a call outlives its deadline; the API kills an
agent that stops reporting at all (``service/launcher.py``). Either way a new agent starts, connects (starting the
local head again when it is gone) and launches every unfinished study, which resumes from the storage.

The API and the agent share the database, which holds the truth (studies, probes); over a socket pair the API sends
nudges (``launch``, ``end_if_orphaned``, ``probe``: do it now rather than at the next reconciliation) and the agent
reports, every second, what it last verified and when (its address, nodes, relaunch counts, the error it died of).
A nudge lost with a dying agent loses nothing: the next agent starts from the database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from phasetune.service.children import die_with_parent
from phasetune.service.settings import Settings

if TYPE_CHECKING:  # the agent imports Ray, Optuna and the storage in its worker thread, under a deadline
    import optuna

    from phasetune.service.probe_runner import ProbeTasks

logger = logging.getLogger(__name__)
HEARTBEAT_S = 1.0  # how often the agent reports, whatever its worker thread is doing
CONNECT_S = 240.0  # starting the local head (``ray start``, up to HEAD_START_S) and ``ray.init``, on a loaded machine
MAX_RELAUNCHES = 3  # relaunches of one study's driver by reconciliation before the study is failed
EXIT_CLOSED, EXIT_LOST, EXIT_STUCK = 0, 3, 4  # the agent's exit codes: told to; the cluster lost; a call overran


def call_deadline_s(settings: Settings) -> float:
    """How long one Ray call may take before the agent ends itself (a healthy cluster answers in milliseconds)."""
    return max(10.0, settings.reconcile_s)


def verify_every_s(settings: Settings) -> float:
    """How often the agent checks the cluster: three times per reconcile period (at most every 10 s), so that
    ``/health``, which trusts a check for one reconcile period, turns 503 within one period of the head going away."""
    return min(10.0, max(0.5, settings.reconcile_s / 3))


class ClusterLost(Exception):
    """The cluster stopped answering: the agent exits, and the API starts a new one."""


class Channel:
    """JSON lines over a connected stream socket, between the API and its agent; one thread per side uses it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any], timeout: float) -> None:
        """Send one message; ``TimeoutError`` (an ``OSError``) if the other side does not read it in ``timeout``."""
        with self._send_lock:
            self._sock.settimeout(timeout)
            self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        """The messages that arrive within ``timeout`` (none: an empty list); ``EOFError`` once the other side has
        closed."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if ready:
            self._sock.settimeout(1.0)
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the other side closed the channel")
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        self._sock.close()


class Agent:
    def __init__(self, settings: Settings, channel: Channel, relaunched: dict[str, int]) -> None:
        self._settings = settings
        self._channel = channel
        self._jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self._busy: tuple[str, float, float] | None = None  # the Ray call under way: what, its deadline, its budget
        # What the API shows in /health, sent every HEARTBEAT_S: updated by the worker thread, sent by the main one.
        self._state: dict[str, Any] = {"pid": os.getpid(), "phase": "connecting", "address": None,
                                       "verified_at": None, "verified_mono": None, "nodes": None, "error": None,
                                       "relaunched": dict(relaunched)}
        self._state_lock = threading.Lock()
        self._address = ""  # set by the worker thread once connected, with the two below
        self._storage: optuna.storages.BaseStorage
        self._probes: ProbeTasks

    # ---- the main thread: messages, the deadline, reports (never a Ray call) -------------------------------------

    def run(self) -> NoReturn:
        worker = threading.Thread(target=self._work, name="phasetune-ray-work", daemon=True)
        worker.start()
        next_report = 0.0
        while True:
            try:
                messages = self._channel.receive(0.2)
            except (EOFError, OSError):
                os._exit(EXIT_CLOSED)  # the API is gone (its pdeathsig would end us too)
            for message in messages:
                if message.get("do") == "close":
                    self._report()
                    os._exit(EXIT_CLOSED)  # detached drivers live on; this driver's probe tasks end with it
                self._jobs.put(message)
            busy = self._busy
            if busy is not None and time.monotonic() > busy[1]:
                self._exit(EXIT_STUCK, f"Ray did not answer {busy[0]} within {busy[2]:g} s")
            if time.monotonic() >= next_report:
                self._report()
                next_report = time.monotonic() + HEARTBEAT_S

    def _report(self) -> None:
        with self._state_lock:
            state = dict(self._state)
        try:
            self._channel.send(state, timeout=5)
        except OSError:
            os._exit(EXIT_CLOSED)  # the API does not read: it is gone or stuck; it starts a new agent if it can

    def _update(self, **changes: Any) -> None:
        with self._state_lock:
            self._state.update(changes)

    def _exit(self, code: int, error: str) -> NoReturn:
        """Report why, then end the process (from any thread: a stuck Ray call cannot be unwound otherwise)."""
        logger.warning("phasetune: the Ray agent exits: %s", error)
        self._update(error=error, phase="exiting")
        self._report()
        os._exit(code)

    @contextlib.contextmanager
    def _deadline(self, what: str, seconds: float) -> Iterator[None]:
        """Run the block under a deadline the main thread enforces by ending the process."""
        self._busy = (what, time.monotonic() + seconds, seconds)
        try:
            yield
        finally:
            self._busy = None

    # ---- the worker thread: every Ray call --------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._serve()
        except BaseException as err:  # noqa: BLE001  (whatever ended the work ends the agent, saying why)
            if not isinstance(err, ClusterLost):
                logger.exception("phasetune: the Ray agent failed")
            self._exit(EXIT_LOST, f"{type(err).__name__}: {err}" if not isinstance(err, ClusterLost) else str(err))

    def _serve(self) -> None:
        settings = self._settings
        with self._deadline("the connection (starting the local head if it is gone)", CONNECT_S):
            from phasetune.service import ray_cluster
            from phasetune.service.db import make_engine
            from phasetune.service.probe_runner import ProbeTasks
            from phasetune.workers.storage import open_storage

            address = ray_cluster.connect(settings)
        self._update(address=address)
        self._address = address
        self._storage = open_storage(settings.storage_url)
        self._probes = ProbeTasks(make_engine(settings.storage_url), settings.data_root)
        self._verify()
        self._update(phase="ready")
        logger.warning("phasetune: the Ray agent (pid %d) is connected to %s", os.getpid(), address)
        for name in self._unfinished():  # a no-op for a study whose driver is alive
            self._do({"do": "launch", "study": name})
        with self._deadline("resuming the probes left running", call_deadline_s(settings)):
            self._probes.resume()
        next_verify = time.monotonic() + verify_every_s(settings)
        next_reconcile = time.monotonic() + settings.reconcile_s
        while True:
            wait = min(next_verify, next_reconcile) - time.monotonic()
            if self._probes.pending:
                wait = min(wait, 0.5)
            try:
                job = self._jobs.get(timeout=max(0.0, wait))
            except queue.Empty:
                job = None
            if job is not None:
                self._do(job)
            if self._probes.pending:
                with self._deadline("the wait for probe tasks", call_deadline_s(settings)):
                    self._probes.poll()
            if time.monotonic() >= next_verify:
                self._verify()
                next_verify = time.monotonic() + verify_every_s(settings)
            if time.monotonic() >= next_reconcile:
                self._reconcile()
                next_reconcile = time.monotonic() + settings.reconcile_s

    def _verify(self) -> None:
        """Check the cluster now: its GCS port (a stopped head's closes at once), the local head's raylet (a killed
        one also ends this process: Ray's core worker exits), then the GCS's list of nodes, one of them alive."""
        import ray

        from phasetune.service import ray_cluster

        if not ray_cluster.gcs_answers(self._address):
            raise ClusterLost(f"the Ray GCS at {self._address} does not accept connections (the head is gone)")
        if not self._settings.ray_address and not ray_cluster.head_raylet_alive(self._settings):
            raise ClusterLost(f"the local Ray head at {self._address} has no raylet (it was killed)")
        with self._deadline("the list of nodes", call_deadline_s(self._settings)):
            try:
                nodes = ray_cluster.alive_nodes()
            except ray.exceptions.RayError as err:
                raise ClusterLost(f"the Ray GCS at {self._address} failed to list its nodes: {err}") from None
        if not any(node["Alive"] for node in nodes):
            raise ClusterLost(f"the Ray cluster at {self._address} has no node alive")
        self._update(verified_at=time.time(), verified_mono=time.monotonic(), nodes=nodes, error=None)

    def _do(self, job: dict[str, Any]) -> None:
        """One nudge from the API; its failure is logged, not raised (the study or probe keeps its state, and the
        next reconciliation, or the next agent, tries again)."""
        action = {"launch": self._launch, "end_if_orphaned": self._end_if_orphaned, "probe": self._probe}[job["do"]]
        subject = job.get("study", job.get("id"))
        try:
            with self._deadline(f"{job['do']} {subject!r}", call_deadline_s(self._settings)):
                action(subject)
        except Exception:  # noqa: BLE001
            logger.exception("phasetune: %s of %r failed", job["do"], subject)

    def _unfinished(self) -> list[str]:
        from phasetune.workers import study_attrs

        return [study.study_name for study in self._storage.get_all_studies()
                if study_attrs.SPEC in study.user_attrs and not study_attrs.status_of(study.user_attrs).finished]

    def _finished(self, study_name: str) -> bool:
        from phasetune.workers import study_attrs

        attrs = self._storage.get_study_user_attrs(self._storage.get_study_id_from_name(study_name))
        return study_attrs.status_of(attrs).finished

    def _launch(self, study_name: str) -> None:
        from phasetune.workers import driver

        if not self._finished(study_name):  # stopped while it waited: nothing to run
            driver.launch(self._settings.storage_url, study_name, self._settings.results_dir)

    def _probe(self, probe_id: int) -> None:
        self._probes.submit(int(probe_id))

    def _end_if_orphaned(self, study_name: str) -> None:
        import optuna

        from phasetune.workers import driver, optuna_study, study_attrs
        from phasetune.workers.study_attrs import StudyStatus

        if driver.find_driver(self._settings.storage_url, study_name) is not None:
            return  # its driver reads the stop flag itself
        if not self._finished(study_name):
            study = optuna.load_study(study_name=study_name, storage=self._storage)
            optuna_study.sweep_stale_trials(study)
            study.set_user_attr(study_attrs.STATUS, StudyStatus.STOPPED.value)

    def _reconcile(self) -> None:
        """Every unfinished study has a driver: one found gone (killed beyond Ray's restarts, its node lost) is
        relaunched, at most MAX_RELAUNCHES times, then failed with the reason, so none stays queued or running
        with nobody to run it."""
        from phasetune.workers import driver, optuna_study

        try:
            unfinished = self._unfinished()
        except Exception:  # noqa: BLE001  (the storage is down: /health says so; nothing to do until it is back)
            logger.exception("phasetune: reconciliation could not list the unfinished studies")
            return
        with self._deadline("the reconciliation's driver lookups", call_deadline_s(self._settings)):
            gone = [name for name in unfinished if driver.find_driver(self._settings.storage_url, name) is None]
        for name in gone:
            with self._state_lock:
                count = self._state["relaunched"][name] = self._state["relaunched"].get(name, 0) + 1
            try:
                if self._finished(name):
                    continue  # it ended between the listing and now
                if count > MAX_RELAUNCHES:
                    logger.error("phasetune: study %r lost its driver %d times; failing it", name, count)
                    optuna_study.fail_study(self._storage, name,
                                            f"its driver was lost {count} times (killed, or its node died, beyond "
                                            f"Ray's restarts and {MAX_RELAUNCHES} relaunches by the API)")
                    continue
                logger.warning("phasetune: study %r has no driver; relaunching it (%d of %d)", name, count,
                               MAX_RELAUNCHES)
                with self._deadline(f"the relaunch of {name!r}", call_deadline_s(self._settings)):
                    driver.launch(self._settings.storage_url, name, self._settings.results_dir)
            except Exception:  # noqa: BLE001  (the next reconciliation tries again)
                logger.exception("phasetune: the relaunch of study %r failed", name)


def main() -> None:
    """``python -m phasetune.service.ray_agent FD PARENT_PID``: the agent on the socket ``FD`` the API passed."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    channel = Channel(socket.socket(fileno=fd))
    hello: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not hello and time.monotonic() < deadline:
        hello = channel.receive(1.0)
    if not hello:
        sys.exit("phasetune: the Ray agent got no settings from the API")
    settings = Settings.model_validate(hello[0]["settings"])
    Agent(settings, channel, hello[0].get("relaunched", {})).run()


if __name__ == "__main__":
    main()
