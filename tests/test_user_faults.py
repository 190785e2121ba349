"""Faults users cause, injected into a real `phasetune serve` on a local Ray head of its own (issue 24, reproductions
1, 2 and 5): `phasetune stop-ray` (the command itself) 10 s and 60 s after serve starts, every process of the head
SIGKILLed, the raylet alone SIGKILLed, and serve itself SIGKILLed. Through each: the serve process stays alive and
answers HTTP (a watcher polls it all along), ``/health`` turns 503 naming Ray within about one reconcile period and
200 again once the head is back, and a study running across the fault and one submitted during it both complete,
nothing left RUNNING in Optuna's own view.

On the code before the Ray agent these fail: serve exited inside ``ray.shutdown()`` after its raylet died (the
watcher sees the process gone), or hung in ``_ping.remote()`` with ``/health`` 200 and the head never restarted (no
503 seen, the studies never complete).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from phasetune.service import children, ray_cluster
from phasetune.service.settings import Settings
from tests.conftest import BIN, Server, free_port, wait_for, wait_for_status
from tests.factories import ENDED, assert_budget_kept, fault_spec, submit, trials_of, wait_until_training

pytestmark = pytest.mark.slow
RECONCILE_S = 3.0
EPOCHS, N_TRIALS = 5, 2
HEAD_BACK_S = 240  # a new agent, a new head (`ray start`), the studies relaunched: on a loaded 2-core machine


class Watcher:
    """Polls ``/health`` every 0.5 s in a thread for as long as the test runs: records every answer and every
    time the API did not answer within 10 s, or its process was gone."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.answers: list[tuple[float, int, dict]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            while not self._stop.wait(0.5):
                if self.server.process.poll() is not None:
                    self.failures.append(f"the serve process exited ({self.server.process.returncode})")
                    return
                try:
                    response = client.get("/health")
                except httpx.TransportError as err:
                    if self.answers:  # before its first answer, serve is still starting
                        self.failures.append(f"{time.monotonic():.1f}: no answer: {err!r}")
                    continue
                self.answers.append((time.monotonic(), response.status_code, response.json()))

    def since(self, moment: float) -> list[tuple[float, int, dict]]:
        return [answer for answer in self.answers if answer[0] >= moment]

    def assert_alive(self) -> None:
        assert not self.failures, self.failures


def _outage(watcher: Watcher, client: httpx.Client, fault_at: float, gone_at: float, name: str) -> int:
    """A fault from ``fault_at``, the head gone by ``gone_at``: ``/health`` turns 503 naming Ray within one
    reconcile period (and the few seconds a loaded machine takes to answer); a study submitted then is stored
    (201); then ``/health`` is 200 again. Returns the id of the study submitted during the outage."""
    down = wait_for(lambda: [a for a in watcher.since(fault_at) if a[1] == 503], RECONCILE_S + 30,
                    "/health to report the lost head")[0]
    assert any(problem.startswith("ray") for problem in down[2]["problems"]), down[2]
    assert down[0] - gone_at <= RECONCILE_S + 5, f"503 only {down[0] - gone_at:.1f} s after the head was gone"
    during = submit(client, fault_spec(name, EPOCHS, N_TRIALS))
    wait_for(lambda: [a for a in watcher.since(down[0]) if a[1] == 200], HEAD_BACK_S, "/health to be 200 again")
    watcher.assert_alive()
    return during


def _complete(client: httpx.Client, storage_url: str, *study_ids: int) -> None:
    """Each study completes its budget, and Optuna's own view of it has nothing RUNNING."""
    for study_id in study_ids:
        study = wait_for_status(client, study_id, ENDED, timeout=HEAD_BACK_S + 120)
        assert_budget_kept(study, trials_of(client, study_id), N_TRIALS, EPOCHS)
        loaded = optuna.load_study(study_name=study["name"], storage=storage_url)
        assert not [t.number for t in loaded.trials if t.state == optuna.trial.TrialState.RUNNING], study["name"]


@pytest.fixture
def own_head(tmp_path: Path) -> Iterator[tuple[Settings, Server]]:
    """A serve (not started) on a local head of its own, on free ports; both are stopped at the end."""
    port = free_port()
    settings = Settings(ray_port=port)
    server = Server(f"sqlite:///{tmp_path / 'faults.db'}", "", tmp_path, PHASETUNE_RAY_PORT=str(port),
                    PHASETUNE_RAY_NUM_CPUS="2", PHASETUNE_RECONCILE_S=str(RECONCILE_S))
    try:
        yield settings, server
    finally:
        server.stop()
        ray_cluster.stop_local_head(settings)


def _popen(server: Server) -> None:
    """Start serve without waiting for it to be healthy (the first fault comes while it connects)."""
    log = open(server.workdir / f"api-{time.time_ns()}.log", "wb")  # noqa: SIM115 (kept for the process's life)
    server.process = subprocess.Popen([str(BIN / "phasetune"), "serve", "--port", str(server.port)], env=server.env,
                                      cwd=server.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_ray(settings: Settings) -> None:
    stopped = subprocess.run([str(BIN / "phasetune"), "stop-ray"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PHASETUNE_RAY_PORT": str(settings.ray_port)})
    assert stopped.returncode == 0 and "stopped the local Ray head" in stopped.stdout, (stopped.stdout, stopped.stderr)


def test_stop_ray_under_serve_10_s_and_60_s_after_it_starts(own_head):
    """Reproductions 1 and 2: `phasetune stop-ray` at 10 s (serve still starting up: its first reconcile period)
    and again at 60 s, each with a study running across it and one submitted during the outage."""
    settings, server = own_head
    started = time.monotonic()
    _popen(server)
    with Watcher(server) as watcher, server.client() as client:
        wait_for(lambda: watcher.answers, 120, "serve to answer HTTP")
        first = submit(client, fault_spec("across-10s", EPOCHS, N_TRIALS))  # stored while serve still connects
        wait_for(lambda: ray_cluster.head_pids(settings), 120, "the local head to start")
        time.sleep(max(0.0, 10 - (time.monotonic() - started)))
        fault_at = time.monotonic()
        _stop_ray(settings)
        during = _outage(watcher, client, fault_at, time.monotonic(), "during-10s")
        _complete(client, server.env["PHASETUNE_STORAGE_URL"], first, during)

        second = submit(client, fault_spec("across-60s", EPOCHS, N_TRIALS))
        wait_until_training(client, second)
        time.sleep(max(0.0, 60 - (time.monotonic() - started)))
        fault_at = time.monotonic()
        _stop_ray(settings)
        during = _outage(watcher, client, fault_at, time.monotonic(), "during-60s")
        _complete(client, server.env["PHASETUNE_STORAGE_URL"], second, during)
        watcher.assert_alive()
        agent = client.get("/health").json()["ray"]["agent_pid"]
    # SIGTERM ends serve promptly, its agent with it (the serve outlived a SIGTERM by 5 s and more).
    server.process.terminate()
    assert server.process.wait(timeout=15) is not None
    wait_for(lambda: children.gone(agent), 10, "the Ray agent to end with serve")


def test_the_head_killed_the_raylet_killed_and_serve_killed(own_head, tmp_path):
    """Every process of the head SIGKILLed; later the raylet alone (its GCS still answers: the head is started
    again whole); each with a study across it and one during. Then serve itself SIGKILLed (reproduction 5): its
    dashboard dies with it, the next serve's dashboard gets the port, and a study that ran across the kill
    completes."""
    settings, server = own_head
    dashboard_port = free_port()
    server.env.update(PHASETUNE_START_DASHBOARD="true", PHASETUNE_DASHBOARD_PORT=str(dashboard_port))
    storage_url = server.env["PHASETUNE_STORAGE_URL"]
    server.start()
    with Watcher(server) as watcher, server.client() as client:
        for fault in ("head", "raylet"):
            across = submit(client, fault_spec(f"across-{fault}", EPOCHS, N_TRIALS))
            wait_until_training(client, across)
            pids = ray_cluster.head_pids(settings)
            victims = pids if fault == "head" else {p for p in pids if Path(children.argv_of(p)[0]).name == "raylet"}
            assert victims, pids
            fault_at = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            during = _outage(watcher, client, fault_at, time.monotonic(), f"during-{fault}")
            _complete(client, storage_url, across, during)
        watcher.assert_alive()

        last = submit(client, fault_spec("across-serve-kill", EPOCHS, N_TRIALS))
        wait_until_training(client, last)
        agent = client.get("/health").json()["ray"]["agent_pid"]
    dashboard = children.recorded(tmp_path / ".phasetune" / "dashboard.pid")
    assert dashboard is not None and agent is not None and children.port_open("127.0.0.1", dashboard_port)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    wait_for(lambda: not children.port_open("127.0.0.1", dashboard_port), 30, "the dashboard to die with serve")
    wait_for(lambda: children.gone(agent), 30, "the Ray agent to die with serve")
    server.start()
    with server.client() as client:
        log = sorted(tmp_path.glob("api-*.log"))[-1].read_text()
        assert f"Optuna dashboard at http://127.0.0.1:{dashboard_port}" in log, log
        assert httpx.get(f"http://127.0.0.1:{dashboard_port}/api/studies", timeout=10).status_code == 200
        _complete(client, storage_url, last)
