"""Connecting the service to Ray: a configured cluster, or a local head that outlives the API process.

The head is started with ``ray start`` (a separate process tree), not ``ray.init()`` in-process, so stopping or
restarting the API never takes running studies down with it. It gets a Ray temp dir of its own (``head_dir``):
``ray start`` records "the machine's current cluster" in its temp dir, and with Ray's default one (``/tmp/ray``) it
would redirect every other program's ``ray.init()`` to phasetune's head. The same dir names exactly the head's
processes, so ``stop_local_head`` stops them and nothing else (``ray stop`` kills every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from phasetune.service.settings import Settings
from phasetune.workers.driver import NAMESPACE

logger = logging.getLogger(__name__)
# Ray ends a driver process whose GCS stays away this long (its default is 60 s: a `serve` that lost its head
# exited by itself). The API is a driver that must outlive its cluster: it waits, and the launcher reconnects.
GCS_WAIT = "RAY_gcs_rpc_server_reconnect_timeout_s"
GCS_WAIT_S = 10 * 365 * 24 * 3600


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_local_head(settings: Settings) -> str:
    """The address of the local Ray head on ``settings.ray_port``, started here if none answers."""
    address = f"127.0.0.1:{settings.ray_port}"
    if _port_open("127.0.0.1", settings.ray_port):
        return address
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={settings.ray_port}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={head_dir(settings)}"]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    stop_local_head(settings)  # what is left of a head that died (a raylet, its workers) goes with it
    env = {**os.environ, **head_auth_env(settings)}
    if env.get(GCS_WAIT) == str(GCS_WAIT_S):  # the API's own wait (connect), not for the head's processes
        del env[GCS_WAIT]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not _port_open("127.0.0.1", settings.ray_port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray head did not come up on {address}")
        time.sleep(0.5)
    return address


def head_auth_env(settings: Settings) -> dict[str, str]:
    """Ray's token auth for the local head (its GCS and raylets listen on every interface, whatever the node IP):
    a token of its own, in a 0600 file in its temp dir, made once. Every process of the head inherits the
    variables from ``ray start``; a process that connects to it (``connect``) sets them first."""
    token = auth_token_path(settings)
    if not token.exists():
        token.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def auth_token_path(settings: Settings) -> Path:
    return head_dir(settings) / "auth_token"


def head_dir(settings: Settings) -> Path:
    """The local head's Ray temp dir: short (Ray's socket paths must fit in 107 bytes) and one per port."""
    return Path(tempfile.gettempdir()) / f"phasetune-ray-{settings.ray_port}"


def stop_local_head(settings: Settings, timeout: float = 10) -> int:
    """Stop the local head ``serve`` started on ``settings.ray_port``: the processes that name its temp dir and
    their descendants (Ray renames agents and workers), SIGTERM then SIGKILL after ``timeout``; how many."""
    marker = str(head_dir(settings))
    parents = {pid: _parent(pid) for pid in _pids()}
    pids = {pid for pid in parents if pid != os.getpid() and marker in _cmdline(pid)}
    while grown := {pid for pid, parent in parents.items() if parent in pids} - pids:  # agents, workers: renamed
        pids |= grown
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not any(_alive(pid) for pid in pids):
            break
    return len(pids)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def connect(settings: Settings) -> str:
    """Connect this process to Ray once (idempotent); returns the cluster address."""
    address = settings.ray_address or ensure_local_head(settings)
    wanted = {GCS_WAIT: os.environ.get(GCS_WAIT, str(GCS_WAIT_S))}
    if not settings.ray_address and os.environ.get("RAY_AUTH_MODE") != "token":
        wanted.update(head_auth_env(settings))
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.environ.update(wanted)
        # Ray read its config (auth mode included) when it was imported: read it again, as Ray itself does when it
        # turns token auth on for a process (ray._private.authentication.authentication_token_setup).
        from ray._raylet import Config

        Config.initialize("")
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    return address


@ray.remote(num_cpus=0)
def _ping() -> int:
    return os.getpid()


def check_alive(timeout_s: float) -> None:
    """Raise unless the cluster this process is connected to runs a task within ``timeout_s`` (a head that died,
    or was restarted as a new cluster, never does: calls to it wait rather than fail)."""
    ray.get(_ping.remote(), timeout=timeout_s)


def disconnect() -> None:
    """Drop this process's connection (to a cluster that stopped answering), so that ``connect`` makes a new one."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001  (a connection to a dead head may fail to close; it is dropped either way)
        logger.warning("phasetune: closing the old Ray connection failed", exc_info=True)
