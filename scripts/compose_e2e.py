"""The compose cluster on a real Docker engine, as a user runs it: scripts/compose_e2e.sh's scenario.

scripts/compose_e2e.sh starts the engine, makes the base images and a scratch copy of the checkout, then runs this
in that copy with DOCKER_HOST set. Here: docs/cluster.md's "Bring the stack up" and "Submit a study" blocks run as
written (bash, from the copy); the study completes and the dashboard lists it; ``--profile gpu config`` validates;
then with two CPU workers, one worker container is killed (``docker kill``) and, in a second study, the PostgreSQL
container restarted while trials run: each study completes its budget with nothing RUNNING in
``optuna.load_study`` (run in the api container, on the cluster's PostgreSQL); ``docker compose down -v`` last.
Every step logs one line; a failed check raises with what was seen.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

API = "http://127.0.0.1:8000"
DASHBOARD = "http://127.0.0.1:8080"
TERMINAL = {"completed", "failed", "stopped"}
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[compose-e2e +{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)  # noqa: T201


def run(command: list[str], src: Path, timeout: float = 900, check: bool = True) -> str:
    """A command in the scratch checkout; its output goes to the log."""
    done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=timeout)
    output = (done.stdout + done.stderr).strip()
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{output[-4000:]}")
    return output


def docs_block(doc: str, heading: str) -> str:
    """The first ```sh block under a docs/cluster.md heading: the commands a user copies."""
    section = doc.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"docs/cluster.md: no sh block under '## {heading}'"
    return match.group(1)


def run_docs_block(doc: str, heading: str, src: Path, timeout: float) -> None:
    block = docs_block(doc, heading)
    log(f"docs/cluster.md '{heading}', as written:\n" + "\n".join(f"    $ {line}" for line in block.splitlines()))
    started = time.monotonic()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=src, capture_output=True, text=True,
                          timeout=timeout)
    output = (done.stdout + done.stderr).strip()
    # A progress bar (`--watch`) redraws itself: keep the last state of each bar.
    lines = [line.rsplit("\r", 1)[-1] for line in output.splitlines()]
    bar = re.compile(r"^[\w-]+: +\d+%\|")
    kept = [line[:300] + (" ..." if len(line) > 300 else "") for line, after in zip(lines, [*lines[1:], ""])
            if not (bar.match(line) and bar.match(after))]
    output = "\n".join(kept[-60:])
    log(f"'{heading}' exited {done.returncode} after {time.monotonic() - started:.0f}s:\n{output}")
    if done.returncode != 0:
        raise SystemExit(f"docs/cluster.md '{heading}' failed")


def api(method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, API + path, timeout=60, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:1000]}"
    return response.json()


def wait_healthy(timeout: float = 300, steady: float = 15) -> None:
    """The API answers /health for ``steady`` seconds in a row: `up --wait` returned, and no container that
    `ray start` gave up on (Ray allows a node 30 s to register, on a busy host not always enough) is restarting."""
    deadline, since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            ok = httpx.get(f"{API}/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        since = (since or time.monotonic()) if ok else None
        if since and time.monotonic() - since >= steady:
            return
        time.sleep(1)
    raise SystemExit(f"the API did not stay healthy for {steady}s within {timeout}s")


def wait_done(study_id: int, timeout: float = 900) -> dict[str, Any]:
    """The study once it ended. A 503 (the API's answer while the storage does not answer: PostgreSQL restarting)
    is waited out like a running study."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{API}/studies/{study_id}", timeout=60)
        if response.status_code != 503:
            assert response.status_code == 200, f"GET /studies/{study_id}: {response.status_code} {response.text}"
            study = response.json()
            if study["status"] in TERMINAL:
                return study
        assert time.monotonic() < deadline, f"study {study_id} not done after {timeout}s: {response.text[:2000]}"
        time.sleep(2)


def stored_states(name: str, src: Path) -> dict[str, int]:
    """Trial states of a study as Optuna reads them from the cluster's PostgreSQL (in the api container)."""
    code = ("import collections, json, os, optuna; "
            f"s = optuna.load_study(study_name={name!r}, storage=os.environ['PHASETUNE_STORAGE_URL']); "
            "print(json.dumps(collections.Counter(t.state.name for t in s.get_trials(deepcopy=False))))")
    output = run(["docker", "compose", "exec", "-T", "api", "python", "-c", code], src, timeout=120)
    return json.loads(output.strip().splitlines()[-1])


def spec(name: str, n_trials: int, epochs: int) -> dict[str, Any]:
    return {"name": name, "workload": {"name": "quadratic", "params": {}}, "epochs": epochs,
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "schedule": {"family": "constant", "lr": {"low": 0.01, "high": 1.0, "log": True}},
            "n_trials": n_trials, "max_concurrent_trials": 2, "sampler": {"name": "random", "seed": 0},
            "resources_per_trial": {"cpu": 1, "gpu": 0}}


def running_trials(study_id: int) -> list[dict[str, Any]]:
    return [t for t in api("GET", f"/studies/{study_id}/trials") if t["state"] == "RUNNING"]


def wait_running(study_id: int, timeout: float = 300) -> list[dict[str, Any]]:
    """Trials that are running and have reported an epoch: the study is mid-way."""
    deadline = time.monotonic() + timeout
    while True:
        running = [t for t in running_trials(study_id) if t.get("metrics")]
        if running:
            return running
        assert api("GET", f"/studies/{study_id}")["status"] not in TERMINAL, f"study {study_id} ended first"
        assert time.monotonic() < deadline, f"no trial of study {study_id} ran within {timeout}s"
        time.sleep(0.5)


def check_budget(study_id: int, name: str, n_trials: int, src: Path) -> None:
    """The study completed its budget and nothing is left RUNNING, over the API and in Optuna's storage."""
    study = wait_done(study_id)
    counts = study["trial_counts"]
    assert study["status"] == "completed", study
    assert "RUNNING" not in counts and sum(counts.values()) >= n_trials and counts.get("COMPLETE", 0) >= 1, counts
    stored = stored_states(name, src)
    assert "RUNNING" not in stored and sum(stored.values()) >= n_trials, stored
    log(f"study {name} completed: API {counts}, optuna.load_study {stored}: nothing RUNNING")


def container_ips(service: str, src: Path) -> dict[str, str]:
    """``{container IP on the compose network: container id}`` of a service's containers."""
    ids = run(["docker", "compose", "ps", "-q", service], src).split()
    found = {}
    for container in ids:
        ip = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container],
                 src)
        found[ip] = container
    return found


def check_services(src: Path) -> None:
    """Every service is where `up --wait` should leave it: migrate exited 0, the rest running and the ones with a
    health check healthy (compose may return 0 although a dependency failed; this says which one)."""
    ps = run(["docker", "compose", "ps", "-a", "--format", "json"], src)
    containers = [json.loads(line) for line in ps.splitlines() if line.strip()]
    state = {c["Service"]: (c["State"], c.get("Health", ""), c.get("ExitCode", 0)) for c in containers}
    assert state.get("migrate", ("", "", None))[0::2] == ("exited", 0), f"migrate did not complete: {state}"
    for service in ("postgres", "ray-head", "api", "dashboard"):
        assert state.get(service, ("",))[:2] == ("running", "healthy"), f"{service} is not healthy: {state}"
    assert state.get("ray-worker", ("",))[0] == "running", f"ray-worker is not running: {state}"
    log("services: migrate exited 0; postgres, ray-head, api, dashboard healthy; ray-worker running")


def check_installed_versions(src: Path) -> None:
    """The image holds exactly docker/requirements.lock's versions (and the Dockerfile's torch): two builds of
    one commit install the same programs."""
    sys.path.insert(0, str(src / "docker"))
    import lock  # docker/lock.py: the one reader of the lock's pins

    pinned = lock.pins((src / "docker" / "requirements.lock").read_text())
    freeze = run(["docker", "compose", "exec", "-T", "api", "pip", "freeze"], src)
    installed = lock.pins(freeze)
    torch = installed.pop("torch", "")
    assert torch.split("+")[0] == lock.dockerfile_arg("TORCH_VERSION", src / "docker" / "Dockerfile"), torch
    installed.pop("phasetune", None)
    # pip freeze leaves out pip, setuptools and wheel.
    expected = {name: version for name, version in pinned.items() if name not in {"pip", "setuptools", "wheel"}}
    assert installed == expected, {n: (installed.get(n), expected.get(n)) for n in set(installed) | set(expected)
                                   if installed.get(n) != expected.get(n)}
    log(f"the image holds the lock's {len(expected)} pinned versions and torch {torch}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True, help="the scratch checkout to run the docs in")
    src = parser.parse_args().src
    doc = (src / "docs" / "cluster.md").read_text()

    # 1. The docs, as written: the stack comes up, the example study runs to completion.
    try:
        run_docs_block(doc, "Bring the stack up", src, timeout=1800)
    finally:  # also when the block failed: which service did not come up
        check_services(src)
    wait_healthy()
    check_installed_versions(src)
    run_docs_block(doc, "Submit a study", src, timeout=900)
    studies = api("GET", "/studies")
    for study in studies:
        wait_done(study["id"])
    demo = api("GET", "/studies/1")
    assert demo["name"] == "cluster-demo" and demo["status"] == "completed", demo
    assert demo["trial_counts"] == {"COMPLETE": 8}, demo
    log(f"study cluster-demo completed: {demo['trial_counts']}, best value {demo['best_trial']['value']:.4g}")
    summaries = httpx.get(f"{DASHBOARD}/api/studies", timeout=60).json()["study_summaries"]
    assert "cluster-demo" in {s["study_name"] for s in summaries}, summaries
    log(f"the dashboard lists: {sorted({s['study_name'] for s in summaries})}")

    # 2. The GPU profile's configuration validates (no GPU here to run it).
    run(["docker", "compose", "--profile", "gpu", "config", "--quiet"], src)
    log("docker compose --profile gpu config: valid")

    # 3. Two CPU workers, one core each (docs/cluster.md, "Scale workers").
    with (src / ".env").open("a") as env:
        env.write("PHASETUNE_WORKER_NUM_CPUS=1\n")
    started = time.monotonic()
    output = run(["docker", "compose", "up", "-d", "--wait", "--scale", "ray-worker=2"], src)
    wait_healthy()
    workers = container_ips("ray-worker", src)
    assert len(workers) == 2, workers
    log(f"two CPU workers up in {time.monotonic() - started:.0f}s: {sorted(w[:12] for w in workers.values())}\n"
        + "\n".join(line for line in output.splitlines() if "Recreate" in line or "Start" in line))

    # 4. A worker container killed while it runs a trial.
    n_trials = 6
    study_id = api("POST", "/studies", json=spec("compose-worker-kill", n_trials, epochs=40))["id"]
    running = wait_running(study_id)
    victim_ip = running[0]["user_attrs"].get("ray_node_ip")
    assert victim_ip in workers, f"trial {running[0]['number']} runs on {victim_ip}, not a worker: {workers}"
    run(["docker", "kill", workers[victim_ip]], src)
    log(f"killed worker container {workers[victim_ip][:12]} ({victim_ip}) while trial {running[0]['number']} ran")
    check_budget(study_id, "compose-worker-kill", n_trials, src)

    # 5. PostgreSQL restarted while trials run (the killed worker back first: two workers again).
    run(["docker", "compose", "up", "-d", "--wait", "--scale", "ray-worker=2"], src)
    wait_healthy()
    study_id = api("POST", "/studies", json=spec("compose-postgres-restart", n_trials, epochs=40))["id"]
    running = wait_running(study_id)
    started = time.monotonic()
    run(["docker", "compose", "restart", "postgres"], src)
    log(f"restarted the postgres container ({time.monotonic() - started:.0f}s) while trials "
        f"{[t['number'] for t in running]} ran")
    check_budget(study_id, "compose-postgres-restart", n_trials, src)

    # 6. Teardown, as docs/cluster.md's "Stop" says (compose_e2e.sh then removes the engine).
    started = time.monotonic()
    run(["docker", "compose", "down", "-v"], src, timeout=300)
    left = run(["docker", "ps", "-aq"], src) + run(["docker", "volume", "ls", "-q"], src)
    assert not left.strip(), f"left after down -v: {left}"
    log(f"docker compose down -v: no container or volume left ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
