"""Connecting the service to Ray: a configured cluster, or a local head that outlives the API process.

The head is started with ``ray start`` (a separate process tree), not ``ray.init()`` in-process, so stopping or
restarting the API never takes running studies down with it.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import ray

from service.settings import Settings
from workers.driver import NAMESPACE


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
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _port_open("127.0.0.1", settings.ray_port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray head did not come up on {address}")
        time.sleep(0.5)
    return address


def connect(settings: Settings) -> str:
    """Connect this process to Ray once (idempotent); returns the cluster address."""
    address = settings.ray_address or ensure_local_head(settings)
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    return address
