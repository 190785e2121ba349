"""Shared fixtures: one real Ray head per session, real storages (SQLite and PostgreSQL), a real API server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("PHASETUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in its own session, with everything it spawned."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory) -> Iterator[str]:
    """One Ray head for the whole session, on a free port (Redis holds Ray's default 6379)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"

    def up() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 90, "the Ray head")
    yield address
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stop_group(head)


@pytest.fixture(scope="session")
def ray_client(ray_address: str) -> str:
    """This test process connected to the session's Ray head."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace="phasetune", log_to_driver=False)
    return ray_address


def missing_in_ci(message: str) -> NoReturn:
    """A service a test needs is not here: skip on a developer's machine, fail under ``CI`` (a check that skipped
    in CI would pass without having run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: a missing service fails instead of skipping)")
    pytest.skip(message)


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the server at ``PHASETUNE_TEST_PG`` (dropped afterwards); its URL."""
    import sqlalchemy

    try:
        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            name = f"phasetune_test_{uuid.uuid4().hex[:10]}"
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as err:  # noqa: BLE001 (no driver, no server, refused: all mean "no PostgreSQL here")
        missing_in_ci(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {err}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty storage per test, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'phasetune.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (where SQLite is covered by another test of the same path)."""
    yield from _postgres_database()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_storage_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'phasetune.db'}"
    else:
        yield from _postgres_database()


def start_dashboard(storage_url: str, artifact_dir: str) -> tuple[subprocess.Popen, str]:
    """optuna-dashboard as a real process on ``storage_url``: its process (stop it with ``stop_group``), its URL."""
    port = free_port()
    process = subprocess.Popen([str(BIN / "optuna-dashboard"), storage_url, "--port", str(port),
                                "--artifact-dir", artifact_dir],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 60, "optuna-dashboard")
    return process, f"http://127.0.0.1:{port}"


class Server:
    """`phasetune serve` as a real process on a free port; restartable, and stopped by PID at the end."""

    def __init__(self, storage_url: str, ray_address: str, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **os.environ,
            "PHASETUNE_STORAGE_URL": storage_url,
            "PHASETUNE_RAY_ADDRESS": ray_address,
            "PHASETUNE_START_DASHBOARD": "false",
            "PHASETUNE_RESULTS_DIR": str(workdir / "ray_results"),
            "PHASETUNE_ARTIFACTS_DIR": str(workdir / "artifacts"),
            "PHASETUNE_API_URL": self.url,
            "PHASETUNE_DATA_ROOT": str(workdir / "data"),
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        log = open(self.workdir / f"api-{time.time_ns()}.log", "wb")
        self.process = subprocess.Popen(
            [str(BIN / "phasetune"), "serve", "--port", str(self.port)],
            env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, "the API process exited"
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 120, "the API")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture
def server_factory(ray_address, tmp_path) -> Iterator:
    servers: list[Server] = []

    def make(storage_url: str) -> Server:
        server = Server(storage_url, ray_address, tmp_path)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


def wait_for_status(client: httpx.Client, study_id: int, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    def done():
        study = client.get(f"/studies/{study_id}").json()
        return study if study["status"] in statuses else None

    return wait_for(done, timeout, f"study {study_id} to reach {statuses}", interval=1)


def run_probe(client: httpx.Client, body: dict, timeout: float = 300) -> dict:
    """``POST /probes`` (202: it runs on the cluster), then its record once it is no longer running."""
    created = client.post("/probes", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "running" and created.json()["result"] is None

    def finished():
        record = client.get(f"/probes/{created.json()['id']}").json()
        return record if record["status"] != "running" else None

    return wait_for(finished, timeout, f"probe {created.json()['id']}", interval=0.5)


@contextlib.contextmanager
def served_in_thread(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread of this process (real HTTP, no Ray): its URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core, at most 8 (each imports torch and opens its own storages; more buy little
    for a suite of about a thousand short tests)."""
    return min(8, os.cpu_count() or 1)
