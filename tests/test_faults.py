"""Faults injected into real processes mid-study: the driver actor's process SIGKILLed, a trial's worker process
SIGKILLed, the PostgreSQL server restarted. Each study must still end ``completed`` with its full budget, nothing
left RUNNING and no result lost."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from tests.conftest import free_port, wait_for, wait_for_status
from tests.test_api_fast import small_spec

pytestmark = pytest.mark.slow

ENDED = ("completed", "failed", "stopped")


def _spec(name: str, epochs: int, n_trials: int) -> dict:
    """ps10 with a constant schedule, 2 trials at once: a trial of a few seconds, long enough to be hit while it
    runs."""
    return small_spec(name, epochs=epochs, n_trials=n_trials,
                      schedule={"family": "constant", "lr": {"low": 0.01, "high": 0.1, "log": True}, "momentum": 0.9},
                      workload={"name": "ps10", "params": {"n_train": 2000, "n_val": 500}})


def _submit(client: httpx.Client, spec: dict) -> int:
    created = client.post("/studies", json=spec)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _trials(client: httpx.Client, study_id: int, history: bool = True) -> list[dict]:
    response = client.get(f"/studies/{study_id}/trials", params={"limit": 1000, "history": str(history).lower()})
    assert response.status_code == 200, response.text
    return response.json()


def _training(client: httpx.Client, study_id: int) -> list[dict]:
    """RUNNING trials that have reported their first epoch (so a worker process really trains them)."""
    return [t for t in _trials(client, study_id, history=False)
            if t["state"] == "RUNNING" and t["user_attrs"].get("worker")]


def _assert_budget_kept(study: dict, trials: list[dict], n_trials: int, epochs: int) -> list[dict]:
    """The study completed its budget: nothing RUNNING, every trial number once, the trials the sweeper failed
    (the crash's victims, ``phasetune_swept``) aside exactly ``n_trials``, and every COMPLETE trial with its value
    and one record per epoch. Returns the swept trials."""
    assert study["status"] == "completed", study.get("error")
    assert study["trial_counts"].get("RUNNING", 0) == 0, study["trial_counts"]
    numbers = [t["number"] for t in trials]
    assert numbers == list(range(len(trials))), numbers  # none twice, none missing
    swept = [t for t in trials if t["user_attrs"].get("phasetune_swept")]
    assert all(t["state"] == "FAIL" for t in swept), swept
    counted = [t for t in trials if not t["user_attrs"].get("phasetune_swept")]
    assert len(counted) == n_trials, ([(t["number"], t["state"]) for t in trials], n_trials)
    assert sum(study["trial_counts"].values()) == len(trials)
    for trial in trials:
        assert trial["state"] in ("COMPLETE", "FAIL", "PRUNED"), trial["state"]
        if trial["state"] == "COMPLETE":
            assert trial["value"] is not None, trial["number"]
            assert [m["epoch"] for m in trial["metrics"]] == list(range(epochs)), (trial["number"], trial["metrics"])
            assert len(trial["user_attrs"]["realized_lr"]) == epochs
    return swept


def _assert_optuna_agrees(storage_url: str, name: str, trials: list[dict], epochs: int) -> None:
    """Optuna's own view: nothing RUNNING, and each COMPLETE trial has one intermediate value per epoch."""
    loaded = optuna.load_study(study_name=name, storage=storage_url)
    assert [t.number for t in loaded.trials] == [t["number"] for t in trials]
    for frozen in loaded.trials:
        assert frozen.state != optuna.trial.TrialState.RUNNING, frozen.number
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(frozen.intermediate_values) == list(range(epochs)), frozen.number
            assert frozen.value is not None


# ---- 1. the driver actor's process SIGKILLed --------------------------------------------------------------------


def _driver_pid(storage_url: str, name: str) -> int:
    """The OS process of the study's driver actor (asked of the actor itself: it serves 4 calls at once)."""
    import ray

    from phasetune.workers.driver import find_driver

    driver = wait_for(lambda: find_driver(storage_url, name), 60, "the study's driver")
    return ray.get(driver.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)


def test_a_driver_killed_with_sigkill_is_restarted_and_completes_the_budget(storage_url, server_factory, ray_client):
    """SIGKILL to the driver actor's process while its trials train (no ``ray.kill``: the process just dies, as on
    an OOM kill): Ray restarts the actor, its successor sweeps the trials left RUNNING and runs what is left of the
    budget, so the study completes with exactly ``n_trials`` counted trials."""
    name, epochs, n_trials = "driver-sigkill", 6, 4
    server = server_factory(storage_url)
    with server.client() as client:
        study_id = _submit(client, _spec(name, epochs, n_trials))
        wait_for(lambda: _training(client, study_id), 120, "a trial training", interval=0.3)
        os.kill(_driver_pid(storage_url, name), signal.SIGKILL)
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = _trials(client, study_id)
        relaunched = client.get("/health").json()["relaunched_drivers"]
    swept = _assert_budget_kept(study, trials, n_trials, epochs)
    assert swept, "nothing was RUNNING when the driver died: the kill missed the study"
    assert relaunched == {}, relaunched  # Ray restarted it (max_restarts), not the API's reconciliation
    _assert_optuna_agrees(storage_url, name, trials, epochs)


# ---- 2. a trial's worker process SIGKILLed ----------------------------------------------------------------------


def test_a_trial_whose_worker_is_killed_is_retried_or_fails_with_a_reason(tmp_path, server_factory):
    """SIGKILL to the worker process training a trial (its pid is the ``worker`` attr the trial records at its
    first epoch): Tune sees the actor die and retries the trial in a new process (it then completes, its curve
    restarted, not mixed with the dead run's) or, once retries run out, it ends FAIL with the reason. The study
    completes; nothing is swept, since the driver lived."""
    name, epochs, n_trials = "worker-sigkill", 10, 3
    storage_url = f"sqlite:///{tmp_path / 'faults.db'}"
    server = server_factory(storage_url)
    with server.client() as client:
        study_id = _submit(client, _spec(name, epochs, n_trials))
        victim = wait_for(lambda: _training(client, study_id), 120, "a trial training", interval=0.3)[0]
        killed = victim["user_attrs"]["worker"]["pid"]
        os.kill(killed, signal.SIGKILL)
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = _trials(client, study_id)
    assert not _assert_budget_kept(study, trials, n_trials, epochs)
    after = next(t for t in trials if t["number"] == victim["number"])
    if after["state"] == "COMPLETE":  # retried: a new process trained it from epoch 0 to the end
        assert after["user_attrs"]["worker"]["pid"] != killed, "the victim finished in the killed process"
    else:
        assert after["state"] == "FAIL" and after["user_attrs"].get("fail_reason"), after
    _assert_optuna_agrees(storage_url, name, trials, epochs)


# ---- 3. PostgreSQL restarted -------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    for candidate in [shutil.which("pg_ctl"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True),
                      *glob.glob("/usr/pgsql-*/bin/pg_ctl")]:
        if candidate and Path(candidate).with_name("initdb").exists():
            return Path(candidate).parent
    return None


class OwnPostgres:
    """A PostgreSQL server of this test's own, on a temporary data directory and a free port (trust auth), run as
    the ``postgres`` OS user when this process is root (initdb and postgres refuse root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="phasetune-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{tool} {args}: {done.stdout}\n{done.stderr}\n{self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
    pytest.importorskip("psycopg2")
    server = None
    try:
        server = OwnPostgres(bindir)
        server.initdb()
        server.start()
        yield server
    finally:
        if server is not None:
            server.close()


def test_a_postgres_restart_mid_study_loses_no_result(own_postgres, server_factory):
    """The study's PostgreSQL server stopped (fast: every connection cut) and started again a few seconds later while
    trials train: the API is a 503 meanwhile and answers again after; the driver waits the outage out, so the study
    completes its budget with the trials that trained across the restart among its results (none swept, no relaunch
    needed), every COMPLETE trial with its value and every epoch's record, and nothing stays RUNNING."""
    name, epochs, n_trials = "pg-restart", 12, 4
    server = server_factory(own_postgres.url)
    with server.client() as client:
        study_id = _submit(client, _spec(name, epochs, n_trials))
        wait_for(lambda: _training(client, study_id), 120, "a trial training", interval=0.3)
        own_postgres.stop()  # fast: every connection is cut
        try:
            down = client.get("/health")
            time.sleep(3)  # longer than an epoch: the driver's writes of the trials' results meet the outage
        finally:
            own_postgres.start()
        assert down.status_code == 503 and down.json()["problems"][0].startswith("storage"), down.text
        wait_for(lambda: client.get("/health").status_code == 200, 60, "the API to answer again")
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = _trials(client, study_id)
        relaunched = client.get("/health").json()["relaunched_drivers"]
    swept = _assert_budget_kept(study, trials, n_trials, epochs)
    # The driver rode the restart out: the trials training across it finished with their results (none was
    # thrown away by a successor's sweep), and no relaunch by the API's reconciliation was needed.
    assert not swept, (f"trials {[t['number'] for t in swept]} trained across the restart and were thrown away by a "
                       f"successor driver's sweep: the driver died of the outage (relaunched: {relaunched})")
    assert relaunched == {}, relaunched
    _assert_optuna_agrees(own_postgres.url, name, trials, epochs)


# ---- 4. the Ray head killed and started again ---------------------------------------------------------------------


def test_the_api_outlives_its_ray_head_and_resumes_studies_after_it_restarts(tmp_path):
    """``serve`` on a local head of its own; the head is killed mid-study (every Ray process: GCS, raylet, the
    driver, the trials). The API keeps answering (a study submitted meanwhile is stored, 201, not a 500), does not
    exit (Ray ends a driver whose GCS stays away 60 s), reconnects to a new head and relaunches what was running:
    both studies complete their budgets. Then the head is killed and started again, and ``serve`` restarted: the
    study that was running resumes from the storage and completes."""
    from phasetune.service import ray_cluster
    from phasetune.service.settings import Settings
    from tests.conftest import Server

    port = free_port()
    settings = Settings(ray_port=port, start_dashboard=False)
    storage_url = f"sqlite:///{tmp_path / 'head.db'}"
    epochs, n_trials = 6, 2
    server = Server(storage_url, "", tmp_path, PHASETUNE_RAY_PORT=str(port), PHASETUNE_RAY_NUM_CPUS="2",
                    PHASETUNE_RECONCILE_S="2")
    try:
        server.start()
        with server.client() as client:
            first = _submit(client, _spec("before-head-loss", epochs, n_trials))
            wait_for(lambda: _training(client, first), 120, "a trial training", interval=0.3)
            killed_at = time.monotonic()
            assert ray_cluster.stop_local_head(settings) > 0
            during = _submit(client, _spec("during-head-loss", epochs, n_trials))  # stored, queued: not a 500
            wait_for(lambda: client.get("/health").status_code == 503, 90, "/health to report the lost cluster")
            for study_id in (first, during):
                study = wait_for_status(client, study_id, ENDED, timeout=300)
                _assert_budget_kept(study, _trials(client, study_id), n_trials, epochs)
            time.sleep(max(0.0, 65 - (time.monotonic() - killed_at)))  # past Ray's 60 s: the API must still be up
            assert server.process.poll() is None, "the API exited after losing its Ray head"
            assert client.get("/health").status_code == 200, client.get("/health").text

            third = _submit(client, _spec("across-serve-restart", epochs, n_trials))
            wait_for(lambda: _training(client, third), 120, "a trial training", interval=0.3)
        ray_cluster.stop_local_head(settings)
        ray_cluster.ensure_local_head(settings)  # the head started again, by someone else, before serve restarts
        server.stop()
        server.start()
        with server.client() as client:
            study = wait_for_status(client, third, ENDED, timeout=300)
            _assert_budget_kept(study, _trials(client, third), n_trials, epochs)
    finally:
        server.stop()
        ray_cluster.stop_local_head(settings)
