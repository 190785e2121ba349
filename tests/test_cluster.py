"""The docker-compose cluster, run as plain processes: the same entrypoint scripts the containers run.

PostgreSQL (conftest's ``postgres_url``: a fresh database per test), a Ray head, a second Ray node that joins it,
the API and optuna-dashboard, each on its own free port on 127.0.0.1. Studies submitted over HTTP must run their
trials on either Ray node, and their trials must read back the same from PostgreSQL (``optuna.load_study``) and
from the dashboard's HTTP API. Everything started here is stopped by PID (the process tree of each entrypoint) even on
failure; Ray instances that other people run on this machine are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINTS = REPO / "docker" / "entrypoints"
BIN = Path(sys.executable).parent  # the venv's ray, phasetune and optuna-dashboard
TERMINAL = ("completed", "failed", "stopped")


def free_port() -> int:
    """A free TCP port from the ephemeral range (outside Ray's worker port range 10002-19999)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------------------------------
# Processes: every entrypoint starts in its own session; stopping one kills its whole tree by PID.


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[3]))  # ppid, session
    return table


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and every process still in the session ``root`` leads (orphans included)."""
    table = _proc_table()
    found = {pid for pid, (_, sid) in table.items() if sid == root}
    if root in table:
        found.add(root)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Processes:
    """The processes a test started, by role; each is the leader of its own session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[str, set[int]] = {}  # every PID ever seen in a role's tree

    def start(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.workdir / f"{role}.log", "wb")  # noqa: SIM115 (closed when the process ends)
        proc = subprocess.Popen(command, env=env, cwd=self.workdir, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[role] = proc
        self.seen[role] = {proc.pid}
        return proc

    def tree(self, role: str) -> set[int]:
        pids = process_tree(self.procs[role].pid)
        self.seen[role] |= pids
        return pids

    def log(self, role: str, tail: int = 4000) -> str:
        path = self.workdir / f"{role}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {role} -----\n{self.log(role)}" for role in self.procs)

    def kill(self, role: str, grace: float = 10.0) -> None:
        """SIGTERM the entrypoint's process, then SIGKILL whatever of its tree is left after ``grace``."""
        proc = self.procs[role]
        pids = self.tree(role)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        pids |= self.tree(role)
        _signal_all({p for p in self.seen[role] if _alive(p)} | pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def hard_kill(self, role: str) -> None:
        """SIGKILL the whole tree at once: a node that dies, not one that is stopped."""
        pids = self.tree(role)
        _signal_all(pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[role].wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in self.tree(role)):
            _signal_all(self.tree(role), signal.SIGKILL)
            time.sleep(0.2)

    def stop_all(self) -> list[int]:
        """Stop every role, last started first; returns the PIDs that survived (should be none)."""
        for role in reversed(list(self.procs)):
            self.kill(role)
        time.sleep(1)
        left = {p for role in self.procs for p in self.seen[role] | self.tree(role) if _alive(p)}
        _signal_all(left, signal.SIGKILL)
        return sorted(p for p in left if _alive(p))


# --------------------------------------------------------------------------------------------------------------
# Fixtures


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PHASETUNE_", "RAY_")) and k not in ("PYTHONPATH",)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "3"  # stop nodes fast at teardown
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Cluster:
    def __init__(self, procs: Processes, storage_url: str, workdir: Path) -> None:
        self.procs = procs
        self.storage_url = storage_url
        self.workdir = workdir
        self.gcs_port = free_port()
        self.api_port = free_port()
        self.dashboard_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.ray_address = f"127.0.0.1:{self.gcs_port}"
        self.node_dirs: dict[str, Path] = {}
        self.killed: set[str] = set()  # roles a test killed on purpose

    def service_env(self) -> dict[str, str]:
        env = _base_env()
        env.update({
            "PHASETUNE_STORAGE_URL": self.storage_url,
            "PHASETUNE_RAY_ADDRESS": self.ray_address,
            "PHASETUNE_START_DASHBOARD": "false",
            "PHASETUNE_DASHBOARD_URL": self.dashboard_url,
            "PHASETUNE_RESULTS_DIR": str(self.workdir / "ray_results"),
            "PHASETUNE_RAY_AUTH_TOKEN_FILE": str(self.token_file),  # as docker-compose.yml sets it
        })
        return env

    @property
    def token_file(self) -> Path:
        return self.workdir / "ray-auth" / "auth_token"

    def ray_env(self, with_token: bool = True) -> dict[str, str]:
        """A plain process's env for talking to our cluster: with its Ray token, or (to be refused) without."""
        env = _base_env()
        if with_token:
            env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)})
        return env

    def node_env(self, role: str) -> dict[str, str]:
        temp = Path(tempfile.mkdtemp(prefix=f"{role[:1]}", dir=self.workdir))  # Ray's socket paths stay short
        self.node_dirs[role] = temp
        env = self.service_env()
        env.update({
            "PHASETUNE_NODE_NUM_CPUS": "1",
            "PHASETUNE_NODE_NUM_GPUS": "0",
            "PHASETUNE_RAY_OBJECT_STORE_MEMORY": str(200 * 1024 * 1024),
            "PHASETUNE_RAY_TEMP_DIR": str(temp),
            # Fixed ports whose Ray defaults two nodes on one machine (or another Ray here) would share.
            "PHASETUNE_RAY_DASHBOARD_PORT": str(free_port()),
            "PHASETUNE_RAY_DASHBOARD_AGENT_LISTEN_PORT": str(free_port()),
            "PHASETUNE_RAY_WAIT_SECONDS": "60",
        })
        return env

    def migrate(self) -> None:
        for _ in range(2):  # idempotent
            done = subprocess.run([str(ENTRYPOINTS / "migrate.sh")], env=self.service_env(), cwd=self.workdir,
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"migrate.sh failed:\n{done.stdout}\n{done.stderr}"

    def start_head(self) -> None:
        env = self.node_env("ray-head")
        env["PHASETUNE_RAY_PORT"] = str(self.gcs_port)
        self.procs.start("ray-head", [str(ENTRYPOINTS / "ray-head.sh")], env)
        self._wait(lambda: port_open(self.gcs_port), 90, "ray-head", "the Ray head's GCS port")

    def start_worker(self) -> None:
        self.procs.start("ray-worker", [str(ENTRYPOINTS / "ray-worker.sh")], self.node_env("ray-worker"))
        self._wait(lambda: len(self.node_ids()) >= 2, 90, "ray-worker", "the second Ray node to join")

    def start_api(self) -> None:
        # As in docker-compose.yml, the API joins the cluster as a Ray node with no CPUs (its driver's raylet).
        env = self.node_env("api")
        env.update({"PHASETUNE_API_HOST": "127.0.0.1", "PHASETUNE_API_PORT": str(self.api_port),
                    "PHASETUNE_API_JOIN_RAY": "true"})
        self.procs.start("api", [str(ENTRYPOINTS / "api.sh")], env)
        self._wait(lambda: self._ok(f"{self.api_url}/health"), 180, "api", "the API's /health")

    def start_dashboard(self) -> None:
        env = self.service_env()
        env.update({"PHASETUNE_DASHBOARD_HOST": "127.0.0.1", "PHASETUNE_DASHBOARD_PORT": str(self.dashboard_port)})
        self.procs.start("dashboard", [str(ENTRYPOINTS / "dashboard.sh")], env)
        self._wait(lambda: self._ok(f"{self.dashboard_url}/api/meta"), 90, "dashboard", "the dashboard")

    def start_all(self) -> None:
        self.migrate()
        self.start_head()
        self.start_worker()
        self.start_api()
        self.start_dashboard()

    def node_id(self, role: str) -> str:
        """The Ray node ID of a node we started: the raylet writes it into its session's logs."""
        for path in sorted(self.node_dirs[role].glob("session_*/logs/raylet.out")):
            for line in path.read_text(errors="replace").splitlines():
                if "node id" in line.lower() or "node_id" in line.lower():
                    for token in line.replace(",", " ").replace("=", " ").split():
                        if len(token) == 56 and all(c in "0123456789abcdef" for c in token):
                            return token
        raise AssertionError(f"no node id in {self.node_dirs[role]}'s raylet.out")

    @contextlib.contextmanager
    def cpu_held(self, role: str) -> Iterator[None]:
        """Node ``role``'s one CPU taken by an actor of another Ray driver, so that no trial can be placed there
        (Ray's resource accounting guarantees it) until the block ends and the driver is stopped."""
        node = self.node_id(role)
        code = ("import ray, threading\n"
                "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy\n"
                f"ray.init(address='{self.ray_address}', log_to_driver=False)\n"
                "@ray.remote(num_cpus=1)\n"
                "class Hold:\n"
                "    def node(self):\n"
                "        return ray.get_runtime_context().get_node_id()\n"
                f"held = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy('{node}', soft=False))"
                ".remote()\n"
                "print('held', ray.get(held.node.remote(), timeout=180), flush=True)\n"
                "threading.Event().wait()\n")
        holder = f"hold-{role}"
        self.procs.start(holder, [sys.executable, "-c", code], self.ray_env())
        self._wait(lambda: f"held {node}" in self.procs.log(holder, tail=10**6), 240, holder,
                   f"an actor holding {role}'s CPU")
        try:
            yield
        finally:
            self.killed.add(holder)
            self.procs.kill(holder)

    def node_ids(self) -> set[str]:
        """IDs of the alive nodes of our cluster, asked of its GCS (from a separate process: this one stays no
        Ray driver)."""
        code = ("from ray._raylet import GcsClient\n"
                f"c = GcsClient(address='{self.ray_address}')\n"
                "for n in c.get_all_node_info(timeout=5).values():\n"
                "    print(n.node_id.hex(), n.state)\n")
        done = subprocess.run([sys.executable, "-c", code], env=self.ray_env(), capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            return set()
        return {line.split()[0] for line in done.stdout.splitlines() if line.split()[-1] in ("0", "ALIVE")}

    def _ok(self, url: str) -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, ready: Any, timeout: float, role: str, what: str) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs.procs[role]
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{role} exited ({proc.returncode}) before {what} was up:\n{self.procs.log(role)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not up after {timeout}s:\n{self.procs.log(role)}")
            time.sleep(1)

    # -- the API

    def submit(self, spec: dict[str, Any]) -> int:
        response = httpx.post(f"{self.api_url}/studies", json=spec, timeout=120)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["name"] == spec["name"]
        return body["id"]

    def study(self, study_id: int) -> dict[str, Any]:
        response = httpx.get(f"{self.api_url}/studies/{study_id}", timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def trials(self, study_id: int) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.api_url}/studies/{study_id}/trials", timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_done(self, study_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            study = self.study(study_id)
            if study["status"] in TERMINAL:
                return study
            for role, proc in self.procs.procs.items():
                assert role in self.killed or proc.poll() is None, (
                    f"{role} died during the study:\n{self.procs.log(role)}")
            assert time.monotonic() < deadline, f"study not done after {timeout}s: {study}\n{self.procs.logs()}"
            time.sleep(2)


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="ptc-", dir="/tmp"))
    procs = Processes(workdir)
    cluster = Cluster(procs, postgres_url, workdir)
    failed = True
    try:
        cluster.start_all()
        yield cluster
        failed = False
    finally:
        left = procs.stop_all()
        if failed or left:
            print(procs.logs())  # noqa: T201 (shown by pytest on failure)
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"processes left running after teardown: {left}"


def spec(name: str, n_trials: int, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "workload": {"name": "quadratic", "params": {}},
        "epochs": epochs,
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "schedule": {"family": "constant", "lr": {"low": 0.01, "high": 1.0, "log": True}},
        "n_trials": n_trials,
        "max_concurrent_trials": 2,
        "sampler": {"name": "random", "seed": 0},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }


# --------------------------------------------------------------------------------------------------------------


def test_study_runs_on_both_nodes(cluster: Cluster) -> None:
    """Trials go wherever the cluster has room, on either node. Each node offers one CPU and a trial needs one, so
    with one node's CPU held by another driver every trial must run on the other: that placement is what Ray
    guarantees, where "two concurrent trials land on two nodes" is a race a loaded machine loses (one node may take
    every trial if each ends before the next is placed)."""
    import optuna

    head_id, worker_id = cluster.node_id("ray-head"), cluster.node_id("ray-worker")
    assert head_id != worker_id
    # The API's own node (no CPUs) is the third one; trials can only run on the other two.
    assert {head_id, worker_id} < cluster.node_ids()
    assert len(cluster.node_ids()) == 3
    # Ray's token auth: a client without the cluster's token is refused (with it, node_ids above got through).
    assert cluster.token_file.stat().st_mode & 0o777 == 0o600
    code = f"import ray; ray.init(address='{cluster.ray_address}'); print(ray.get(ray.remote(lambda: 1).remote()))"
    refused = subprocess.run([sys.executable, "-c", code], env=cluster.ray_env(with_token=False),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "token" in refused.stderr.lower(), refused.stderr[-2000:]

    ran_on: dict[str, list[str | None]] = {}
    for name, held, free in (("cluster-on-worker", "ray-head", worker_id), ("cluster-test", "ray-worker", head_id)):
        with cluster.cpu_held(held):
            study_id = cluster.submit(spec(name, n_trials=2, epochs=3))
            study = cluster.wait_done(study_id, timeout=600)
        assert study["status"] == "completed", study
        assert study["trial_counts"] == {"COMPLETE": 2}, study
        assert study["best_trial"] is not None
        # Over the API: every trial ran on the node with room.
        trials = sorted(cluster.trials(study_id), key=lambda t: t["number"])
        ran_on[name] = [t["user_attrs"].get("ray_node_id") for t in trials]
        assert ran_on[name] == [free, free], (held, ran_on)
        # Both nodes run on this machine (Ray advertises its interface address, not 127.0.0.1).
        assert len({t["user_attrs"].get("ray_node_ip") for t in trials}) == 1

        # From PostgreSQL, through Optuna.
        loaded = optuna.load_study(study_name=name, storage=cluster.storage_url)
        stored = sorted(loaded.get_trials(deepcopy=False), key=lambda t: t.number)
        assert [t.state for t in stored] == [optuna.trial.TrialState.COMPLETE] * 2
        assert [t.user_attrs["ray_node_id"] for t in stored] == ran_on[name]
        assert [t.value for t in stored] == pytest.approx([t["value"] for t in trials])

        # Through the dashboard's HTTP API, on the same storage.
        summaries = httpx.get(f"{cluster.dashboard_url}/api/studies", timeout=60).json()["study_summaries"]
        dash_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
        detail = httpx.get(f"{cluster.dashboard_url}/api/studies/{dash_id}", timeout=60).json()
        dash_trials = sorted(detail["trials"], key=lambda t: t["number"])
        assert [t["state"] for t in dash_trials] == ["Complete"] * 2
        assert [{a["key"]: a["value"] for a in t["user_attrs"]}["ray_node_id"] for t in dash_trials] == ran_on[name]


def test_losing_a_node_does_not_lose_the_study(cluster: Cluster) -> None:
    """SIGKILL the second node's whole process tree while it runs a trial: the study still completes on the head,
    the lost trial is retried elsewhere or marked failed, and no trial stays RUNNING."""
    import optuna

    head_id, worker_id = cluster.node_id("ray-head"), cluster.node_id("ray-worker")
    n_trials = 6
    study_id = cluster.submit(spec("cluster-kill", n_trials=n_trials, epochs=40))

    # Wait until the worker node is busy with a trial of the study (it has reported an epoch), then kill it.
    deadline = time.monotonic() + 300
    while True:
        trials = cluster.trials(study_id)
        victims = [t["number"] for t in trials
                   if t["state"] == "RUNNING" and t["user_attrs"].get("ray_node_id") == worker_id]
        if victims:
            break
        assert cluster.study(study_id)["status"] not in TERMINAL, f"no trial ran on the worker: {trials}"
        assert time.monotonic() < deadline, f"no trial ran on the worker in time: {trials}"
        time.sleep(0.3)
    cluster.killed.add("ray-worker")
    cluster.procs.hard_kill("ray-worker")
    assert not any(_alive(p) for p in cluster.procs.tree("ray-worker"))

    # The head alone finishes the study.
    study = cluster.wait_done(study_id, timeout=600)
    trials = cluster.trials(study_id)
    print("after the kill:", study["trial_counts"],  # noqa: T201 (context for -s / failures)
          [(t["number"], t["state"], "worker" if t["user_attrs"].get("ray_node_id") == worker_id else "head")
           for t in trials])
    assert study["status"] == "completed", study
    counts = study["trial_counts"]
    assert "RUNNING" not in counts, counts
    assert set(counts) <= {"COMPLETE", "FAIL"}, counts
    assert sum(counts.values()) >= n_trials, counts
    assert counts.get("COMPLETE", 0) >= 1, counts
    # The trial the node was running ended one way or the other, and the head ran trials after the kill.
    by_number = {t["number"]: t for t in trials}
    assert all(by_number[n]["state"] in ("COMPLETE", "FAIL") for n in victims)
    assert any(t["state"] == "COMPLETE" and t["user_attrs"].get("ray_node_id") == head_id
               and t["number"] > max(victims) for t in trials), trials

    stored = optuna.load_study(study_name="cluster-kill", storage=cluster.storage_url).get_trials(deepcopy=False)
    assert not [t.number for t in stored if t.state == optuna.trial.TrialState.RUNNING]
    assert {t.state for t in stored} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}
