"""The local Ray head `serve` starts: it leaves the machine's default Ray address alone, and `phasetune stop-ray`
stops it and nothing else (`ray stop` would kill every Ray on the machine, the test session's own head included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from phasetune.service import children, ray_cluster
from phasetune.service.settings import Settings
from tests.conftest import BIN, free_port

pytestmark = pytest.mark.slow
DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # what a bare `ray.init()` on this machine reads


def _default_address() -> str:
    return DEFAULT_ADDRESS_FILE.read_text() if DEFAULT_ADDRESS_FILE.exists() else ""


def _up(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_local_head_keeps_to_itself_and_stop_ray_stops_only_it(ray_address):
    port = free_port()
    settings = Settings(ray_port=port, start_dashboard=False)
    try:
        assert ray_cluster.ensure_local_head(settings) == f"127.0.0.1:{port}"
        # Other programs' `ray.init()` still finds their own cluster, not this head.
        assert not _default_address().strip().endswith(f":{port}")
        assert (ray_cluster.head_dir(settings) / "ray_current_cluster").exists()
        stopped = subprocess.run([str(BIN / "phasetune"), "stop-ray"], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PHASETUNE_RAY_PORT": str(port)}, timeout=120)
        assert "stopped the local Ray head" in stopped.stdout and not _up(port)
        assert not ray_cluster.head_pids(settings)
        assert _up(int(ray_address.rsplit(":", 1)[1]))  # the session's own head is untouched
        again = subprocess.run([str(BIN / "phasetune"), "stop-ray"], capture_output=True, text=True, check=True,
                               env={**os.environ, "PHASETUNE_RAY_PORT": str(port)}, timeout=60)
        assert "no local Ray head" in again.stdout
    finally:
        ray_cluster.stop_local_head(settings)


def test_a_head_stops_on_sigterm_but_for_the_autoscalers_monitor(monkeypatch):
    """In ``stop_local_head``'s order every part of a whole head exits on SIGTERM, without waiting out the timeout
    for SIGKILL: only the autoscaler's monitor, which outlives SIGTERM, is killed (and first). SIGTERM to all at
    once left the raylet waiting on the GCS, and the monitor, until the SIGKILL 10 s later."""
    settings = Settings(ray_port=free_port(), start_dashboard=False)
    sent: list[tuple[int, signal.Signals]] = []
    kill = os.kill

    def recorded(pid: int, sig: signal.Signals) -> None:
        sent.append((pid, sig))
        kill(pid, sig)

    try:
        ray_cluster.ensure_local_head(settings)
        pids = ray_cluster.head_pids(settings)
        monitors = {pid for pid in pids if any(a.endswith("autoscaler/_private/monitor.py")
                                                for a in children.argv_of(pid))}
        assert len(monitors) == 1 and len(pids) >= 4, pids
        monkeypatch.setattr(ray_cluster.os, "kill", recorded)
        assert ray_cluster.stop_local_head(settings, timeout=60) == len(pids)
        assert {pid for pid, _ in sent} == pids and not ray_cluster.head_pids(settings)
        killed = {pid for pid, sig in sent if sig == signal.SIGKILL}
        assert killed == monitors and sent[0] == (monitors.pop(), signal.SIGKILL), sent
    finally:
        monkeypatch.undo()
        ray_cluster.stop_local_head(settings)


def test_serve_on_its_own_head_uses_ray_token_auth(tmp_path):
    """The head `serve` starts listens on every interface (Ray's GCS and raylets do, whatever the node IP), so it
    requires Ray's token auth: a plain `ray.init` to it is refused, while the API, its drivers and trials, holding
    the head's token, run a study to the end."""
    import sys

    from tests.conftest import Server, wait_for_status
    from tests.factories import small_spec

    port = free_port()
    settings = Settings(ray_port=port, start_dashboard=False)
    server = Server(f"sqlite:///{tmp_path / 'auth.db'}", "", tmp_path, PHASETUNE_RAY_PORT=str(port),
                    PHASETUNE_RAY_NUM_CPUS="2")
    try:
        server.start()
        with server.client() as client:
            created = client.post("/studies", json=small_spec("on-its-own-head", epochs=3, n_trials=2,
                                                                  schedule={"family": "constant", "lr": 0.1}))
            assert created.status_code == 201, created.text
            study = wait_for_status(client, created.json()["id"], ("completed", "failed", "stopped"))
        assert study["status"] == "completed" and study["trial_counts"] == {"COMPLETE": 2}, study
        token = ray_cluster.auth_token_path(settings)
        assert token.stat().st_mode & 0o777 == 0o600
        code = f"import ray; ray.init(address='127.0.0.1:{port}'); print(ray.get(ray.remote(lambda: 6 * 7).remote()))"
        plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=plain)
        assert refused.returncode != 0 and "token" in refused.stderr.lower(), refused.stderr[-2000:]
        allowed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                 env={**plain, **ray_cluster.head_auth_env(settings)})
        assert allowed.returncode == 0 and allowed.stdout.strip().endswith("42"), allowed.stderr[-2000:]
    finally:
        server.stop()
        ray_cluster.stop_local_head(settings)
