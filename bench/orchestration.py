"""What phasetune's orchestration costs: a study over REST on Ray Tune against the same trials by hand with bare
Optuna, the driver's per-trial cost on a big study, and the API's reads at 10,000 trials.

Every figure is measured side by side in one invocation; the two sides alternate (``--rounds``, the side that goes
first alternates too), each round's figures are printed, and the summary is the median over rounds of the per-round
ratio (this machine drifts too much for a ratio of two separate medians). Goals are printed beside the figures.

1. ``readme``: the README's example study (``examples/two_phase_ps10.json``: 16 ps10 trials x 12 epochs,
   max_concurrent_trials 2). phasetune: POST /studies to ``phasetune serve`` (one service and one Ray head, started
   here once and reused by every round) until GET /studies/{id} reports "completed" (polled every 0.25 s). Bare:
   what a user writes by hand: k = max_concurrent_trials processes of this file (``--bare-worker``), each
   ``optuna.load_study`` on a fresh SQLite file and ``study.optimize(objective, n_trials=n/k)``, the objective
   training with phasetune's own code (``sample_schedule``, ``build_plan``, ``build_workload``, ``train``) and the
   same sampler (``make_sampler``); wall from spawning the processes to the last one exiting (Python and torch
   start-up included, as a user's script pays them). Goal: phasetune/bare wall <= 1.5. Both sides build the data
   and the initial model once per process and reuse them (``workers/workloads/cache.py``), as a user loads the data
   once outside the objective: the ratio is the orchestration's cost, not a cache only one side has.
2. ``short``: a 20-trial, 3-epoch study of ``quadratic`` (constant lr searched, objective val_loss, 2 concurrent),
   the same two ways. Per-trial overhead = (phasetune wall - bare wall) / n_trials (goal <= 0.5 s), and each side's
   steady-state per-trial overhead: the median over COMPLETE trials of datetime_complete - datetime_start - the
   trial's summed per-epoch training seconds, from the Optuna storage.
3. Worker busy fraction, for both studies above: summed per-epoch training seconds (the ``seconds`` of each epoch's
   record: training plus the validation pass) / (wall x max_concurrent_trials), per side; goal phasetune/bare >= 0.9.
4. ``driver``: the driver's per-trial cost at ``--driver-trials`` (10,000) finished trials against
   ``--driver-small`` (100), in this process, no Ray: ``OptunaStudySearcher(StudyHandle(url, name))`` on a study
   created as the service creates it (its schedule plot drawn and attached per trial, as in the service), and per
   trial what Tune calls: ``suggest``, ``on_trial_result`` for every epoch but the last, ``on_trial_complete`` with
   the last (the results are one real ps10 training run's records). ``--driver-k`` trials timed after
   ``--driver-warmup`` untimed ones, on a fresh copy of the filled study each time. The README study's spec with
   the *random* sampler, so that the sampler's own modelling (Optuna's, paid by hand too) is not what is measured.
   Goal: 10k/100 <= 2. Context: bare Optuna's own ``study.ask()`` + sampling the space + ``tell`` with TPE (the
   spec's sampler) at both sizes.
   Filling: a study gets 5 trials through the searcher, then copies of their rows (params, values, user and system
   attrs, intermediate values) bulk-inserted into Optuna's tables in one transaction (seconds for 10k), where
   ``study.add_trials`` costs ~20 ms a trial here (over 3 min for 10k; its rate on 50 trials is printed). Filled
   files are cached for the invocation.
5. ``api``: reads of a finished ``--api-trials`` (10,000) trial study, on SQLite and on PostgreSQL (a fresh database
   ``phasetune_bench_<random>`` at 127.0.0.1:5432, dropped at the end): phasetune's GET /studies/{id} (goal <= 100
   ms), GET /studies and GET /studies/{id}/trials?limit=100 (app in this process under uvicorn, real HTTP), against
   ``optuna.load_study(...).best_trial`` (a fresh storage each call, as a script pays it) and optuna-dashboard's
   ``/api/studies/{id}`` (its WSGI app in a thread; it caches finished trials in memory after its first call).
   ``--api-calls`` calls each, interleaved (5 of a read whose first call takes over a second); the first (cold)
   call is printed apart and not in the median.

Run: ``.venv/bin/python bench/orchestration.py [--rounds 2] [--only readme,short,driver,api] [--short-trials 20]
[--driver-trials 10000] [--driver-small 100] [--driver-k 30] [--api-trials 10000] [--api-calls 20]``.
Smoke: ``--rounds 1 --only short``; ``--only driver,api --driver-trials 300 --api-trials 300``.
Everything it starts (Ray head, ``phasetune serve``, worker processes, servers in threads, the PostgreSQL database,
the temp dir) is stopped or removed on exit, Ctrl-C and errors included. It never runs ``ray stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

import optuna
import torch

from phasetune.search_spaces import SpecError, build_plan, sample_schedule
from phasetune.workers import epoch_log
from phasetune.workers.optuna_study import make_sampler
from phasetune.workers.spec import StudySpec
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from phasetune.workers.workloads.cache import WorkloadCache

ROOT = Path(__file__).resolve().parents[1]

# Only what the bare worker needs is imported above (a user's script imports optuna, torch and its training code);
# Ray (through the searcher), the service, httpx, uvicorn and the dashboard are imported where the parent uses them.

BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("PHASETUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
README_SPEC = ROOT / "examples" / "two_phase_ps10.json"
FINISHED = ("completed", "failed", "stopped")
POLL_S = 0.25
STUDY_TIMEOUT_S = 1800
SEED_TRIALS = 5  # trials run through the searcher before a study is filled with copies of them
GOAL_WALL_RATIO = 1.5
GOAL_PER_TRIAL_S = 0.5
GOAL_BUSY_RATIO = 0.9
GOAL_DRIVER_RATIO = 2.0
GOAL_GET_STUDY_MS = 100.0
SLOW_CALL_S, SLOW_CALLS = 1.0, 5  # a read whose first call takes over a second is timed this many times
SUBS = ("readme", "short", "driver", "api")


def ok(holds: bool) -> str:
    return "yes" if holds else "NO"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # it exited: anything it left in its group goes too
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def readme_spec() -> dict[str, Any]:
    return json.loads(README_SPEC.read_text())


def short_spec(n_trials: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "quadratic-short",
        "workload": {"name": "quadratic", "params": {}},
        "epochs": epochs,
        "objective": {"metric": "val_loss"},
        "schedule": {"family": "constant", "lr": {"low": 0.01, "high": 0.5, "log": True}},
        "n_trials": n_trials,
        "max_concurrent_trials": 2,
        "seed": 0,
        "sampler": {"name": "tpe"},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }


def trial_figures(trials: list[optuna.trial.FrozenTrial], seconds_of: Callable[[Any], list[float]],
                  began: datetime, ended: datetime) -> dict:
    """Summed training seconds over all trials, the median per-trial overhead of the COMPLETE ones, and the time from
    ``began`` (submission, or spawning the workers) to the first trial's start and from the last trial's end to
    ``ended`` (Optuna's datetimes are the local clock's, as ``datetime.now()``)."""
    busy, overheads, states = 0.0, [], {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
        seconds = sum(seconds_of(t))
        busy += seconds
        if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_start and t.datetime_complete:
            overheads.append((t.datetime_complete - t.datetime_start).total_seconds() - seconds)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return {"busy_s": busy, "steady_s": median(overheads) if overheads else float("nan"), "states": states,
            "startup_s": (min(starts) - began).total_seconds() if starts else float("nan"),
            "teardown_s": (ended - max(ends)).total_seconds() if ends else float("nan")}


# ---- phasetune over REST -----------------------------------------------------------------------------------------


class Service:
    """A Ray head and ``phasetune serve`` on free ports, each in its own session (stopped by process group)."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        import httpx

        self.workdir = workdir
        self.storage_url = f"sqlite:///{workdir / 'p.db'}"
        ray_port, self.port = free_port(), free_port()
        self.head_log, self.api_log = workdir / "ray-head.log", workdir / "api.log"
        with open(self.head_log, "wb") as log:
            head = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--block", f"--port={ray_port}", "--num-cpus=2",
                 "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={workdir / 'ray'}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(stop_group, head)

        def ray_up() -> bool:
            assert head.poll() is None, f"the Ray head exited:\n{tail(self.head_log)}"
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", ray_port)) == 0

        wait_for(ray_up, 120, "the Ray head")
        env = {
            **os.environ,
            "PHASETUNE_STORAGE_URL": self.storage_url,
            "PHASETUNE_RAY_ADDRESS": f"127.0.0.1:{ray_port}",
            "PHASETUNE_START_DASHBOARD": "false",
            "PHASETUNE_RESULTS_DIR": str(workdir / "ray_results"),
            "PHASETUNE_ARTIFACTS_DIR": str(workdir / "artifacts"),
            "PHASETUNE_DATA_ROOT": str(workdir / "data"),
            "PHASETUNE_API_URL": f"http://127.0.0.1:{self.port}",
        }
        (workdir / "data").mkdir(exist_ok=True)
        with open(self.api_log, "wb") as log:
            api = subprocess.Popen([str(BIN / "phasetune"), "serve", "--port", str(self.port)], env=env, cwd=workdir,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(stop_group, api)
        self.client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120))

        def healthy() -> bool:
            assert api.poll() is None, f"phasetune serve exited:\n{tail(self.api_log)}"
            try:
                return self.client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 180, "phasetune serve")
        from phasetune.workers.storage import open_storage

        self.storage = open_storage(self.storage_url)
        stack.callback(self.storage.engine.dispose)

    def run(self, spec: dict[str, Any], name: str) -> dict[str, Any]:
        """Submit, wait for "completed"; the wall and the trials' figures from the storage."""
        began, started = datetime.now(), time.perf_counter()
        response = self.client.post("/studies", json={**spec, "name": name})
        if response.status_code != 201:
            raise RuntimeError(f"POST /studies: {response.status_code} {response.text}")
        study_id = response.json()["id"]
        deadline = time.monotonic() + STUDY_TIMEOUT_S
        while True:
            study = self.client.get(f"/studies/{study_id}").json()
            if study["status"] in FINISHED:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {name} still {study['status']} after {STUDY_TIMEOUT_S}s")
            time.sleep(POLL_S)
        wall, ended = time.perf_counter() - started, datetime.now()
        if study["status"] != "completed":
            raise RuntimeError(f"study {name} ended {study['status']}: {study.get('error')}\n{tail(self.api_log)}")
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        figures = trial_figures(trials, lambda t: [m["seconds"] for m in epoch_log.history(t.user_attrs)], began, ended)
        return {"wall_s": wall, "n": len(trials), **figures}


# ---- bare Optuna, as a user writes it by hand ----------------------------------------------------------------------


def bare_worker(spec_path: str, storage_url: str, n_trials: int) -> None:
    """One of k processes of the hand-written study: load it, optimize n_trials with phasetune's training code."""
    torch.set_num_threads(1)
    spec = StudySpec.parse(json.loads(Path(spec_path).read_text()))
    study = optuna.load_study(study_name=spec.name, storage=storage_url, sampler=make_sampler(spec))
    metric = spec.objective.metric
    cache = WorkloadCache()

    def objective(trial: optuna.Trial) -> float:
        schedule = sample_schedule(trial, spec.schedule, spec.epochs, {})
        plan = build_plan(schedule, spec.epochs, spec.steps_per_epoch)
        seeds = spec.trial_seeds(trial.number)
        # As a user writes it: the data loaded once per process, each trial from the same initial weights.
        workload = build_workload(spec.workload.name, dict(spec.workload.params), seeds, spec.data_root,
                                  cache=cache)
        seconds: list[float] = []

        def on_epoch(metrics: dict[str, Any]) -> None:
            trial.report(metrics[metric], metrics["epoch"])
            seconds.append(metrics["seconds"])

        history = train(workload, plan, spec.epochs, order_seed=seeds.batch_order, on_epoch=on_epoch)
        trial.set_user_attr("epoch_seconds", seconds)
        return history[-1][metric]

    study.optimize(objective, n_trials=n_trials, catch=(SpecError,))


def run_bare(spec: dict[str, Any], name: str, workdir: Path) -> dict[str, Any]:
    parsed = StudySpec.parse({**spec, "name": name, "data_root": str(workdir / "data")})
    url = f"sqlite:///{workdir / f'{name}.db'}"
    optuna.create_study(storage=url, study_name=name, sampler=make_sampler(parsed),
                        direction=parsed.objective.direction.value)
    spec_path = workdir / f"{name}.json"
    spec_path.write_text(json.dumps(parsed.to_dict()))
    k, n = parsed.max_concurrent_trials, parsed.n_trials
    counts = [n // k + (i < n % k) for i in range(k)]
    logs = [workdir / f"{name}-worker{i}.log" for i in range(k)]
    processes: list[subprocess.Popen] = []
    began, started = datetime.now(), time.perf_counter()
    try:
        for count, log_path in zip(counts, logs):
            with open(log_path, "wb") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--bare-worker", str(spec_path), url, str(count)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        codes = [p.wait() for p in processes]
        wall, ended = time.perf_counter() - started, datetime.now()
    finally:
        for process in processes:
            stop_group(process)
    failed = [log for code, log in zip(codes, logs) if code]
    if failed:
        raise RuntimeError(f"a bare worker failed (exit codes {codes}):\n{tail(failed[0])}")
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    seconds = trial_figures(trials, lambda t: t.user_attrs.get("epoch_seconds", []), began, ended)
    return {"wall_s": wall, "n": len(trials), **seconds}


def bench_studies(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> list[str]:
    """Sub-benchmarks 1-3; the verdict lines for the summary."""
    which = [w for w in ("readme", "short") if w in args.only]
    specs = {"readme": readme_spec(), "short": short_spec(args.short_trials, args.short_epochs)}
    started = time.perf_counter()
    service = Service(workdir, stack)
    print(f"phasetune serve and a Ray head (2 CPUs) up in {time.perf_counter() - started:.1f} s; "
          "walls below exclude it (a service is started once)")
    results: dict[str, list[dict[str, Any]]] = {w: [] for w in which}
    for r in range(args.rounds):
        for w in which:
            spec = specs[w]
            sides = ("phasetune", "bare") if r % 2 == 0 else ("bare", "phasetune")
            out: dict[str, Any] = {"first": sides[0]}
            for side in sides:
                name = f"bench-{w}-r{r}-{side}-{uuid.uuid4().hex[:6]}"
                out[side] = service.run(spec, name) if side == "phasetune" else run_bare(spec, name, workdir)
            results[w].append(out)
            print_round(w, r, out, spec)
    print("\ncolumns: per_trial_s = (pt_wall - bare_wall) / n_trials; *_train_s = summed per-epoch seconds; *_busy = "
          "train_s / (wall x concurrency); *_steady_s = median over COMPLETE trials of (complete - start - train "
          "seconds); *_start_s = submission (phasetune) or spawning the workers (bare) to the first trial's start; "
          "*_end_s = the last trial's end to status completed seen (phasetune) or the last worker's exit (bare)")
    lines = []
    for w in which:
        spec, rounds = specs[w], results[w]
        k, n = spec["max_concurrent_trials"], spec["n_trials"]
        ratio = median(o["phasetune"]["wall_s"] / o["bare"]["wall_s"] for o in rounds)
        busy = median(busy_fraction(o["phasetune"], k) / busy_fraction(o["bare"], k) for o in rounds)
        title = ("README example (16 ps10 trials x 12 epochs)" if w == "readme"
                 else f"short ({n} quadratic trials x {spec['epochs']} epochs)")
        print(f"\n{title}: median over {len(rounds)} round(s)")
        print(f"  wall phasetune/bare {ratio:.2f}" + (f"  (goal <= {GOAL_WALL_RATIO}: {ok(ratio <= GOAL_WALL_RATIO)})"
                                                      if w == "readme" else ""))
        if w == "readme":
            lines.append(f"1. README study wall phasetune/bare {ratio:.2f} (goal <= {GOAL_WALL_RATIO}): "
                         f"{ok(ratio <= GOAL_WALL_RATIO)}")
        if w == "short":
            per_trial = median((o["phasetune"]["wall_s"] - o["bare"]["wall_s"]) / n for o in rounds)
            print(f"  per-trial overhead (phasetune wall - bare wall) / {n}: {per_trial:.3f} s "
                  f"(goal <= {GOAL_PER_TRIAL_S} s: {ok(per_trial <= GOAL_PER_TRIAL_S)})")
            print(f"  steady-state per-trial overhead (median over trials): phasetune "
                  f"{median(o['phasetune']['steady_s'] for o in rounds):.3f} s, bare "
                  f"{median(o['bare']['steady_s'] for o in rounds):.3f} s")
            lines.append(f"2. short trials: per-trial overhead {per_trial:.3f} s (goal <= {GOAL_PER_TRIAL_S} s): "
                         f"{ok(per_trial <= GOAL_PER_TRIAL_S)}")
        print(f"  busy fraction phasetune {median(busy_fraction(o['phasetune'], k) for o in rounds):.1%}, bare "
              f"{median(busy_fraction(o['bare'], k) for o in rounds):.1%}; ratio phasetune/bare {busy:.2f} "
              f"(goal >= {GOAL_BUSY_RATIO}: {ok(busy >= GOAL_BUSY_RATIO)})")
        lines.append(f"3. busy fraction ratio phasetune/bare, {w}: {busy:.2f} (goal >= {GOAL_BUSY_RATIO}): "
                     f"{ok(busy >= GOAL_BUSY_RATIO)}")
    return lines


def busy_fraction(side: dict[str, Any], concurrency: int) -> float:
    return side["busy_s"] / (side["wall_s"] * concurrency)


def print_round(w: str, r: int, out: dict[str, Any], spec: dict[str, Any]) -> None:
    k, n = spec["max_concurrent_trials"], spec["n_trials"]
    pt, bare = out["phasetune"], out["bare"]
    if r == 0:
        print(f"\n{w}: {n} trials x {spec['epochs']} epochs of {spec['workload']['name']}, max_concurrent_trials {k}")
        print(f"{'round':>5} {'first':>9} {'pt_wall_s':>9} {'bare_wall_s':>11} {'pt/bare':>7} {'per_trial_s':>11} "
              f"{'pt_train_s':>10} {'bare_train_s':>12} {'pt_busy':>7} {'bare_busy':>9} {'busy_ratio':>10} "
              f"{'pt_steady_s':>11} {'bare_steady_s':>13} {'pt_start_s':>10} {'bare_start_s':>12} {'pt_end_s':>8} "
              f"{'bare_end_s':>10}  trial states (phasetune | bare)")
    print(f"{r + 1:>5} {out['first']:>9} {pt['wall_s']:9.2f} {bare['wall_s']:11.2f} "
          f"{pt['wall_s'] / bare['wall_s']:7.2f} "
          f"{(pt['wall_s'] - bare['wall_s']) / n:11.3f} {pt['busy_s']:10.2f} {bare['busy_s']:12.2f} "
          f"{busy_fraction(pt, k):7.1%} {busy_fraction(bare, k):9.1%} "
          f"{busy_fraction(pt, k) / busy_fraction(bare, k):10.2f} {pt['steady_s']:11.3f} {bare['steady_s']:13.3f} "
          f"{pt['startup_s']:10.2f} {bare['startup_s']:12.2f} {pt['teardown_s']:8.2f} {bare['teardown_s']:10.2f}  "
          f"{pt['states']} | {bare['states']}", flush=True)


# ---- filled studies: created as the service creates them, then copied up to a count --------------------------------


class Filled:
    """Studies of the README spec (random sampler) filled to given counts, cached as SQLite files in ``workdir``."""

    NAME = "filled"

    def __init__(self, workdir: Path, spare: int) -> None:
        self.workdir = workdir
        self.spare = spare  # trials the budget leaves beyond the filled ones (what one measurement adds)
        self.files: dict[int, Path] = {}
        self._history: list[dict[str, Any]] | None = None
        self.template: Path | None = None  # a file whose first trials are the templates

    def spec_dict(self, n_trials: int) -> dict[str, Any]:
        return {**readme_spec(), "name": self.NAME, "sampler": {"name": "random"}, "n_trials": n_trials,
                "data_root": str(self.workdir / "data")}

    def history(self) -> list[dict[str, Any]]:
        """One real ps10 training run's per-epoch records: the results the searcher is fed."""
        if self._history is None:
            spec = StudySpec.parse(self.spec_dict(1))
            trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()  # in memory
            schedule = sample_schedule(trial, spec.schedule, spec.epochs, {})
            seeds = spec.trial_seeds(0)
            torch.set_num_threads(1)
            workload = build_workload(spec.workload.name, dict(spec.workload.params), seeds, spec.data_root)
            plan = build_plan(schedule, spec.epochs, workload.steps_per_epoch)
            self._history = train(workload, plan, spec.epochs, order_seed=seeds.batch_order)
        return self._history

    def create(self, url: str, n_trials: int, status: str = "running") -> int:
        """The study, created the way ``phasetune.service.studies.create`` does; its id."""
        from phasetune.workers import optuna_study, study_attrs
        from phasetune.workers.storage import open_storage

        storage = open_storage(url)
        try:
            attrs = {study_attrs.STATUS: status, study_attrs.CREATED_AT: datetime.now(timezone.utc).isoformat(),
                     study_attrs.ARTIFACT_DIR: str(self.workdir / "artifacts")}
            return optuna_study.create_study(storage, StudySpec.parse(self.spec_dict(n_trials)), attrs)
        finally:
            storage.engine.dispose()

    def get(self, count: int) -> Path:
        """A SQLite file holding the study with ``count`` finished trials (built once per count)."""
        if count in self.files:
            return self.files[count]
        path = self.workdir / f"filled-{count}.db"
        url = f"sqlite:///{path}"
        started = time.perf_counter()
        study_id = self.create(url, n_trials=count + self.spare)  # a budget the timed trials never exhaust
        searcher = Searcher(url, self.NAME)
        try:
            for i in range(min(SEED_TRIALS, count)):
                searcher.trial(f"seed_{i:05d}", self.history())
        finally:
            searcher.close()
        seeded = time.perf_counter() - started
        engine = engine_of(url)
        try:
            copied = bulk_fill(engine, engine, study_id, count)
        finally:
            engine.dispose()
        print(f"  filled a study to {count} finished trials in {time.perf_counter() - started:.1f} s "
              f"({min(SEED_TRIALS, count)} through the searcher in {seeded:.1f} s, {copied} bulk-copied)", flush=True)
        self.files[count] = path
        self.template = self.template or path
        return path

    def copy(self, count: int, tag: str) -> str:
        """A fresh copy of the ``count`` study's file: its URL (each measurement starts from the same state)."""
        path = self.workdir / f"copy-{tag}-{count}-{uuid.uuid4().hex[:6]}.db"
        shutil.copyfile(self.get(count), path)
        return f"sqlite:///{path}"


def engine_of(url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(url)


def bulk_fill(src: Any, dst: Any, dst_study_id: int, count: int) -> int:
    """Copy the source study's COMPLETE trials (rows of every table keyed by trial_id) into ``dst_study_id`` until it
    holds ``count`` trials, in one transaction; how many were added. A bench shortcut through Optuna's schema
    (``add_trials`` makes one transaction of several ORM queries per trial)."""
    from optuna.storages._rdb import models
    from sqlalchemy import func, insert, select

    tables = models.BaseModel.metadata.tables
    trials = tables["trials"]
    children = [t for name, t in tables.items() if name != "trials" and "trial_id" in t.c]
    with src.connect() as connection:
        source = [dict(r._mapping) for r in connection.execute(
            select(trials).where(trials.c.state == optuna.trial.TrialState.COMPLETE).order_by(trials.c.trial_id))]
        ids = [row["trial_id"] for row in source]
        rows_of: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for table in children:
            keys = {c.name for c in table.primary_key.columns}
            by_trial: dict[int, list[dict[str, Any]]] = {}
            for row in connection.execute(select(table).where(table.c.trial_id.in_(ids))):
                by_trial.setdefault(row.trial_id, []).append({k: v for k, v in row._mapping.items() if k not in keys})
            rows_of[table.name] = by_trial
    if not source:
        raise RuntimeError("no COMPLETE trial to copy")
    added = 0
    with dst.begin() as connection:
        start = connection.execute(
            select(func.count()).select_from(trials).where(trials.c.study_id == dst_study_id)).scalar_one()
        for chunk in range(start, count, 1000):
            numbers = range(chunk, min(chunk + 1000, count))
            templates = [source[i % len(source)] for i in numbers]
            new = [{**{k: v for k, v in t.items() if k != "trial_id"}, "number": number, "study_id": dst_study_id}
                   for t, number in zip(templates, numbers)]
            new_ids = connection.execute(insert(trials).returning(trials.c.trial_id, sort_by_parameter_order=True),
                                         new).scalars().all()
            for table in children:
                rows = [{**row, "trial_id": new_id} for t, new_id in zip(templates, new_ids)
                        for row in rows_of[table.name].get(t["trial_id"], [])]
                if rows:
                    connection.execute(insert(table), rows)
            added += len(new)
    return added


class Searcher:
    """The driver's searcher on a study, fed as Tune feeds it: suggest, results, complete."""

    def __init__(self, url: str, name: str) -> None:
        from phasetune.workers.handle import StudyHandle
        from phasetune.workers.searcher import OptunaStudySearcher

        self.handle = StudyHandle(url, name)
        self.searcher = OptunaStudySearcher(self.handle)

    def trial(self, trial_id: str, history: list[dict[str, Any]]) -> None:
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):
            raise RuntimeError(f"the searcher suggested {config!r}")
        for result in history[:-1]:
            self.searcher.on_trial_result(trial_id, dict(result))
        self.searcher.on_trial_complete(trial_id, dict(history[-1]))  # Tune hands the last result only here

    def close(self) -> None:
        if "_plotter" in self.searcher.__dict__:
            self.searcher.__dict__["_plotter"].shutdown(wait=True)
        if "storage" in self.handle.__dict__:
            self.handle.storage.engine.dispose()


def time_searcher(url: str, history: list[dict[str, Any]], k: int, warmup: int, plot: bool = True) -> float:
    """Seconds per trial of the searcher's work, over ``k`` trials after ``warmup`` untimed ones; without ``plot``,
    the study has no artifact dir (so no schedule plot is drawn), as a study stored without one."""
    if not plot:
        from phasetune.workers import study_attrs
        from phasetune.workers.storage import open_storage

        storage = open_storage(url)
        try:
            storage.set_study_user_attr(storage.get_study_id_from_name(Filled.NAME), study_attrs.ARTIFACT_DIR, "")
        finally:
            storage.engine.dispose()
    searcher = Searcher(url, Filled.NAME)
    try:
        for i in range(warmup):
            searcher.trial(f"warm_{i:05d}", history)
        started = time.perf_counter()
        for i in range(k):
            searcher.trial(f"timed_{i:05d}", history)
        return (time.perf_counter() - started) / k
    finally:
        searcher.close()


def time_bare_tpe(url: str, spec: StudySpec, k: int, warmup: int) -> float:
    """Seconds per trial of bare Optuna's ``ask`` + sampling the schedule space + ``tell``, TPE as the spec's."""
    from phasetune.workers.storage import open_storage

    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=Filled.NAME, storage=storage, sampler=make_sampler(spec))
        rng = random.Random(0)

        def one() -> None:
            trial = study.ask()
            sample_schedule(trial, spec.schedule, spec.epochs, {})
            study.tell(trial, rng.random())

        for _ in range(warmup):
            one()
        started = time.perf_counter()
        for _ in range(k):
            one()
        return (time.perf_counter() - started) / k
    finally:
        storage.engine.dispose()


def add_trials_rate(filled: Filled, count: int, n: int) -> float:
    """Seconds per trial of ``study.add_trials`` (``n`` copies) on SQLite, onto the ``count`` study: why the fill is
    a bulk insert."""
    url = filled.copy(count, "addtrials")
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=Filled.NAME, storage=storage)
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        copies = [optuna.trial.create_trial(value=t.value, params=t.params, distributions=t.distributions,
                                            user_attrs=t.user_attrs, system_attrs=t.system_attrs,
                                            intermediate_values=t.intermediate_values) for t in done[:n]]
        copies = [copies[i % len(copies)] for i in range(n)]
        started = time.perf_counter()
        study.add_trials(copies)
        return (time.perf_counter() - started) / n
    finally:
        storage.engine.dispose()


def bench_driver(args: argparse.Namespace, filled: Filled) -> list[str]:
    small, big = args.driver_small, args.driver_trials
    print("\n4. driver cost per trial: OptunaStudySearcher in this process (no Ray), README spec with the RANDOM "
          "sampler (the sampler's modelling is Optuna's, paid by hand too, so it is not what is measured);")
    print(f"   per trial: suggest + {readme_spec()['epochs'] - 1} on_trial_result + on_trial_complete (last epoch), "
          f"schedule plot drawn and attached as in the service; {args.driver_k} trials timed after "
          f"{args.driver_warmup} warm-up, on a fresh copy of the filled study each time")
    history = filled.history()
    for count in (small, big):
        filled.get(count)
    rate = add_trials_rate(filled, small, 50)
    print(f"  (study.add_trials on SQLite: {rate * 1e3:.1f} ms a trial, {rate * big:.0f} s for {big}: hence the bulk "
          "copy)")
    tpe_spec = StudySpec.parse({**filled.spec_dict(big + filled.spare), "sampler": {"name": "tpe"}})
    print(f"{'round':>5} {'first':>6} {f'ms/trial@{small}':>14} {f'ms/trial@{big}':>14} {'ratio':>6} "
          f"{f'no_plot_ms@{small}':>16} {f'no_plot_ms@{big}':>16} {'ratio':>6} "
          f"{f'bare_tpe_ms@{small}':>17} {f'bare_tpe_ms@{big}':>17} {'tpe_ratio':>9}")
    ratios: dict[str, list[float]] = {"plot": [], "no_plot": [], "tpe": []}
    for r in range(args.rounds):
        order = (small, big) if r % 2 == 0 else (big, small)
        k, warm = args.driver_k, args.driver_warmup
        ms = {"plot": {}, "no_plot": {}, "tpe": {}}
        for c in order:
            ms["plot"][c] = time_searcher(filled.copy(c, f"drv{r}"), history, k, warm) * 1e3
            ms["no_plot"][c] = time_searcher(filled.copy(c, f"drv{r}"), history, k, warm, plot=False) * 1e3
            ms["tpe"][c] = time_bare_tpe(filled.copy(c, f"tpe{r}"), tpe_spec, k, warm) * 1e3
        for key, by_count in ms.items():
            ratios[key].append(by_count[big] / by_count[small])
        print(f"{r + 1:>5} {order[0]:>6} {ms['plot'][small]:14.1f} {ms['plot'][big]:14.1f} {ratios['plot'][-1]:6.2f} "
              f"{ms['no_plot'][small]:16.1f} {ms['no_plot'][big]:16.1f} {ratios['no_plot'][-1]:6.2f} "
              f"{ms['tpe'][small]:17.1f} {ms['tpe'][big]:17.1f} {ratios['tpe'][-1]:9.2f}", flush=True)
    ratio, bare_ratio = median(ratios["plot"]), median(ratios["no_plot"])
    print(f"  median ratio driver ms/trial at {big} / at {small}: {ratio:.2f} as the service runs it, "
          f"{bare_ratio:.2f} without the schedule plot (goal <= {GOAL_DRIVER_RATIO}: {ok(ratio <= GOAL_DRIVER_RATIO)}, "
          f"{ok(bare_ratio <= GOAL_DRIVER_RATIO)}); context, bare Optuna ask+tell with TPE: "
          f"{median(ratios['tpe']):.2f}")
    return [f"4. driver per-trial cost at {big} / at {small} finished trials (random sampler): {ratio:.2f} with the "
            f"schedule plot, {bare_ratio:.2f} without (goal <= {GOAL_DRIVER_RATIO}): {ok(ratio <= GOAL_DRIVER_RATIO)}, "
            f"{ok(bare_ratio <= GOAL_DRIVER_RATIO)}"]


# ---- API reads -----------------------------------------------------------------------------------------------------


class ThreadedUvicorn:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="bench-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 60, "uvicorn", interval=0.05)
        if not self.server.started:
            raise RuntimeError("the phasetune app did not start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def threaded_wsgi(app: Any) -> Iterator[str]:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", free_port(), app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, name="bench-dashboard", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"phasetune_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def api_study(backend: str, filled: Filled, count: int, stack: contextlib.ExitStack) -> tuple[str, int]:
    """A finished ``count``-trial study on ``backend``: its storage URL and study id."""
    from phasetune.workers import study_attrs
    from phasetune.workers.storage import open_storage

    if backend == "sqlite":
        url, study_id = filled.copy(count, "api"), 1
    else:
        filled.get(count)
        url = stack.enter_context(postgres_database())
        started = time.perf_counter()
        study_id = filled.create(url, n_trials=count)
        template = engine_of(f"sqlite:///{filled.template}")
        engine = open_storage(url).engine
        try:
            bulk_fill(template, engine, study_id, count)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("ANALYZE")  # what autovacuum does after this many inserts
        finally:
            template.dispose()
            engine.dispose()
        print(f"  PostgreSQL: filled a study to {count} trials in {time.perf_counter() - started:.1f} s", flush=True)
    storage = open_storage(url)
    try:
        storage.set_study_user_attr(study_id, study_attrs.STATUS, "completed")
        storage.set_study_user_attr(study_id, study_attrs.SPEC, {**storage.get_study_user_attrs(study_id)[
            study_attrs.SPEC], "n_trials": count})
        assert len(storage.get_all_trials(study_id, deepcopy=False)) == count
    finally:
        storage.engine.dispose()
    return url, study_id


def bench_api(args: argparse.Namespace, filled: Filled, workdir: Path) -> list[str]:
    print(f"\n5. API reads of a finished {args.api_trials}-trial study (README spec's trials): first call, then the "
          f"median of {args.api_calls} interleaved calls")
    return [line for backend in ("sqlite", "postgresql") for line in api_backend(args, backend, filled, workdir)]


def api_backend(args: argparse.Namespace, backend: str, filled: Filled, workdir: Path) -> list[str]:
    import httpx
    import optuna_dashboard

    from phasetune.service.main import create_app
    from phasetune.service.settings import Settings

    lines = []
    with contextlib.ExitStack() as inner:
        url, study_id = api_study(backend, filled, args.api_trials, inner)
        settings = Settings(storage_url=url, start_dashboard=False, results_dir=str(workdir / "ray_results"),
                            artifacts_dir=str(workdir / "artifacts"), data_root=str(workdir / "data"))
        phasetune = inner.enter_context(ThreadedUvicorn(create_app(settings, run_studies=False)))
        dashboard = inner.enter_context(threaded_wsgi(optuna_dashboard.wsgi(url)))
        client = inner.enter_context(httpx.Client(timeout=600))

        fresh: list[optuna.storages.RDBStorage] = []  # disposed after the timings (outside them)
        inner.callback(lambda: [storage.engine.dispose() for storage in fresh])

        def get(address: str) -> Callable[[], Any]:
            def call() -> Any:
                response = client.get(address)
                response.raise_for_status()
                return response
            return call

        def best_trial() -> Any:
            fresh.append(optuna.storages.RDBStorage(url))  # what load_study(storage=url) makes: a new engine
            return optuna.load_study(study_name=Filled.NAME, storage=fresh[-1]).best_trial

        calls = {
            "phasetune GET /studies/{id}": get(f"{phasetune}/studies/{study_id}"),
            "phasetune GET /studies": get(f"{phasetune}/studies"),
            "phasetune GET /studies/{id}/trials?limit=100": get(f"{phasetune}/studies/{study_id}/trials?limit=100"),
            "optuna.load_study(...).best_trial": best_trial,
            "optuna-dashboard /api/studies/{id}": get(f"{dashboard}/api/studies/{study_id}"),
        }
        first: dict[str, float] = {}
        sizes: dict[str, int] = {}
        times: dict[str, list[float]] = {name: [] for name in calls}
        n_calls = dict.fromkeys(calls, args.api_calls)
        notes = {}
        for name, call in calls.items():
            started = time.perf_counter()
            out = call()
            first[name] = time.perf_counter() - started
            sizes[name] = len(out.content) if hasattr(out, "content") else 0
            said = []
            if name.endswith("limit=100"):
                returned = len(out.json())
                said.append(f"{returned} trials returned" + (": limit ignored" if returned > 100 else ""))
            if first[name] > SLOW_CALL_S:  # seconds a call: a few calls tell as much, in less time
                n_calls[name] = min(args.api_calls, SLOW_CALLS)
                said.append(f"{n_calls[name]} calls")
            if said:
                notes[name] = "; ".join(said)
        for i in range(args.api_calls):
            for name, call in (calls.items() if i % 2 == 0 else reversed(calls.items())):
                if len(times[name]) < n_calls[name]:
                    started = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - started)
        print(f"\n{backend} ({url.split('://')[0]}):")
        print(f"  {'call':<46} {'first_ms':>9} {'median_ms':>9} {'bytes':>11}")
        for name in calls:
            med = median(times[name]) * 1e3
            goal = ""
            if name == "phasetune GET /studies/{id}":
                goal = f"  goal <= {GOAL_GET_STUDY_MS:.0f} ms: {ok(med <= GOAL_GET_STUDY_MS)}"
                lines.append(f"5. {backend}: GET /studies/{{id}} at {args.api_trials} trials {med:.0f} ms "
                             f"(goal <= {GOAL_GET_STUDY_MS:.0f} ms): {ok(med <= GOAL_GET_STUDY_MS)}")
            size = f"{sizes[name]:>11}" if sizes[name] else f"{'-':>11}"
            note = f"  ({notes[name]})" if name in notes else ""
            print(f"  {name:<46} {first[name] * 1e3:9.1f} {med:9.1f} {size}{goal}{note}", flush=True)
        ours = median(times["phasetune GET /studies/{id}"])
        print(f"  load_study().best_trial / GET /studies/{{id}}: "
              f"{median(times['optuna.load_study(...).best_trial']) / ours:.2f}x; dashboard /api/studies/{{id}} / "
              f"GET /studies/{{id}}: {median(times['optuna-dashboard /api/studies/{id}']) / ours:.1f}x")
    return lines


# ---- main ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each side-by-side figure")
    parser.add_argument("--only", default=",".join(SUBS), help=f"comma-separated subset of {','.join(SUBS)}")
    parser.add_argument("--short-trials", type=int, default=20)
    parser.add_argument("--short-epochs", type=int, default=3)
    parser.add_argument("--driver-trials", type=int, default=10_000, help="finished trials of the big study")
    parser.add_argument("--driver-small", type=int, default=100, help="finished trials of the small study")
    parser.add_argument("--driver-k", type=int, default=30, help="timed trials per measurement")
    parser.add_argument("--driver-warmup", type=int, default=2, help="untimed trials before them")
    parser.add_argument("--api-trials", type=int, default=10_000)
    parser.add_argument("--api-calls", type=int, default=20)
    parser.add_argument("--bare-worker", nargs=3, help=argparse.SUPPRESS, metavar=("SPEC", "URL", "N"))
    args = parser.parse_args()
    if args.bare_worker:
        spec_path, url, n = args.bare_worker
        bare_worker(spec_path, url, int(n))
        return
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SUBS)
    if unknown or not args.only:
        parser.error(f"--only takes a subset of {','.join(SUBS)}, got {sorted(unknown) or 'nothing'}")
    if args.rounds < 1 or args.driver_k < 1 or args.api_calls < 1:
        parser.error("--rounds, --driver-k and --api-calls must be >= 1")

    def terminate(signum: int, _: object) -> None:
        raise SystemExit(f"bench/orchestration.py: signal {signum}, cleaning up")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C cleans up, also where started with it ignored
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group=True
    optuna.logging.disable_default_handler()  # Optuna still logs (and looks up the best trial) as deployed; unprinted
    print(f"optuna {optuna.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, rounds {args.rounds}, "
          f"only {','.join(args.only)}")
    started = time.perf_counter()
    verdicts: list[str] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="ptb-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        filled = Filled(workdir, spare=SEED_TRIALS + args.driver_warmup + args.driver_k + 100)
        for section in ("studies", "driver", "api"):
            began = time.perf_counter()
            if section == "studies" and ("readme" in args.only or "short" in args.only):
                with contextlib.ExitStack() as services:  # the Ray head and the service go as soon as they are done
                    verdicts += bench_studies(args, workdir, services)
            elif section == "driver" and "driver" in args.only:
                verdicts += bench_driver(args, filled)
            elif section == "api" and "api" in args.only:
                verdicts += bench_api(args, filled, workdir)
            else:
                continue
            print(f"({section}: {time.perf_counter() - began:.0f} s)", flush=True)
    print(f"\nsummary ({time.perf_counter() - started:.0f} s in all):")
    for line in sorted(verdicts, key=lambda line: line.split(".")[0]):  # by figure number, stable within one
        print(f"  {line}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench/orchestration.py: interrupted; what it started is stopped and its files removed")
