"""Connecting the service to Ray: a configured cluster, or a local head that outlives the API process.

The head is started with ``ray start`` (a separate process tree), not ``ray.init()`` in-process, so stopping or
restarting the API never takes running studies down with it. It gets a Ray temp dir of its own (``head_dir``):
``ray start`` records "the machine's current cluster" in its temp dir, and with Ray's default one (``/tmp/ray``) it
would redirect every other program's ``ray.init()`` to phasetune's head. The same dir names exactly the head's
processes, so ``stop_local_head`` stops them and nothing else (``ray stop`` kills every Ray on the machine): an
argument must name the dir itself or a path under it, so the head on port 5236 never matches the one on 52367.

Only the Ray agent (``service/ray_agent.py``), a child process of the API, calls ``connect``: the API process never
becomes a Ray driver, which Ray's core worker may end (its raylet gone) or block (its GCS gone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phasetune.service.children import argv_of, gone, port_open
from phasetune.service.settings import Settings

logger = logging.getLogger(__name__)
HEAD_START_S = 120  # `ray start` and its GCS coming up, on a loaded 2-core machine: seconds
_AUTOSCALER_MONITOR = "autoscaler/_private/monitor.py"  # the head's autoscaler process runs this script


def gcs_answers(address: str) -> bool:
    """Whether the GCS at ``host:port`` accepts a TCP connection (within 0.5 s): a stopped head's port is closed
    at once, while Ray's own calls to it wait, retrying, for a minute."""
    host, _, port = address.rpartition(":")
    return port_open(host, int(port))


def ensure_local_head(settings: Settings) -> str:
    """The address of the local Ray head on ``settings.ray_port``, started here unless a whole one answers (its GCS
    on the port and its raylet alive: a head whose raylet was killed takes no task, so it is stopped and started
    again)."""
    address = f"127.0.0.1:{settings.ray_port}"
    if port_open("127.0.0.1", settings.ray_port) and head_raylet_alive(settings):
        return address
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={settings.ray_port}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={head_dir(settings)}"]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    if stop_local_head(settings):  # what is left of a head that died (a GCS, a raylet, workers) goes with it
        logger.warning("phasetune: the local Ray head on port %d was incomplete; starting it again", settings.ray_port)
    env = {**os.environ, **head_auth_env(settings)}
    # A session of its own: the head outlives `serve`, and a Ctrl-C to serve's terminal does not reach it.
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env, timeout=HEAD_START_S,
                   start_new_session=True)
    deadline = time.monotonic() + HEAD_START_S
    while not port_open("127.0.0.1", settings.ray_port):
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


def names_head_dir(argv: list[str], marker: str) -> bool:
    """Whether one of ``argv`` is the head dir ``marker`` or a path under it, alone or as ``--option=value``
    (``/tmp/phasetune-ray-5236`` names neither ``/tmp/phasetune-ray-52367`` nor ``.../phasetune-ray-5236x``)."""
    pattern = re.compile(rf"(?:^|=){re.escape(marker)}(?:/|$)")
    return any(pattern.search(arg) for arg in argv)


def head_pids(settings: Settings) -> set[int]:
    """The processes of the local head on ``settings.ray_port``: those that name its temp dir exactly, and their
    descendants (Ray renames its agents and workers)."""
    marker = str(head_dir(settings))
    parents = {pid: _parent(pid) for pid in _pids()}
    pids = {pid for pid in parents if pid != os.getpid() and names_head_dir(argv_of(pid), marker)}
    while grown := {pid for pid, parent in parents.items() if parent in pids} - pids:
        pids |= grown
    return {pid for pid in pids if not gone(pid)}


def head_raylet_alive(settings: Settings) -> bool:
    """Whether the local head on ``settings.ray_port`` has its raylet (a head without one runs nothing)."""
    return any(_is_raylet(pid) for pid in head_pids(settings))


def _is_raylet(pid: int) -> bool:
    argv = argv_of(pid)
    return bool(argv) and Path(argv[0]).name == "raylet"


def stop_local_head(settings: Settings, timeout: float = 10) -> int:
    """Stop the local head ``serve`` started on ``settings.ray_port`` (``head_pids``); how many processes it had.

    In the order that lets each part exit at once (measured: 0.2 s, against 10 s for SIGTERM to all at once):
    the autoscaler's monitor is killed first (it holds nothing, and its SIGTERM handler blocks reporting its own
    "failure" to drivers), then the raylet gets SIGTERM (it unregisters from a GCS still there, and its workers and
    agents exit with it), then the rest (GCS, log monitor, dashboard). Each step SIGKILLs what outlives ``timeout``.
    """
    pids = head_pids(settings)
    monitors = {pid for pid in pids if any(arg.endswith(_AUTOSCALER_MONITOR) for arg in argv_of(pid))}
    raylets = {pid for pid in pids if _is_raylet(pid)}
    _terminate(monitors, timeout, signal.SIGKILL)
    _terminate(raylets, timeout)
    _terminate(pids - monitors - raylets, timeout)
    return len(pids)


def _terminate(pids: set[int], timeout: float, first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` to ``pids``, then SIGKILL to those still there after ``timeout``; return once all are gone
    (or after a second ``timeout``)."""
    for sig in (first, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if all(gone(pid) for pid in pids):
            return


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def connect(settings: Settings) -> str:
    """Connect this process to Ray once (idempotent), starting the local head if it is the one and does not
    answer; returns the cluster address. Blocks as long as Ray does: call it where a deadline can end the process
    (the Ray agent)."""
    address = settings.ray_address or ensure_local_head(settings)
    wanted = {} if settings.ray_address else head_auth_env(settings)
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.environ.update(wanted)
        # Ray read its config (auth mode included) when it was imported: read it again, as Ray itself does when it
        # turns token auth on for a process (ray._private.authentication.authentication_token_setup).
        from ray._raylet import Config

        Config.initialize("")
    import ray  # here, not at the top: `phasetune stop-ray` imports this module and must not wait for Ray's import

    from phasetune.workers.driver import NAMESPACE

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    return address


def alive_nodes() -> list[dict[str, object]]:
    """The cluster's nodes, as its GCS knows them (alive or not, with their resources): a GCS call, no task, so a
    loaded cluster answers as fast as an idle one. It may block while the GCS is away: call it under a deadline
    that can end the process (``service/ray_agent.py``)."""
    import ray

    return [{"Alive": node.get("Alive"), "Resources": dict(node.get("Resources", {}))} for node in ray.nodes()]
