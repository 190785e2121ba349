"""Exact process ownership, without Ray: `phasetune stop-ray` stops the processes of its own head only (never a head
whose port merely starts with the same digits), `serve`'s children die with it, and a child a killed `serve` left
is reclaimed only when it provably is one (its recorded pid still runs its recorded argv)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phasetune.service import children, ray_cluster
from phasetune.service.settings import Settings
from tests.conftest import BIN, free_port, wait_for


def _fake_head_process(head_dir: Path) -> subprocess.Popen:
    """A process whose arguments name ``head_dir`` as a Ray head's do (``--temp-dir=DIR``, ``--log_dir=DIR/...``)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={head_dir}",
                             f"--log_dir={head_dir}/session_latest/logs"], start_new_session=True)


def test_names_head_dir_is_exact():
    marker = "/tmp/phasetune-ray-5236"
    assert ray_cluster.names_head_dir(["gcs_server", f"--log_dir={marker}/session_1/logs"], marker)
    assert ray_cluster.names_head_dir(["python", marker], marker)
    assert ray_cluster.names_head_dir(["python", f"--temp-dir={marker}"], marker)
    for other in (f"--temp-dir={marker}7", f"--log_dir={marker}7/session_1/logs", f"{marker}x", f"/x{marker}"):
        assert not ray_cluster.names_head_dir(["python", other], marker), other


def test_stop_ray_for_5236_leaves_the_head_on_52367(tmp_path, monkeypatch):
    """Reproduction 4 of issue 24: the head dir of port 5236 is a prefix of port 52367's, and `stop-ray` for 5236
    killed 52367's GCS. The real CLI, with a temp dir of this test's own (TMPDIR), against two fake heads."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # head_dir() of this process, as of the CLI's below
    ours, theirs = Settings(ray_port=5236), Settings(ray_port=52367)
    mine, other = _fake_head_process(ray_cluster.head_dir(ours)), _fake_head_process(ray_cluster.head_dir(theirs))
    try:
        wait_for(lambda: ray_cluster.head_pids(ours) and ray_cluster.head_pids(theirs), 10, "the fake heads")
        assert ray_cluster.head_pids(ours) == {mine.pid} and ray_cluster.head_pids(theirs) == {other.pid}
        stopped = subprocess.run([str(BIN / "phasetune"), "stop-ray"], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PHASETUNE_RAY_PORT": "5236", "TMPDIR": str(tmp_path)})
        assert stopped.returncode == 0, stopped.stderr
        assert "(1 processes)" in stopped.stdout, stopped.stdout
        assert mine.wait(timeout=10) is not None
        assert other.poll() is None, "stop-ray for port 5236 killed the head on port 52367"
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


def test_a_lifeline_child_dies_with_its_parent(tmp_path):
    """A child started through ``with_lifeline`` (as serve starts the dashboard) dies when its parent is SIGKILLed;
    without it, the same child outlives the parent (reproduction 5: the orphaned dashboard kept its port)."""
    code = ("import subprocess, sys, time\n"
            "from phasetune.service.children import with_lifeline\n"
            "argv = ['/bin/sleep', '120']\n"
            "child = subprocess.Popen(with_lifeline(argv) if sys.argv[1] == 'lifeline' else argv)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n")
    for mode, survives in (("lifeline", False), ("plain", True)):
        parent = subprocess.Popen([sys.executable, "-c", code, mode], stdout=subprocess.PIPE, text=True)
        child = int(parent.stdout.readline())
        wait_for(lambda: children.argv_of(child)[:1] == ["/bin/sleep"], 10, "the child to exec")  # noqa: B023
        parent.kill()
        parent.wait()
        try:
            if survives:
                time.sleep(1)
                assert children.argv_of(child) == ["/bin/sleep", "120"], "the plain child died: the test proves nothing"
            else:
                wait_for(lambda: children.gone(child), 10,  # noqa: B023
                         "the lifeline child to die with its parent")
        finally:
            if children.argv_of(child):
                os.kill(child, signal.SIGKILL)


def test_reclaim_stops_only_the_recorded_process(tmp_path):
    """A pidfile whose process still runs its recorded argv is reclaimed (stopped); one whose pid now runs
    something else is not (a stranger that reused the pid)."""
    pidfile = tmp_path / "dashboard.pid"
    sleeper = subprocess.Popen(["/bin/sleep", "120"], start_new_session=True)
    stranger = subprocess.Popen(["/bin/sleep", "121"], start_new_session=True)
    try:
        children.record(pidfile, stranger.pid, ["/bin/sleep", "120"])  # recorded argv is not what that pid runs
        assert children.reclaim(pidfile) is None and stranger.poll() is None and not pidfile.exists()
        children.record(pidfile, sleeper.pid, ["/bin/sleep", "120"])
        assert children.reclaim(pidfile) == sleeper.pid
        assert sleeper.wait(timeout=10) is not None
    finally:
        for process in (sleeper, stranger):
            process.kill()
            process.wait()


@pytest.mark.slow  # runs `phasetune serve`
def test_serve_refuses_a_dashboard_port_a_stranger_holds(tmp_path):
    """A port held by a process that is no dashboard of ours: `serve` exits saying so (it would otherwise print an
    address that is someone else's), and starts nothing."""
    port = free_port()
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        env = {**os.environ, "PHASETUNE_STORAGE_URL": f"sqlite:///{tmp_path / 'p.db'}",
               "PHASETUNE_DASHBOARD_PORT": str(port), "PHASETUNE_RAY_PORT": str(free_port())}
        served = subprocess.run([str(BIN / "phasetune"), "serve", "--port", str(free_port())], capture_output=True,
                                text=True, timeout=120, env=env, cwd=tmp_path)
    assert served.returncode != 0
    assert f"port {port}" in served.stderr and "PHASETUNE_DASHBOARD_PORT" in served.stderr, served.stderr


@pytest.mark.slow
def test_a_stale_dashboard_is_reclaimed_and_a_new_one_serves(tmp_path):
    """A dashboard left by a killed serve of an older version (recorded, not a lifeline child): the next start stops
    it, says so, and its own dashboard answers on the port."""
    import httpx

    from phasetune.service.db import migrate

    port = free_port()
    settings = Settings(storage_url=f"sqlite:///{tmp_path / 'p.db'}", dashboard_port=port,
                        artifacts_dir=str(tmp_path / "artifacts"))
    migrate(settings.storage_url)  # as serve does before it starts the dashboard
    argv = [str(BIN / "optuna-dashboard"), settings.storage_url, "--host", "127.0.0.1", "--port", str(port),
            "--artifact-dir", settings.artifacts_dir]
    stale = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = None
    try:
        children.record(tmp_path / "dashboard.pid", stale.pid, argv)
        wait_for(lambda: children.port_open("127.0.0.1", port), 60, "the stale dashboard")
        process, reclaimed, _ = children.start_dashboard(settings, tmp_path)
        assert reclaimed == stale.pid and stale.wait(timeout=10) is not None
        assert process is not None and process.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=10).status_code == 200
        assert children.recorded(tmp_path / "dashboard.pid") == process.pid
    finally:
        stale.kill()
        if process is not None:
            children.stop_dashboard(process, tmp_path)
