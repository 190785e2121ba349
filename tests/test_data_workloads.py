"""Studies over REST on the data workloads: npz and image_folder on files the test writes into a temporary data
root, and fashion_mnist on a small subset. Real `phasetune serve`, real Ray, SQLite."""

from __future__ import annotations

import pytest

from phasetune.workers.workloads import workloads
from tests.conftest import wait_for_status
from tests.factories import make_image_folder, make_npz, small_spec

pytestmark = pytest.mark.slow


def _spec(name: str, workload: dict) -> dict:
    return small_spec(name, workload=workload, epochs=3, n_trials=2, max_concurrent_trials=2,
                      objective={"metric": "val_accuracy"},
                      schedule={"family": "phases", "transition_epochs": [2],
                                "phases": [{"lr": {"low": 0.05, "high": 0.2, "log": True}, "momentum": 0.9},
                                           {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}]},
                      sampler={"name": "random", "seed": 0})


def test_studies_on_files_under_the_data_root_and_on_fashion_mnist(tmp_path, server_factory):
    server = server_factory(f"sqlite:///{tmp_path / 'data.db'}")
    root = tmp_path / "data"  # the server's PHASETUNE_DATA_ROOT (tests/conftest.py)
    make_npz(root / "mine")
    make_image_folder(root / "mine", split=True)
    specs = {
        "npz": _spec("on-npz", {"name": "npz", "params": {"path": "mine/blobs.npz", "hidden": 16, "batch_size": 32}}),
        "image_folder": _spec("on-images", {"name": "image_folder", "params": {
            "path": "mine/shapes", "image_size": 12, "width": 4, "batch_size": 16, "in_memory": False}}),
    }
    if workloads()["fashion_mnist"].unavailable() is None:
        specs["fashion_mnist"] = _spec("on-fashion", {"name": "fashion_mnist", "params": {
            "n_train": 2048, "n_val": 256, "n_test": 256, "width": 4, "batch_size": 64}})
    with server.client() as client:
        ids = {}
        for name, spec in specs.items():
            created = client.post("/studies", json=spec)
            assert created.status_code == 201, (name, created.text)
            ids[name] = created.json()["id"]
        for name, study_id in ids.items():
            study = wait_for_status(client, study_id, ("completed", "failed", "stopped"), timeout=600)
            assert study["status"] == "completed", (name, study.get("error"))
            trials = client.get(f"/studies/{study_id}/trials").json()
            assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"], (name, trials)
            assert all(0 <= t["value"] <= 1 for t in trials)
            assert study["spec"]["data_root"] == str(root)
    assert max(t["value"] for t in client_trials(server, ids["npz"])) > 0.9  # three well-separated blobs
    if "fashion_mnist" in ids:
        for trial in client_trials(server, ids["fashion_mnist"]):
            test = trial["user_attrs"]["test_metrics"]
            assert set(test) == {"test_loss", "test_accuracy"} and test["test_accuracy"] > 0.5  # chance: 0.1
    else:
        pytest.skip("fashion_mnist: dataset-fashion-mnist is not installed (scripts/setup.sh installs it)")


def client_trials(server, study_id: int) -> list[dict]:
    with server.client() as client:
        return client.get(f"/studies/{study_id}/trials").json()
