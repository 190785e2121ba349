"""The HTTP API over real HTTP: a real `phasetune serve` process, real Ray, real SQLite and PostgreSQL.

Validation and routing without Ray are in test_api_fast.py; here studies really run.
"""

from __future__ import annotations

import subprocess

import httpx
import optuna
import pytest

from tests.conftest import BIN, start_dashboard, stop_group, wait_for, wait_for_status
from tests.factories import JSON, TREE_EPOCHS, make_image_folder, small_spec, tree_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module_server(module_storage_url, ray_address, tmp_path_factory):
    from tests.conftest import Server

    server = Server(module_storage_url, ray_address, tmp_path_factory.mktemp("api")).start()
    yield server
    server.stop()


def test_study_runs_to_completion_and_lands_in_optuna(storage_url, server_factory):
    server = server_factory(storage_url)
    spec = small_spec("ps10-two-phase")
    with server.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        assert client.post("/studies", json=spec).status_code == 409  # the name is taken
        study = wait_for_status(client, study_id, ("completed", "failed", "stopped"))
        assert study["status"] == "completed", study.get("error")
        assert study["trial_counts"] == {"COMPLETE": 4}
        best = study["best_trial"]
        assert best["schedule"]["family"] == "phases" and best["value"] is not None
        trials = client.get(f"/studies/{study_id}/trials").json()

    assert len(trials) == 4
    for trial in trials:
        assert trial["state"] == "COMPLETE"
        assert [m["epoch"] for m in trial["metrics"]] == [0, 1, 2, 3]
        schedule = trial["schedule"]
        transition = schedule["transition_epochs"][0]
        assert transition == trial["params"]["transition_epoch0"]
        first, second = schedule["phases"]
        expected_lr = [first["lr"] if e < transition else second["lr"] for e in range(4)]
        expected_momentum = [first["momentum"] if e < transition else second["momentum"] for e in range(4)]
        assert trial["user_attrs"]["realized_lr"] == pytest.approx(expected_lr)
        assert trial["user_attrs"]["realized_momentum"] == pytest.approx(expected_momentum)
    # Warm workers: 4 trials on 2 worker processes; a reused one built neither data nor model again.
    workers = [trial["user_attrs"]["worker"] for trial in trials]
    assert len({w["pid"] for w in workers}) <= 2
    assert all(w["data"] and w["model"] for w in workers if w["trial"] > 1) and max(w["trial"] for w in workers) > 1

    # Optuna's own API sees the same trials, with one intermediate value per epoch.
    loaded = optuna.load_study(study_name=spec["name"], storage=storage_url)
    assert [t.number for t in loaded.trials] == [t["number"] for t in trials]
    for frozen, trial in zip(loaded.trials, trials):
        assert frozen.state == optuna.trial.TrialState.COMPLETE
        assert sorted(frozen.intermediate_values) == [0, 1, 2, 3]
        assert frozen.value == pytest.approx(trial["value"])
        assert frozen.user_attrs["schedule"] == trial["schedule"]

    # ... and so does the Optuna dashboard's HTTP API.
    dashboard, url = start_dashboard(storage_url, str(server.workdir / "artifacts"))
    try:
        summaries = httpx.get(f"{url}/api/studies", timeout=10).json()["study_summaries"]
        dashboard_id = next(s["study_id"] for s in summaries if s["study_name"] == spec["name"])
        detail = httpx.get(f"{url}/api/studies/{dashboard_id}", timeout=10).json()
        assert sorted(t["number"] for t in detail["trials"]) == [t["number"] for t in trials]
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
        assert all(len(t["intermediate_values"]) == 4 for t in detail["trials"])
        # Each trial carries its schedule's plot as an artifact the dashboard shows.
        assert all([a["mimetype"] for a in t["artifacts"]] == ["image/png"] for t in detail["trials"])
    finally:
        stop_group(dashboard)


def _long_spec(name: str) -> dict:
    return small_spec(name, epochs=40, n_trials=6,
                      schedule={"family": "constant", "lr": {"low": 0.01, "high": 0.1, "log": True}, "momentum": 0.9},
                      workload={"name": "ps10", "params": {"n_train": 4000}})


def _trials_running(client: httpx.Client, study_id: int) -> bool:
    return client.get(f"/studies/{study_id}").json()["trial_counts"].get("RUNNING", 0) > 0


def test_stopping_a_study_leaves_no_running_trial(storage_url, server_factory):
    server = server_factory(storage_url)
    with server.client() as client:
        study_id = client.post("/studies", json=_long_spec("to-stop")).json()["id"]
        wait_for(lambda: _trials_running(client, study_id), 120, "a running trial")
        assert client.post(f"/studies/{study_id}/stop", headers=JSON).status_code == 202
        study = wait_for_status(client, study_id, ("stopped", "completed", "failed"), timeout=120)
    assert study["status"] == "stopped"
    counts = study["trial_counts"]
    assert counts.get("RUNNING", 0) == 0 and counts.get("PRUNED", 0) >= 1
    assert sum(counts.values()) < 6
    loaded = optuna.load_study(study_name="to-stop", storage=storage_url)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in loaded.trials)


def test_limits_bound_a_study_and_its_trials(tmp_path, server_factory):
    """More concurrency than the cluster has slots is capped (no trial waits RUNNING for a slot); a trial past its
    time limit ends PRUNED; a study past its time limit ends, completed, with nothing left RUNNING."""
    server = server_factory(f"sqlite:///{tmp_path / 'limits.db'}")
    spec = _long_spec("limited")
    spec.update(n_trials=3, max_concurrent_trials=8, trial_time_limit_s=1.0)
    with server.client() as client:
        study_id = client.post("/studies", json=spec).json()["id"]
        running = []

        def finished():
            study = client.get(f"/studies/{study_id}").json()
            running.append(study["trial_counts"].get("RUNNING", 0))
            return study if study["status"] in ("completed", "failed", "stopped") else None

        study = wait_for(finished, 300, "the time-limited study", interval=0.2)
        assert study["status"] == "completed", study.get("error")
        assert max(running) <= 2  # the session's Ray head has 2 CPUs
        trials = client.get(f"/studies/{study_id}/trials").json()
        assert [t["state"] for t in trials] == ["PRUNED"] * 3
        assert all(t["user_attrs"]["fail_reason"].startswith("trial_time_limit_s") for t in trials)
        assert all(len(t["metrics"]) < 40 for t in trials)

        spec = _long_spec("out-of-time")
        spec.update(n_trials=50, study_time_limit_s=4.0)
        study_id = client.post("/studies", json=spec).json()["id"]
        study = wait_for_status(client, study_id, ("completed", "failed", "stopped"), timeout=120)
    assert study["status"] == "completed", study.get("error")
    assert study["n_trials"] < 50 and study["trial_counts"].get("RUNNING", 0) == 0
    loaded = optuna.load_study(study_name="out-of-time", storage=server.env["PHASETUNE_STORAGE_URL"])
    assert loaded.user_attrs["phasetune:ended_by"] == "study_time_limit_s"
    assert loaded.user_attrs["phasetune:concurrency"] == 2


def test_restarting_the_api_loses_nothing(tmp_path, server_factory):
    storage = f"sqlite:///{tmp_path / 'restart.db'}"
    server = server_factory(storage)
    spec = small_spec("survives-restart", epochs=10, n_trials=3,
                      schedule={"family": "constant", "lr": {"low": 0.01, "high": 0.1, "log": True}})
    with server.client() as client:
        study_id = client.post("/studies", json=spec).json()["id"]
        wait_for(lambda: _trials_running(client, study_id), 120, "a running trial")
    server.stop()  # the API goes away mid-study; the study is owned by Ray
    restarted = server_factory(storage)
    with restarted.client() as client:
        study = wait_for_status(client, study_id, ("completed", "failed", "stopped"))
    assert study["status"] == "completed", study.get("error")
    assert study["trial_counts"] == {"COMPLETE": 3}


def _constant(name: str, workload: dict, **overrides) -> dict:
    """Two trials of one concrete schedule: nothing is searched, so any spread between them is seed noise."""
    return small_spec(name, workload=workload, epochs=3, n_trials=2, max_concurrent_trials=2,
                      schedule={"family": "constant", "lr": 0.1, "momentum": 0.9},
                      sampler={"name": "random", "seed": 0}, **overrides)


def _curves(client: httpx.Client, study_id: int) -> tuple[list[list[float]], list[dict]]:
    study = wait_for_status(client, study_id, ("completed", "failed", "stopped"))
    assert study["status"] == "completed", study.get("error")
    trials = client.get(f"/studies/{study_id}/trials").json()
    assert [t["state"] for t in trials] == ["COMPLETE"] * 2
    return [[m[key] for m in t["metrics"] for key in ("train_loss", "val_loss")] for t in trials], trials


def test_trials_with_one_schedule_learn_the_same_curve(module_server):
    """Defect: trials drew their data split, synthetic data, initial weights and batch order from their own seed,
    so the search chased seed noise. Now all come from the study's seed; a robustness study can ask otherwise."""
    workloads = {"digits": {"name": "digits", "params": {"hidden": 32}},
                 "ps10": {"name": "ps10", "params": {"n_train": 1000, "n_val": 500, "features": 128, "hidden": 64}}}
    with module_server.client() as client:
        ids = {name: client.post("/studies", json=_constant(f"same-{name}", w, seed=5)).json()["id"]
               for name, w in workloads.items()}
        robust = client.post("/studies", json=_constant("robust", workloads["digits"], seed=5,
                                                        seed_policy={"init": "trial", "batch_order": "trial"}))
        for name, study_id in ids.items():
            curves, trials = _curves(client, study_id)
            for curve in curves[1:]:
                assert curve == pytest.approx(curves[0], rel=1e-6, abs=1e-7), name
            assert [t["user_attrs"]["seeds"] for t in trials] == [{"data": 5, "init": 5, "batch_order": 5}] * 2
        curves, trials = _curves(client, robust.json()["id"])
    seeds = [t["user_attrs"]["seeds"] for t in trials]
    assert {s["data"] for s in seeds} == {5} and len({s["init"] for s in seeds}) == 2
    assert curves[1] != pytest.approx(curves[0], rel=1e-3)  # per-trial init and order: the spread is measured


def _completed_trials(server, spec: dict) -> list[dict]:
    """Submit ``spec``, wait until the study ends, check that it completed, and return its trials."""
    with server.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, created.json()["id"], ("completed", "failed", "stopped"))
        trials = client.get(f"/studies/{created.json()['id']}/trials").json()
    assert study["status"] == "completed", study.get("error")
    return trials


def test_one_invalid_sample_does_not_fail_the_study(module_server):
    """Defect: a sample with eta_min > lr raised in the searcher and the study ended failed after 2 of 8 trials."""
    spec = small_spec("cosine-eta", workload={"name": "quadratic", "params": {}}, epochs=3, n_trials=8,
                      objective={"metric": "val_loss", "direction": "minimize"},
                      schedule={"family": "cosine", "lr": {"low": 0.01, "high": 1.0, "log": True},
                                "eta_min": {"low": 0.0, "high": 0.1}},
                      sampler={"name": "random", "seed": 1})
    trials = _completed_trials(module_server, spec)
    assert len(trials) == 8 and {t["state"] for t in trials} == {"COMPLETE", "FAIL"}
    for trial in trials:
        broke_the_rule = trial["params"]["eta_min"] > trial["params"]["lr"]
        assert (trial["state"] == "FAIL") == broke_the_rule
        if broke_the_rule:
            assert "eta_min" in trial["user_attrs"]["fail_reason"] and "lr" in trial["user_attrs"]["fail_reason"]


def test_an_error_inside_a_trial_fails_that_trial_only(module_server):
    """A config that passes validation but cannot train (an image folder with a file that is no image: files are
    counted at submission, decoded by the trial) raises in the trial: that trial ends FAIL with the exception as
    its reason, is not retried, and the study goes on to complete."""
    folder = make_image_folder(module_server.workdir / "data", "corrupt", per_class=4)
    (folder / "centre" / "0.png").write_bytes(b"not a png")
    spec = _constant("cannot-decode", {"name": "image_folder", "params": {"path": "corrupt"}},
                     objective={"metric": "val_accuracy", "direction": "maximize"})
    trials = _completed_trials(module_server, spec)
    assert [t["state"] for t in trials] == ["FAIL", "FAIL"]
    for trial in trials:
        assert "UnidentifiedImageError" in trial["user_attrs"]["fail_reason"], trial["user_attrs"]["fail_reason"]
        assert "phasetune_swept" not in trial["user_attrs"]


def test_a_study_whose_driver_is_lost_for_good_is_relaunched_and_completes(storage_url, ray_client, tmp_path):
    """Killed beyond Ray's restarts (``no_restart``), the driver is gone for good: the API's reconciliation finds
    the unfinished study without one, relaunches it, and the study completes its budget with nothing RUNNING;
    /health counts the relaunch."""
    import ray

    from phasetune.workers.driver import find_driver
    from tests.conftest import Server

    server = Server(storage_url, ray_client, tmp_path, PHASETUNE_RECONCILE_S="2").start()
    try:
        with server.client() as client:
            spec = small_spec("lost-driver", epochs=6, n_trials=4,
                              schedule={"family": "constant", "lr": {"low": 0.01, "high": 0.1}, "momentum": 0.9})
            study_id = client.post("/studies", json=spec).json()["id"]
            wait_for(lambda: _trials_running(client, study_id), 120, "a running trial")
            ray.kill(find_driver(storage_url, "lost-driver"), no_restart=True)
            study = wait_for_status(client, study_id, ("completed", "failed", "stopped"))
            health = client.get("/health").json()
        assert study["status"] == "completed", study.get("error")
        counts = study["trial_counts"]
        assert counts.get("RUNNING", 0) == 0 and counts.get("COMPLETE", 0) >= 4, counts
        assert health["relaunched_drivers"] == {"lost-driver": 1} and health["status"] == "ok", health
    finally:
        server.stop()


def test_resources_no_node_has_are_a_422_or_with_wait_for_nodes_a_visible_wait(module_server, ray_address,
                                                                                  tmp_path):
    """The session's cluster has no GPU: a study or probe asking for one is a 422 naming the field and the nodes
    (it used to wait 10 minutes, then fail); nothing is stored. With PHASETUNE_WAIT_FOR_NODES (a cluster that gains
    nodes later) the study is admitted and shows waiting_for_resources with what it waits for, and a stop ends it
    stopped."""
    from tests.conftest import Server

    gpu = {"cpu": 1, "gpu": 1}
    spec = small_spec("needs-a-gpu", n_trials=1, resources_per_trial=gpu)
    with module_server.client() as client:
        refused = client.post("/studies", json=spec)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["body", "resources_per_trial"] and detail["type"] == "rule_error", detail
        assert "'GPU'" not in detail["msg"] and "CPU" in detail["msg"], detail  # the nodes it has, and no GPU
        assert all(s["name"] != "needs-a-gpu" for s in client.get("/studies").json())
        probe = client.post("/probes", json={"kind": "curvature", "workload": {"name": "quadratic"},
                                             "resources": gpu})
        assert probe.status_code == 422 and probe.json()["detail"][0]["loc"] == ["body", "resources"], probe.text
    waiting = Server(f"sqlite:///{tmp_path / 'wait.db'}", ray_address, tmp_path, PHASETUNE_WAIT_FOR_NODES="true")
    try:
        waiting.start()
        with waiting.client() as client:
            created = client.post("/studies", json=spec)
            assert created.status_code == 201, created.text
            study_id = created.json()["id"]
            study = wait_for(lambda: (s := client.get(f"/studies/{study_id}").json())["status"]
                             == "waiting_for_resources" and s, 120, "the study to wait for a GPU")
            assert "gpu: 1" in study["waiting_for"], study
            assert client.post(f"/studies/{study_id}/stop", headers=JSON).status_code == 202
            study = wait_for_status(client, study_id, ("completed", "failed", "stopped"), timeout=120)
        assert study["status"] == "stopped" and study["n_trials"] == 0, study
    finally:
        waiting.stop()


def test_a_tree_study_over_rest_with_two_workers_survives_its_driver_killed(storage_url, server_factory, ray_client):
    """The schedule tree over REST with 2 trials at once: the driver killed mid-study is restarted and decides from
    the tree's stored state; the study completes with trunks shared by several leaves (resumed from a trunk's
    checkpoint, their curves whole and the reused epochs marked), stops with their reasons, and the same trials in
    the API, ``optuna.load_study`` and the dashboard."""
    import ray

    from phasetune.workers.driver import find_driver

    name, n_trials, epochs = "tree-rest", 16, TREE_EPOCHS
    server = server_factory(storage_url)
    with server.client() as client:
        created = client.post("/studies", json=tree_spec(name, n_trials, max_concurrent_trials=2))
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        wait_for(lambda: client.get(f"/studies/{study_id}").json()["trial_counts"].get("COMPLETE", 0) >= 3, 240,
                 "three completed leaves")
        ray.kill(find_driver(storage_url, name), no_restart=False)  # Ray restarts it (max_restarts)
        study = wait_for_status(client, study_id, ("completed", "failed", "stopped"))
        trials = {t["number"]: t for t in client.get(f"/studies/{study_id}/trials").json()}
    assert study["status"] == "completed", study.get("error")
    watched = subprocess.run([str(BIN / "phasetune"), "watch", str(study_id), "--api", server.url],
                             capture_output=True, text=True, timeout=60)
    assert f"pruned={study['trial_counts'].get('PRUNED', 0)}" in watched.stderr, watched.stderr  # tqdm's line
    swept = [t["number"] for t in trials.values() if t["user_attrs"].get("phasetune_swept")]
    assert swept, "the kill came after the study's end: nothing was running"
    counted = [t for t in trials.values() if not t["user_attrs"].get("phasetune_swept")]
    assert len(counted) == n_trials and {t["state"] for t in counted} <= {"COMPLETE", "PRUNED"}

    tree = study["tree"]
    assert max(len(leaves) for leaves in tree["trunks"].values()) >= 3, tree["trunks"]
    assert tree["stops"], tree  # prefixes or leaves stopped
    for trial in counted:
        if trial["state"] == "PRUNED":
            decision = trial["user_attrs"]["tree"]["decisions"][-1]
            assert decision["stop"] and trial["user_attrs"]["fail_reason"] == decision["reason"], trial["user_attrs"]
    resumed = [t for t in counted if (t["user_attrs"].get("branch") or {}).get("parent") is not None]
    assert resumed, "no leaf resumed from its trunk's checkpoint"
    for leaf in resumed:
        reused = leaf["user_attrs"]["branch"]["reused_epochs"]
        marks = [bool(m.get("reused")) for m in leaf["metrics"]]  # (a leaf may be stopped on a reused epoch)
        assert 1 <= reused <= 4 and marks[:reused] == [True] * reused and not any(marks[reused:]), marks
        if leaf["state"] == "COMPLETE":
            assert [m["epoch"] for m in leaf["metrics"]] == list(range(epochs))
    assert study["checkpoints"]["reuses"] == len(resumed), study["checkpoints"]
    after = [t for t in counted if t["number"] > max(swept)]
    assert any(t["user_attrs"]["tree"]["decisions"] for t in after), "the restarted driver took no decision"

    loaded = optuna.load_study(study_name=name, storage=storage_url)
    assert [t.number for t in loaded.trials] == sorted(trials)
    for frozen in loaded.trials:
        assert frozen.state != optuna.trial.TrialState.RUNNING
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(frozen.intermediate_values) == list(range(epochs))
    dashboard, url = start_dashboard(storage_url, str(server.workdir / "artifacts"))
    try:
        summaries = httpx.get(f"{url}/api/studies", timeout=10).json()["study_summaries"]
        dashboard_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
        detail = httpx.get(f"{url}/api/studies/{dashboard_id}", timeout=10).json()
        shown = {t["number"]: t for t in detail["trials"]}
        assert all(len(shown[t["number"]]["intermediate_values"]) == epochs for t in counted
                   if t["state"] == "COMPLETE")
    finally:
        stop_group(dashboard)
