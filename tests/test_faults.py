"""Faults injected into real processes mid-study: the driver actor's process SIGKILLed, a trial's worker process
SIGKILLed, the PostgreSQL server restarted. Each study must still end ``completed`` with its full budget, nothing
left RUNNING and no result lost. The Ray head stopped or killed under `serve`: tests/test_user_faults.py."""

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

import optuna
import pytest

from tests.conftest import free_port, missing_in_ci, wait_for, wait_for_status
from tests.factories import ENDED, assert_budget_kept, fault_spec, submit, trials_of, wait_until_training

pytestmark = pytest.mark.slow

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
        study_id = submit(client, fault_spec(name, epochs, n_trials))
        wait_until_training(client, study_id)
        os.kill(_driver_pid(storage_url, name), signal.SIGKILL)
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = trials_of(client, study_id)
        relaunched = client.get("/health").json()["relaunched_drivers"]
    swept = assert_budget_kept(study, trials, n_trials, epochs)
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
        study_id = submit(client, fault_spec(name, epochs, n_trials))
        victim = wait_until_training(client, study_id)[0]
        killed = victim["user_attrs"]["worker"]["pid"]
        os.kill(killed, signal.SIGKILL)
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = trials_of(client, study_id)
    assert not assert_budget_kept(study, trials, n_trials, epochs)
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
        missing_in_ci("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
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
        study_id = submit(client, fault_spec(name, epochs, n_trials))
        wait_until_training(client, study_id)
        own_postgres.stop()  # fast: every connection is cut
        try:
            down = client.get("/health")
            time.sleep(3)  # longer than an epoch: the driver's writes of the trials' results meet the outage
        finally:
            own_postgres.start()
        assert down.status_code == 503 and down.json()["problems"][0].startswith("storage"), down.text
        wait_for(lambda: client.get("/health").status_code == 200, 60, "the API to answer again")
        study = wait_for_status(client, study_id, ENDED, timeout=240)
        trials = trials_of(client, study_id)
        relaunched = client.get("/health").json()["relaunched_drivers"]
    swept = assert_budget_kept(study, trials, n_trials, epochs)
    # The driver rode the restart out: the trials training across it finished with their results (none was
    # thrown away by a successor's sweep), and no relaunch by the API's reconciliation was needed.
    assert not swept, (f"trials {[t['number'] for t in swept]} trained across the restart and were thrown away by a "
                       f"successor driver's sweep: the driver died of the outage (relaunched: {relaunched})")
    assert relaunched == {}, relaunched
    _assert_optuna_agrees(own_postgres.url, name, trials, epochs)
