"""Hands studies and probes to Ray through the Ray agent, a child process this module supervises, so that no Ray
event can end or freeze the API process (why a child: ``service/ray_agent.py``).

The supervisor thread starts the agent, sends it the nudges requests hand in (``launch``, ``end_if_orphaned``,
``probe``: the database already holds each study and probe, so a nudge only says "now"), reads its reports, and
starts a new agent when one exits (the cluster lost, a Ray call past its deadline) or stops reporting for
``SILENT_S`` (then it is killed: a process can be, a thread cannot). Each new agent connects, starting the local
head again if it is gone, and launches every unfinished study, which resumes from the storage.

``/health`` trusts the agent's last check of the cluster for one reconcile period: older than that, or no agent
alive, and Ray is reported down, with what was last verified and how long ago.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import optuna

from phasetune.service.ray_agent import Channel
from phasetune.service.settings import Settings
from phasetune.workers.spec import Resources
from phasetune.workers.tune_run import trial_slots

logger = logging.getLogger(__name__)
RESTART_S = 2.0  # between an agent's exit and the next one's start
SILENT_S = 20.0  # an agent silent this long (it reports every second) is killed and replaced
CLOSE_S = 3.0  # how long a closing API waits for its agent before killing it
_CLOSE = {"do": "close"}


class Launcher:
    def __init__(self, settings: Settings, storage: optuna.storages.BaseStorage) -> None:
        self._settings = settings
        self._storage = storage
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._closed = threading.Event()
        self.connected = threading.Event()  # the cluster was verified within the last reconcile period
        self.ray_error: str | None = None  # why Ray is not connected, as last known
        self.relaunched: dict[str, int] = {}  # studies whose driver reconciliation found gone: how many times
        # The cluster's nodes as last seen by the agent: requests check resources against them without a Ray call of
        # their own. None: not seen yet.
        self.nodes: list[dict[str, Any]] | None = None
        self.agent_restarts = 0
        self._report: dict[str, Any] = {}  # the agent's last report
        self._lost: str | None = None  # why the last agent ended (shown while the next one connects)
        self._agent: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="phasetune-ray-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def launch(self, study_name: str) -> None:
        """Launch this study's driver soon (after every nudge handed in before)."""
        self._outbox.put({"do": "launch", "study": study_name})

    def end_if_orphaned(self, study_name: str) -> None:
        """Soon: if the study has no driver alive, end it as stopped (nothing runs it; none may stay RUNNING)."""
        self._outbox.put({"do": "end_if_orphaned", "study": study_name})

    def run_probe(self, probe_id: int) -> None:
        """Run this stored probe soon."""
        self._outbox.put({"do": "probe", "id": probe_id})

    def close(self, timeout: float = 10) -> None:
        self._closed.set()
        self._thread.join(timeout=timeout)

    def unplaceable(self, cpu: float, gpu: float) -> str | None:
        """Why no node of the cluster, as last seen, can run one task needing ``cpu`` CPUs and ``gpu`` GPUs; None
        if one can, or if the cluster has not been seen yet."""
        if self.nodes is None:
            return None
        if trial_slots(Resources(cpu=cpu, gpu=gpu), self.nodes) > 0:
            return None
        have = [{k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")} for n in self.nodes if n["Alive"]]
        return (f"no node of the cluster has {{cpu: {cpu:g}, gpu: {gpu:g}}}; its nodes have {have} (a cluster that "
                f"gains nodes later: set PHASETUNE_WAIT_FOR_NODES=true, and studies wait, waiting_for_resources)")

    def health(self) -> dict[str, Any]:
        """What ``/health`` shows of Ray: what the agent last verified, when, and how long ago."""
        report = self._report
        verified_at = report.get("verified_at")
        agent = self._agent
        return {
            "address": report.get("address"),
            "verified_at": (datetime.fromtimestamp(verified_at, timezone.utc).isoformat()
                            if verified_at is not None else None),
            "verified_s_ago": (round(time.monotonic() - report["verified_mono"], 1)
                               if report.get("verified_mono") is not None else None),
            "trusted_for_s": self._settings.reconcile_s,
            "agent_pid": agent.pid if agent is not None and agent.poll() is None else None,
            "agent_restarts": self.agent_restarts,
        }

    # ---- the supervisor thread ----------------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._closed.is_set():
            try:
                self._run_agent()
            except Exception as err:  # noqa: BLE001  (the agent could not even start: say why, try again)
                logger.exception("phasetune: the Ray agent could not be run")
                self.ray_error = f"the Ray agent could not be run: {type(err).__name__}: {err}"
            self._set_connected(False)
            if not self._closed.is_set():
                self.agent_restarts += 1
                self._closed.wait(RESTART_S)

    def _run_agent(self) -> None:
        """Start one agent and serve it until it exits, goes silent, or the API closes."""
        ours, theirs = socket.socketpair()
        self._report = {}  # nothing of the previous agent's is trusted
        try:
            self._agent = subprocess.Popen(
                [sys.executable, "-m", "phasetune.service.ray_agent", str(theirs.fileno()), str(os.getpid())],
                # A session (so a process group) of its own: a Ctrl-C or SIGTERM to serve's group reaches serve alone,
                # which closes the agent (Ray's core worker would answer the signal with a stack dump); it dies with
                # serve anyway. (start_new_session, not process_group: that needs Python 3.11.)
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        agent, channel = self._agent, Channel(ours)
        try:
            channel.send({"settings": self._settings.model_dump(mode="json"), "relaunched": self.relaunched},
                         timeout=10)
            heard = time.monotonic()
            while not self._closed.is_set() and agent.poll() is None:
                self._send_nudges(channel)
                try:
                    reports = channel.receive(0.25)
                except (EOFError, OSError):
                    break  # it exited (or closed its end, about to): _on_exit says how
                if reports:
                    heard = time.monotonic()
                    self._on_report(reports[-1])
                elif time.monotonic() - heard > SILENT_S:
                    self.ray_error = f"the Ray agent (pid {agent.pid}) reported nothing for {SILENT_S:g} s; killed"
                    self._lost = self.ray_error
                    agent.kill()
                self._set_connected(self._fresh())
            if self._closed.is_set():
                self._stop(agent, channel)
            else:
                self._on_exit(agent)
        except OSError as err:  # the agent stopped reading (stuck) or died mid-send: a new one takes over
            self.ray_error = f"the Ray agent (pid {agent.pid}) stopped reading: {err}; killed"
            agent.kill()
        finally:
            if agent.poll() is None:
                agent.kill()
            agent.wait()
            channel.close()

    def _send_nudges(self, channel: Channel) -> None:
        while True:
            try:
                nudge = self._outbox.get_nowait()
            except queue.Empty:
                return
            channel.send(nudge, timeout=5)  # the agent's main thread reads at once; a stuck one is replaced

    def _on_report(self, report: dict[str, Any]) -> None:
        self._report = report
        self.relaunched.update(report.get("relaunched") or {})
        if report.get("nodes") is not None:
            self.nodes = report["nodes"]
        if report.get("error"):
            self.ray_error = report["error"]
        elif report.get("phase") == "connecting":
            self.ray_error = ("connecting: the Ray agent starts the local head if it is gone"
                              + (f"; before: {self._lost}" if self._lost else ""))

    def _fresh(self) -> bool:
        """Whether the cluster was verified within the last reconcile period (and no error reported since)."""
        report = self._report
        if report.get("error") or report.get("verified_mono") is None:
            return False
        age = time.monotonic() - report["verified_mono"]
        if age > self._settings.reconcile_s:
            self.ray_error = (f"the cluster was last verified {age:.0f} s ago (at {report.get('address')}); "
                              f"Ray does not answer")
            return False
        return True

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self.ray_error = None
            self.connected.set()
        else:
            self.connected.clear()

    def _on_exit(self, agent: subprocess.Popen[bytes]) -> None:
        try:
            code = agent.wait(timeout=5)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        why = self._report.get("error") if self._report.get("pid") == agent.pid else None
        self.ray_error = f"the Ray agent (pid {agent.pid}) exited ({how}){': ' + why if why else ''}; restarting it"
        self._lost = self.ray_error
        logger.warning("phasetune: %s", self.ray_error)

    def _stop(self, agent: subprocess.Popen[bytes], channel: Channel) -> None:
        try:
            channel.send(_CLOSE, timeout=1)
            agent.wait(timeout=CLOSE_S)
        except (OSError, subprocess.TimeoutExpired):
            agent.kill()
