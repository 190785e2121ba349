"""The HTTP API over real HTTP: a real `phasetune serve` process, real Ray, real SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import subprocess

import httpx
import optuna
import pytest

from tests.conftest import BIN, free_port, stop_group, wait_for, wait_for_status

pytestmark = pytest.mark.slow


def small_spec(name: str, **overrides) -> dict:
    """The README's example study, shrunk to seconds: two phases, the transition searched."""
    spec = {
        "name": name,
        "workload": {"name": "ps10", "params": {"noise": 0.1, "n_train": 1000, "n_val": 500}},
        "epochs": 4,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "schedule": {
            "family": "phases",
            "phases": [
                {"optimizer": "sgd", "lr": {"low": 0.05, "high": 1.0, "log": True}, "momentum": 0.0},
                {"optimizer": "sgd", "lr": {"low": 0.001, "high": 0.05, "log": True},
                 "momentum": {"low": 0.8, "high": 0.99}},
            ],
            "transition_epochs": [{"low": 1, "high": 3}],
        },
        "n_trials": 4,
        "max_concurrent_trials": 2,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def module_server(module_storage_url, ray_address, tmp_path_factory):
    from tests.conftest import Server

    server = Server(module_storage_url, ray_address, tmp_path_factory.mktemp("api")).start()
    yield server
    server.stop()


def _set(spec: dict, path: tuple, value) -> dict:
    spec = copy.deepcopy(spec)
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return spec


BAD_INPUTS = [
    # (what is changed, new value, the field the error must name)
    (("schedule", "family"), "nope", ["body", "schedule", "family"]),
    (("schedule", "phases", 0, "lr"), {"low": 1.0, "high": 0.05}, ["body", "schedule", "phases", 0, "lr", "low"]),
    (("schedule", "phases", 1, "momentum"), 1.5, ["body", "schedule", "phases", 1, "momentum"]),
    (("schedule", "phases", 0, "lr"), -0.1, ["body", "schedule", "phases", 0, "lr"]),
    (("schedule", "phases", 0, "optimizer"), "rmsprop", ["body", "schedule", "phases", 0, "optimizer"]),
    (("schedule", "phases", 0, "colour"), "red", ["body", "schedule", "phases", 0, "colour"]),
    (("schedule", "transition_epochs"), [{"low": 0, "high": 3}], ["body", "schedule", "transition_epochs", 0]),
    (("schedule", "transition_epochs"), [4], ["body", "schedule", "transition_epochs", 0]),
    (("schedule", "transition_epochs"), [1, 2], ["body", "schedule", "transition_epochs"]),
    (("workload", "name"), "imagenet", ["body", "workload", "name"]),
    (("workload", "params"), {"noise": 2.0}, ["body", "workload", "params", "noise"]),
    (("workload", "params"), {"depth": 3}, ["body", "workload", "params", "depth"]),
    (("objective", "metric"), "bleu", ["body", "objective", "metric"]),
    (("objective", "direction"), "sideways", ["body", "objective", "direction"]),
    (("epochs",), 0, ["body", "epochs"]),
    (("n_trials",), -1, ["body", "n_trials"]),
    (("sampler", "name"), "grid", ["body", "sampler", "name"]),
    (("name",), "has spaces", ["body", "name"]),
]


@pytest.mark.parametrize("path,value,loc", BAD_INPUTS, ids=[".".join(map(str, b[0])) for b in BAD_INPUTS])
def test_invalid_spec_gets_422_naming_the_field(module_server, path, value, loc):
    with module_server.client() as client:
        before = client.get("/studies").json()
        response = client.post("/studies", json=_set(small_spec("bad"), path, value))
        assert response.status_code == 422, response.text
        locs = [d["loc"] for d in response.json()["detail"]]
        assert loc in locs, locs
        assert client.get("/studies").json() == before  # nothing half-created


def test_multi_boundary_phases_are_checked(module_server):
    spec = small_spec("three-phase", epochs=6)
    spec["schedule"]["phases"].append({"lr": 0.001, "momentum": 0.9})
    spec["schedule"]["transition_epochs"] = [{"low": 2, "high": 4}, {"low": 2, "high": 5}]
    with module_server.client() as client:
        response = client.post("/studies", json=spec)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "schedule", "transition_epochs", 1]


def test_unknown_study_is_404(module_server):
    with module_server.client() as client:
        assert client.get("/studies/987654").status_code == 404
        assert client.post("/studies/987654/stop").status_code == 404


def _dashboard(storage_url: str, artifact_dir: str):
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

    # Optuna's own API sees the same trials, with one intermediate value per epoch.
    loaded = optuna.load_study(study_name=spec["name"], storage=storage_url)
    assert [t.number for t in loaded.trials] == [t["number"] for t in trials]
    for frozen, trial in zip(loaded.trials, trials):
        assert frozen.state == optuna.trial.TrialState.COMPLETE
        assert sorted(frozen.intermediate_values) == [0, 1, 2, 3]
        assert frozen.value == pytest.approx(trial["value"])
        assert frozen.user_attrs["schedule"] == trial["schedule"]

    # ... and so does the Optuna dashboard's HTTP API.
    dashboard, url = _dashboard(storage_url, str(server.workdir / "artifacts"))
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
        assert client.post(f"/studies/{study_id}/stop").status_code == 202
        study = wait_for_status(client, study_id, ("stopped", "completed", "failed"), timeout=120)
    assert study["status"] == "stopped"
    counts = study["trial_counts"]
    assert counts.get("RUNNING", 0) == 0 and counts.get("PRUNED", 0) >= 1
    assert sum(counts.values()) < 6
    loaded = optuna.load_study(study_name="to-stop", storage=storage_url)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in loaded.trials)


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
