"""Validation and routing through FastAPI's TestClient against a real storage (SQLite and PostgreSQL), no Ray.

The app is built with ``run_studies=False``: studies are stored and read exactly as in ``phasetune serve``, but no
driver is launched, so every case here takes milliseconds. What needs Ray (a study that runs, a probe) is in the
slow tests (test_api.py, test_probes_api.py).
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient

from phasetune.search_spaces import FAMILIES
from phasetune.service.main import create_app
from phasetune.service.settings import Settings
from phasetune.workers.workloads import workloads
from tests.factories import JSON, make_npz, small_spec


@pytest.fixture(scope="module")
def storage(module_storage_url: str) -> str:
    return module_storage_url


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_npz(root)
    outside = tmp_path_factory.mktemp("outside")
    make_npz(outside, "secret.npz")
    (root / "escape.npz").symlink_to(outside / "secret.npz")
    return root


@pytest.fixture(scope="module")
def client(storage: str, data_root: Path, tmp_path_factory) -> TestClient:
    workdir = tmp_path_factory.mktemp("api")
    settings = Settings(storage_url=storage, start_dashboard=False, results_dir=str(workdir / "results"),
                        artifacts_dir=str(workdir / "artifacts"), data_root=str(data_root))
    with TestClient(create_app(settings, run_studies=False)) as test_client:
        yield test_client


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
    # Seeds must be what the samplers and numpy take (a driver dying on one left a study queued forever).
    (("seed",), -1, ["body", "seed"]),
    (("seed",), 2**32, ["body", "seed"]),
    (("sampler", "seed"), -1, ["body", "sampler", "seed"]),
    (("seed_policy",), {"init": "sometimes"}, ["body", "seed_policy", "init"]),
    (("seed_policy",), {"data": "trial"}, ["body", "seed_policy", "data"]),
    (("colour",), "red", ["body", "colour"]),
    # Units are the schedule space's to check, like everything else in it.
    (("schedule", "phases", 1, "momentum"), {"low": 0.8, "high": 0.9, "unit": "lr_crit"},
     ["body", "schedule", "phases", 1, "momentum", "unit"]),
    (("schedule", "phases", 0, "lr"), {"low": 1, "high": 2, "unit": "furlongs"},
     ["body", "schedule", "phases", 0, "lr", "unit"]),
    # At ps10's real 8 steps per epoch (1000 examples / 128), 0.05 epochs is no step at all.
    (("schedule", "phases", 0, "warmup"), {"epochs": 0.05}, ["body", "schedule", "phases", 0, "warmup", "epochs"]),
    # Limits that protect the machine.
    (("max_concurrent_trials",), 257, ["body", "max_concurrent_trials"]),
    (("trial_time_limit_s",), 0, ["body", "trial_time_limit_s"]),
    (("study_time_limit_s",), -5, ["body", "study_time_limit_s"]),
    (("study_time_limit_s",), 1e9, ["body", "study_time_limit_s"]),
    # Early stopping: each policy takes its own options only; small epochs leave no decision point.
    (("early_stopping",), {"policy": "hyperband"}, ["body", "early_stopping", "policy"]),
    (("early_stopping",), {"policy": "median", "reduction_factor": 3}, ["body", "early_stopping", "reduction_factor"]),
    (("early_stopping",), {"policy": "none", "grace_period": 2}, ["body", "early_stopping", "grace_period"]),
    (("early_stopping",), {"policy": "asha", "cooldown_fraction": 0.1},
     ["body", "early_stopping", "cooldown_fraction"]),
    (("early_stopping",), {"policy": "asha", "patience": 3}, ["body", "early_stopping", "patience"]),
    (("early_stopping",), {"policy": "asha", "reduction_factor": 1}, ["body", "early_stopping", "reduction_factor"]),
    (("early_stopping",), {"policy": "asha", "grace_period": 4}, ["body", "early_stopping", "grace_period"]),
    # Retired (the schedule tree replaced them): the 422 says so.
    (("early_stopping",), {"policy": "schedule_aware"}, ["body", "early_stopping", "policy"]),
    (("branching",), {"enabled": True}, ["body", "branching"]),
    # Admission: workload params within their bounds (quadratic dim 200000 asked for a 320 GB matrix), and specs
    # of a reasonable size (a 1.7M-choice spec was stored and returned to every reader).
    (("workload",), {"name": "ps10", "params": {"n_train": 10**9}}, ["body", "workload", "params", "n_train"]),
    (("workload",), {"name": "ps10", "params": {"hidden": 2**63}}, ["body", "workload", "params", "hidden"]),
    (("workload",), {"name": "quadratic", "params": {"dim": 200_000}}, ["body", "workload", "params", "dim"]),
    (("workload",), {"name": "digits", "params": {"hidden": 10**9}}, ["body", "workload", "params", "hidden"]),
    (("schedule", "phases", 1, "momentum"), {"choices": [0.9] * 1001}, ["body", "schedule", "phases", 1, "momentum",
                                                                       "choices"]),
    (("schedule",), {"choices": [{"family": "constant", "lr": 0.1}] * 65}, ["body", "schedule", "choices"]),
    (("schedule",), {"family": "phases", "phases": [{"lr": 0.1}] * 17, "transition_epochs": list(range(1, 17))},
     ["body", "schedule", "phases"]),
    # The search strategy: the tree's options within their bounds, plain takes none.
    (("strategy",), {"name": "forest"}, ["body", "strategy", "name"]),
    (("strategy",), {"name": "tree", "grid": 1}, ["body", "strategy", "grid"]),
    (("strategy",), {"name": "tree", "grid": 2.5}, ["body", "strategy", "grid"]),
    (("strategy",), {"name": "tree", "reduction_factor": 1}, ["body", "strategy", "reduction_factor"]),
    (("strategy",), {"name": "tree", "gate_threshold": 2}, ["body", "strategy", "gate_threshold"]),
    (("strategy",), {"name": "tree", "gate_min_pairs": 2}, ["body", "strategy", "gate_min_pairs"]),
    (("strategy",), {"name": "tree", "cooldown_fraction": 0}, ["body", "strategy", "cooldown_fraction"]),
    (("strategy",), {"name": "tree", "max_bytes": 10}, ["body", "strategy", "max_bytes"]),
    (("strategy",), {"name": "tree", "depth": 3}, ["body", "strategy", "depth"]),
    (("strategy",), {"name": "plain", "grid": 3}, ["body", "strategy", "grid"]),
]
TREE = {"name": "tree"}
TREE_CONFLICTS = [
    # (overrides of small_spec beside a tree strategy, the field the error must name)
    ({"schedule": {"family": "constant", "lr": 0.1}}, ["body", "strategy", "name"]),
    ({"schedule": {"family": "phases", "phases": [{"lr": 0.1}], "transition_epochs": []}},
     ["body", "schedule", "phases"]),
    ({"schedule": {"family": "phases", "phases": [{"lr": 0.1}, {"lr": 0.01}],
                   "transition_epochs": [{"low": 1.2, "high": 1.8}]}}, ["body", "schedule", "transition_epochs", 0]),
    ({"early_stopping": {"policy": "asha"}}, ["body", "early_stopping", "policy"]),
    ({"seed_policy": {"init": "trial"}}, ["body", "seed_policy", "init"]),
]


@pytest.mark.parametrize("path,value,loc", BAD_INPUTS, ids=[".".join(map(str, b[0])) for b in BAD_INPUTS])
def test_invalid_spec_gets_422_naming_the_field(client, path, value, loc):
    before = client.get("/studies").json()
    response = client.post("/studies", json=_set(small_spec("bad"), path, value))
    assert response.status_code == 422, response.text
    locs = [d["loc"] for d in response.json()["detail"]]
    assert loc in locs, locs
    assert client.get("/studies").json() == before  # nothing half-created


@pytest.mark.parametrize("overrides,loc", TREE_CONFLICTS, ids=[str(c[1][-1]) for c in TREE_CONFLICTS])
def test_a_tree_study_that_cannot_share_prefixes_gets_422_naming_the_field(client, overrides, loc):
    before = client.get("/studies").json()
    response = client.post("/studies", json=small_spec("bad-tree", strategy=TREE, **overrides))
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]], response.text
    assert client.get("/studies").json() == before


def test_a_retired_option_is_a_422_saying_what_replaced_it(client):
    for field, value in (("early_stopping", {"policy": "schedule_aware"}), ("branching", {"enabled": True})):
        response = client.post("/studies", json=small_spec("retired", **{field: value}))
        assert response.status_code == 422, response.text
        assert "retired" in response.text and '\\"strategy\\": {\\"name\\": \\"tree\\"}' in response.text, response.text


def test_a_tree_study_is_stored_with_its_options(client):
    created = client.post("/studies", json=small_spec("tree-ok", strategy={"name": "tree", "grid": 4}))
    assert created.status_code == 201, created.text
    strategy = created.json()["spec"]["strategy"]
    assert strategy["name"] == "tree" and strategy["grid"] == 4 and strategy["gate_threshold"] == 0.5, strategy
    assert client.post("/studies", json=small_spec("plain-ok")).json()["spec"]["strategy"] == {"name": "plain"}


def test_a_study_asking_too_many_epochs_is_refused(client):
    response = client.post("/studies", json=small_spec("too-big", epochs=1000, n_trials=2000))
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "n_trials"] and "epochs × n_trials = 2,000,000" in detail["msg"]


def _npz_study(path: str) -> dict:
    return small_spec("on-npz", workload={"name": "npz", "params": {"path": path}}, objective={"metric": "val_loss"})


@pytest.mark.parametrize("path", ["/etc/passwd", "../data/blobs.npz", "escape.npz", "missing.npz", ""])
def test_a_path_outside_the_data_root_is_refused(client, path):
    response = client.post("/studies", json=_npz_study(path))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "workload", "params", "path"]


def test_a_study_on_the_data_root_is_accepted_and_records_it(client, data_root):
    response = client.post("/studies", json=_npz_study("blobs.npz"))
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["workload"]["params"]["path"] == "blobs.npz" and spec["data_root"] == str(data_root)
    assert spec["objective"]["direction"] == "minimize"  # the metric's own: a loss goes down


def test_the_workloads_route_lists_every_registered_workload(client):
    listed = {w["name"]: w for w in client.get("/workloads").json()}
    assert {"ps10", "digits", "quadratic", "fashion_mnist", "npz", "image_folder"} <= set(listed)
    digits = listed["digits"]
    assert (digits["distribution"], digits["loss_kind"], digits["error"]) == ("phasetune", "cross_entropy", None)
    assert {m["name"]: m["direction"] for m in digits["metrics"]} == {
        "train_loss": "minimize", "val_loss": "minimize", "val_accuracy": "maximize"}
    assert {p["name"]: (p["kind"], p["default"]) for p in digits["params"]} == {
        "hidden": ("int", 64), "batch_size": ("int", 64), "val_fraction": ("float", 0.2)}
    path = next(p for p in listed["npz"]["params"] if p["name"] == "path")
    assert path["kind"] == "path" and path["required"]
    assert [m["name"] for m in listed["fashion_mnist"]["metrics"] if m["final"]] == ["test_loss", "test_accuracy"]
    unknown = client.post("/studies", json=small_spec("mycnn", workload={"name": "mycnn"}))
    assert unknown.status_code == 422 and "'image_folder'" in unknown.json()["detail"][0]["msg"]


def test_fashion_mnist_without_its_files_names_the_package(client, monkeypatch, tmp_path):
    monkeypatch.setenv("PHASETUNE_FASHION_MNIST_DIR", str(tmp_path))
    spec = small_spec("fm", workload={"name": "fashion_mnist", "params": {}})
    response = client.post("/studies", json=spec)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "workload", "name"] and "apt-get install dataset-fashion-mnist" in detail["msg"]
    assert "dataset-fashion-mnist" in next(w for w in client.get("/workloads").json()
                                           if w["name"] == "fashion_mnist")["unavailable"]


@pytest.mark.skipif(workloads()["fashion_mnist"].unavailable() is not None, reason="dataset-fashion-mnist missing")
def test_test_metrics_are_never_an_objective(client):
    spec = small_spec("fm-test", workload={"name": "fashion_mnist", "params": {}},
                      objective={"metric": "test_accuracy", "direction": "maximize"})
    response = client.post("/studies", json=spec)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "objective", "metric"]


def test_multi_boundary_phases_are_checked(client):
    spec = small_spec("three-phase", epochs=6)
    spec["schedule"]["phases"].append({"lr": 0.001, "momentum": 0.9})
    spec["schedule"]["transition_epochs"] = [{"low": 2, "high": 4}, {"low": 2, "high": 5}]
    response = client.post("/studies", json=spec)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "schedule", "transition_epochs", 1]


BAD_UNITS = [
    # (schedule, the field the 422 must name)
    ({"family": "constant", "lr": {"low": 0.1, "high": 0.5, "unit": "furlongs"}}, ["body", "schedule", "lr", "unit"]),
    ({"family": "constant", "lr": 0.1, "momentum": {"low": 0.1, "high": 0.5, "unit": "lr_crit"}},
     ["body", "schedule", "momentum", "unit"]),
    ({"preset": "regimes", "colour": "red"}, ["body", "schedule", "colour"]),
    ({"preset": "regimes", "phase1_upper": 1.5}, ["body", "schedule", "phase1_upper"]),
    ({"preset": "regimes", "phase2_effective_lr": {"low": 0.1, "high": 2.0}},
     ["body", "schedule", "phase2_effective_lr", "high"]),
    ({"preset": "regimes", "transition_epoch": 9}, ["body", "schedule", "transition_epoch"]),
    ({"preset": "twostep"}, ["body", "schedule", "preset"]),
]


@pytest.mark.parametrize("schedule,loc", BAD_UNITS, ids=[".".join(map(str, b[1][2:])) for b in BAD_UNITS])
def test_units_and_presets_are_checked_at_submission(client, schedule, loc):
    spec = small_spec("bad-units", workload={"name": "quadratic", "params": {}}, epochs=3, schedule=schedule,
                      objective={"metric": "train_loss", "direction": "minimize"})
    response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]], response.text


def test_a_study_is_stored_in_optuna_under_its_optuna_id(client, storage):
    created = client.post("/studies", json=small_spec("stored"))
    assert created.status_code == 201, created.text
    study = created.json()
    assert study["status"] == "queued" and study["n_trials"] == 0 and study["created_at"]
    # One id everywhere: phasetune's is Optuna's (the dashboard's).
    assert study["id"] == optuna.storages.RDBStorage(storage).get_study_id_from_name("stored")
    # The dashboard and optuna.load_study name the objective (not "Objective 0").
    metric = study["spec"]["objective"]["metric"]
    assert optuna.load_study(study_name="stored", storage=storage).metric_names == [metric]
    # The stored spec has every default filled in, from one owner.
    spec = study["spec"]
    assert spec["seed"] == 0 and spec["seed_policy"] == {"init": "study", "batch_order": "study"}
    assert spec["sampler"] == {"name": "tpe", "seed": 0, "n_startup_trials": 2}
    assert spec["workload"]["params"]["batch_size"] == 128  # ps10's default
    assert client.get(f"/studies/{study['id']}").json() == study
    assert client.get(f"/studies/{study['id']}/trials").json() == []
    assert study["id"] in [s["id"] for s in client.get("/studies").json()]
    assert client.post("/studies", json=small_spec("stored")).status_code == 409


def test_concurrent_submissions_of_one_name_give_one_study(client):
    responses: list = []

    def post() -> None:
        responses.append(client.post("/studies", json=small_spec("contested")))

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in responses) == [201] + [409] * 9, [r.text for r in responses]
    assert [s["name"] for s in client.get("/studies").json()].count("contested") == 1


def test_unknown_or_foreign_ids_are_404(client, storage):
    foreign = optuna.create_study(study_name="not-phasetunes", storage=storage)  # another user of the database
    foreign_id = optuna.storages.RDBStorage(storage).get_study_id_from_name("not-phasetunes")
    for study_id in (987654, foreign_id, 2**31, 162266076694547582059080904081408):
        assert client.get(f"/studies/{study_id}").status_code == 404, study_id
        assert client.get(f"/studies/{study_id}/trials").status_code == 404, study_id
        assert client.post(f"/studies/{study_id}/stop", headers=JSON).status_code == 404, study_id
    assert "not-phasetunes" not in [s["name"] for s in client.get("/studies").json()]
    assert foreign.study_name == "not-phasetunes"


def test_not_found_has_one_shape(client):
    """Every "no such id" is one exception (service.errors.NotFound) and one body: the kind of thing and its id."""
    assert client.get("/studies/987654").json() == {"detail": "no study with id 987654"}
    assert client.get("/probes/987654").json() == {"detail": "no probe with id 987654"}


def test_stopping_a_queued_study_stops_it_at_once(client):
    study_id = client.post("/studies", json=small_spec("stop-queued")).json()["id"]
    stopped = client.post(f"/studies/{study_id}/stop", headers=JSON)
    assert stopped.status_code == 202 and stopped.json()["status"] == "stopped"
    assert client.post(f"/studies/{study_id}/stop", headers=JSON).json()["status"] == "stopped"  # finished: kept


QUADRATIC = {"name": "quadratic", "params": {"dim": 10, "eig_max": 4.0}}
BAD_PROBES = [
    # (request body, the field the 422 must name)
    ({"kind": "hessian", "workload": QUADRATIC}, ["body", "kind"]),
    ({"kind": "curvature", "workload": {"name": "imagenet"}}, ["body", "workload", "name"]),
    ({"kind": "curvature", "workload": {"name": "quadratic", "params": {"eig_max": -1.0}}},
     ["body", "workload", "params", "eig_max"]),
    ({"kind": "curvature", "workload": {"name": "quadratic", "params": {"depth": 3}}},
     ["body", "workload", "params", "depth"]),
    ({"kind": "curvature", "workload": QUADRATIC, "options": {"iters": 0}}, ["body", "options", "iters"]),
    ({"kind": "curvature", "workload": QUADRATIC, "options": {"steps": 10}}, ["body", "options", "steps"]),
    ({"kind": "curvature", "workload": QUADRATIC, "options": {"mode": "test"}}, ["body", "options", "mode"]),
    ({"kind": "lr_range", "workload": QUADRATIC, "options": {"lr_low": 1.0, "lr_high": 0.1}},
     ["body", "options", "lr_low"]),
    ({"kind": "curvature", "workload": QUADRATIC, "seed": -3}, ["body", "seed"]),
    ({"kind": "curvature", "workload": QUADRATIC, "colour": "red"}, ["body", "colour"]),
]


@pytest.mark.parametrize("body,loc", BAD_PROBES, ids=[".".join(map(str, b[1][1:])) for b in BAD_PROBES])
def test_invalid_probe_gets_422_naming_the_field(client, body, loc):
    response = client.post("/probes", json=body)
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]], response.text


def test_probes_wait_for_no_cluster_and_unknown_ones_404(client):
    """An app that runs nothing (run_studies=False) stores a probe, as it stores studies; one that runs probes
    but has no Ray cluster connected yet answers 503 (retry) and stores nothing."""
    from phasetune.service.launcher import Launcher
    from phasetune.service.probe_runner import ProbeRunner

    stored = client.post("/probes", json={"kind": "curvature", "workload": QUADRATIC})
    assert stored.status_code == 202 and stored.json()["status"] == "running", stored.text
    assert client.get(f"/probes/{stored.json()['id']}").json()["status"] == "running"
    state = client.app.state
    state.launcher = Launcher(state.settings, state.storage)
    state.probe_runner = ProbeRunner(state.launcher)
    try:
        response = client.post("/probes", json={"kind": "curvature", "workload": QUADRATIC})
    finally:
        state.launcher = state.probe_runner = None
    assert response.status_code == 503 and "Ray" in response.json()["detail"]
    assert client.get(f"/probes/{stored.json()['id'] + 1}").status_code == 404  # nothing was stored
    assert client.get("/probes/987654").status_code == 404
    assert client.get(f"/probes/{2**40}").status_code == 404


def test_resources_no_node_has_are_a_422_naming_the_field(client):
    """Admission checks resources against the nodes the launcher last saw (no Ray call in the request): none
    has a GPU, so a study asking for one is a 422 and nothing is stored; one that fits is admitted. (The slow
    test_api checks the same against a real cluster, and PHASETUNE_WAIT_FOR_NODES's visible wait.)"""
    from phasetune.service.launcher import Launcher

    state = client.app.state
    state.launcher = Launcher(state.settings, state.storage)
    state.launcher.nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    try:
        refused = client.post("/studies", json=small_spec("gpu-less", resources_per_trial={"cpu": 1, "gpu": 1}))
        too_many = client.post("/studies", json=small_spec("cpu-less", resources_per_trial={"cpu": 3}))
        fits = client.post("/studies", json=small_spec("fits", resources_per_trial={"cpu": 2}))
    finally:
        state.launcher = None
    for response in (refused, too_many):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "resources_per_trial"], response.text
    assert "{'CPU': 2.0}" in refused.json()["detail"][0]["msg"], refused.text  # the alive nodes, as they are
    assert fits.status_code == 201, fits.text
    names = {s["name"] for s in client.get("/studies").json()}
    assert "fits" in names and not {"gpu-less", "cpu-less"} & names


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_413_and_not_echoed(client, chunked):
    """A 20 MB body (the cap is 1 MiB) is refused before it is parsed, whether its size is declared or not."""
    body = json.dumps(small_spec("huge", colour="x" * 20_000_000)).encode()
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = client.post("/studies", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert "PHASETUNE_MAX_BODY_BYTES" in response.json()["detail"] and len(response.content) < 1000
    assert all(s["name"] != "huge" for s in client.get("/studies").json())


@pytest.mark.parametrize("depth", [40, 200_000])
def test_a_body_nested_too_deep_is_a_422_and_not_stored(client, depth):
    """JSON nested beyond MAX_DEPTH is refused before it is parsed (or stored): a 422 naming
    the body, where the parser's recursion used to answer an undocumented 400."""
    spec = json.dumps(small_spec(f"deep-{depth}"))
    body = spec[:-1] + ', "colour": ' + "[" * depth + "]" * depth + "}"
    response = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    assert response.json()["detail"][0]["loc"] == ["body"] and "nested" in response.json()["detail"][0]["msg"]
    assert all(s["name"] != f"deep-{depth}" for s in client.get("/studies").json())
    nested = json.loads(spec)
    nested["workload"]["params"] = {"noise": 0.1}
    nested["schedule"] = {"choices": [{"family": "phases", "phases": [{"lr": {"choices": [0.1, 0.2]}}]}]}
    assert client.post("/studies", json=nested).status_code == 201  # a real spec is far from the cap


@pytest.mark.timeout(60)
def test_a_body_of_escapes_in_an_unterminated_string_is_answered_at_once(client):
    """The depth check reads strings with a pattern that cannot backtrack: 1 MiB of escapes in a string that never
    closes (quadratic for a pattern that must find the closing quote: hours, before auth) is an invalid-JSON 422."""
    body = b'{"name": "' + b'\\"' * 500_000
    response = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text[:300]


@pytest.mark.timeout(60)
def test_early_stopping_bounds_are_the_domains(client):
    """The API's bounds on early-stopping options are the domain's own (one Interval each): a value the schema
    allows is accepted (at once: rungs for a reduction factor just above 1 once took ~1e9 steps per epoch, and the
    request hung), one beyond it refused by both."""
    spec = small_spec("tiny-reduction", epochs=8, early_stopping={"policy": "asha", "reduction_factor": 1 + 1e-9})
    assert client.post("/studies", json=spec).status_code == 201
    spec = small_spec("big-reduction", epochs=8, early_stopping={"policy": "asha", "reduction_factor": 1001})
    assert client.post("/studies", json=spec).status_code == 422


def test_openapi_states_the_schedule_language_and_each_workloads_params(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["StudyCreate"]["properties"]["schedule"] == {"$ref": "#/components/schemas/Schedule"}
    assert {f"Segment.{name}" for name in FAMILIES} | {"Phases", "Preset", "Warmup"} <= set(components)
    names = {option["properties"]["name"]["const"] for option in components["WorkloadIn"]["anyOf"]}
    assert {"quadratic", "ps10", "digits"} <= names
    assert "val_accuracy" in components["ObjectiveIn"]["properties"]["metric"]["enum"]


def test_openapi_documents_the_errors(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"201", "409", "422"} <= set(paths["/studies"]["post"]["responses"])
    for path, method in (("/studies/{study_id}", "get"), ("/studies/{study_id}/trials", "get"),
                         ("/studies/{study_id}/stop", "post"), ("/probes/{probe_id}", "get")):
        assert "404" in paths[path][method]["responses"], path


@pytest.mark.parametrize("field,raw,loc", [
    ("study_time_limit_s", "1e999", ["body", "study_time_limit_s"]),
    ("trial_time_limit_s", "NaN", ["body", "trial_time_limit_s"]),
    ("resources_per_trial", '{"cpu": 1e999}', ["body", "resources_per_trial", "cpu"]),
])
def test_non_finite_numbers_are_422s_not_500s(client, field, raw, loc):
    """Python's JSON parser takes 1e999 and NaN; echoed back in a 422 they cannot be encoded (a 500 before)."""
    body = json.dumps(small_spec("not-finite"))[:-1] + f', "{field}": {raw}}}'
    response = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [loc]
    assert response.json()["detail"][0]["input"] is None  # the one JSON-safety rule: non-finite is null
    assert all(s["name"] != "not-finite" for s in client.get("/studies").json())


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_render_from_the_apps_own_assets(client, page):
    """Offline, a page that loads its scripts from a CDN is blank: every asset the page names is served here."""
    import re

    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html.text)
    urls = [a or b for a, b in urls]
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # no other host
        fetched = client.get(url)
        assert fetched.status_code == 200 and len(fetched.content) > 100, url
    assert "http://" not in html.text and "https://" not in html.text, html.text


def test_a_study_deleted_with_the_dashboard_is_gone_from_the_api(client, storage, tmp_path):
    """The dashboard's trash icon calls DELETE /api/studies/{id} on the same storage: the API then answers 404 for
    that study (500 before), lists the others, and the name can be used again. The dashboard's own WSGI app serves
    the DELETE in this process (`optuna-dashboard` runs that app; starting its process would cost seconds here)."""
    import httpx
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    doomed = client.post("/studies", json=small_spec("dashboard-doomed"))
    kept = client.post("/studies", json=small_spec("dashboard-kept"))
    assert doomed.status_code == kept.status_code == 201
    dashboard = optuna_dashboard.wsgi(storage, artifact_store=FileSystemArtifactStore(str(tmp_path)))
    with httpx.Client(transport=httpx.WSGITransport(app=dashboard), base_url="http://dashboard") as browser:
        deleted = browser.delete(f"/api/studies/{doomed.json()['id']}")
    assert deleted.status_code in (200, 204), deleted.text
    gone = doomed.json()["id"]
    assert client.get(f"/studies/{gone}").status_code == 404
    assert client.get(f"/studies/{gone}/trials").status_code == 404
    assert client.post(f"/studies/{gone}/stop", headers=JSON).status_code == 404
    names = [s["name"] for s in client.get("/studies").json()]
    assert "dashboard-kept" in names and "dashboard-doomed" not in names
    again = client.post("/studies", json=small_spec("dashboard-doomed"))
    assert again.status_code == 201, again.text
    assert again.json()["id"] != gone


def test_a_storage_that_stops_answering_is_503_and_loses_nothing(postgres_url, tmp_path):
    """The database goes away mid-service (here: its connections cut and the database renamed, as a restart or a
    network cut looks to the API): requests are 503s naming the storage, /health says so, nothing is half-created;
    once it is back, the API answers again without a restart."""
    import sqlalchemy

    from tests.conftest import PG_ADMIN_URL

    settings = Settings(storage_url=postgres_url, start_dashboard=False, results_dir=str(tmp_path / "results"),
                        artifacts_dir=str(tmp_path / "artifacts"))
    name = postgres_url.rsplit("/", 1)[1]
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def rename(old: str, new: str) -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       f"WHERE datname = '{old}' AND pid <> pg_backend_pid()")
            connection.exec_driver_sql(f'ALTER DATABASE "{old}" RENAME TO "{new}"')

    with TestClient(create_app(settings, run_studies=False)) as client:
        assert client.post("/studies", json=small_spec("before-the-cut")).status_code == 201
        rename(name, name + "_away")
        try:
            during = client.post("/studies", json=small_spec("during-the-cut"))
            assert during.status_code == 503 and "storage" in during.json()["detail"], during.text
            assert client.get("/studies").status_code == 503
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["problems"][0].startswith("storage"), health.text
        finally:
            rename(name + "_away", name)
        assert client.get("/health").status_code == 200
        assert [s["name"] for s in client.get("/studies").json()] == ["before-the-cut"]  # nothing half-created
        assert client.post("/studies", json=small_spec("during-the-cut")).status_code == 201
    admin.dispose()
