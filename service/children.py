"""Child processes that ``serve`` owns: they die with it, and what a killed ``serve`` left behind is recognised.

A child is started through ``with_lifeline``: a tiny Python prologue (this module run as ``__main__``) asks the kernel
for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then ``exec``s the real program, which keeps the
request. So a ``serve`` killed with SIGKILL (an OOM kill, ``kill -9``) leaves no dashboard holding its port and no
Ray agent launching drivers beside the next ``serve``'s. The kernel sends the signal when the *thread* that started
the child ends, so the thread that starts one must outlive it (``cmd_serve``'s main thread, the launcher's
supervisor thread). No ``preexec_fn``: it is unsafe in a process with threads (uvicorn's, the launcher's).

For a child of an older ``serve`` (or one whose parent died in the instant before its prologue ran), a pidfile records
its pid and argv: a new ``serve`` stops it only when both still match (``reclaim``), never a stranger on the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phasetune.service.settings import Settings

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DASHBOARD_START_S = 30.0  # optuna-dashboard listening after its start, on a loaded machine


class PortHeld(Exception):
    """The dashboard's port is held by a process that is not a dashboard of ours: serve refuses to start."""


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (a wildcard host: on loopback), within 0.5 s."""
    try:
        with socket.create_connection(("127.0.0.1" if host in ("", "0.0.0.0", "::") else host.strip("[]"), port),
                                      timeout=0.5):
            return True
    except OSError:
        return False


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; exit at once if it already has (this process was reparented)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def with_lifeline(argv: list[str]) -> list[str]:
    """``argv`` run so that it dies with this process (the module docstring)."""
    return [sys.executable, "-m", "phasetune.service.children", str(os.getpid()), *argv]


def argv_of(pid: int) -> list[str]:
    """The process's command line as its arguments (empty if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def record(pidfile: Path, pid: int, argv: list[str]) -> None:
    """Remember the child ``pid`` started as ``argv`` (written whole, then renamed: never read half-written)."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    partial = pidfile.with_name(pidfile.name + ".partial")
    partial.write_text(json.dumps({"pid": pid, "argv": argv}))
    partial.replace(pidfile)


def recorded(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process still runs the recorded argv, else None. A script's kernel command
    line is its interpreter then the script (``python .../optuna-dashboard ...``), so the recorded argv must end it."""
    try:
        entry = json.loads(pidfile.read_text())
        pid, argv = int(entry["pid"]), [str(arg) for arg in entry["argv"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    running = argv_of(pid)
    if not argv or len(running) < len(argv) - 1 or running[len(running) - len(argv) + 1:] != argv[1:]:
        return None
    return pid if any(Path(arg).name == Path(argv[0]).name for arg in running[:2]) else None


def reclaim(pidfile: Path, timeout: float = 10) -> int | None:
    """Stop the process ``pidfile`` records if it is still that process (SIGTERM, then SIGKILL after ``timeout``);
    its pid, or None if there was none to stop. The file goes either way."""
    pid = recorded(pidfile)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while not gone(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if gone(pid):
                break
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return pid


def start_dashboard(settings: Settings, data_dir: Path) -> tuple[subprocess.Popen[bytes] | None, int | None, str]:
    """optuna-dashboard on ``settings``' storage, as a child that dies with this process.

    A dashboard a killed ``serve`` left (the pid and argv in ``data_dir/dashboard.pid`` still match) is stopped
    first; any other process on the port is refused (``PortHeld``): the address printed must be ours. Returns the
    process (None if it exited at start), the pid of the stale dashboard stopped (or None), and its log's path.
    """
    pidfile, log_path = data_dir / "dashboard.pid", data_dir / "dashboard.log"
    host, port = settings.dashboard_host, settings.dashboard_port
    stale = reclaim(pidfile)
    deadline = time.monotonic() + 10
    while port_open(host, port) and stale is not None and time.monotonic() < deadline:
        time.sleep(0.2)  # the stale one's socket closes as it exits
    if port_open(host, port):
        raise PortHeld(f"port {port} on {host} is held by a program that is not an Optuna dashboard this phasetune "
                       f"started; free it, or set PHASETUNE_DASHBOARD_PORT to another port (or "
                       f"PHASETUNE_START_DASHBOARD=false)")
    argv = [str(Path(sys.executable).with_name("optuna-dashboard")), settings.storage_url, "--host", host,
            "--port", str(port), "--artifact-dir", settings.artifacts_dir]
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(with_lifeline(argv), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    record(pidfile, process.pid, argv)
    deadline = time.monotonic() + DASHBOARD_START_S
    while not port_open(host, port) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if process.poll() is not None:
        return None, stale, str(log_path)
    return process, stale, str(log_path)


def stop_dashboard(process: subprocess.Popen[bytes], data_dir: Path) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(FileNotFoundError):
        (data_dir / "dashboard.pid").unlink()


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie, not yet reaped by its parent, counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


if __name__ == "__main__":  # the lifeline prologue: python -m phasetune.service.children PARENT_PID ARGV...
    die_with_parent(int(sys.argv[1]))
    os.execv(sys.argv[2], sys.argv[2:])
