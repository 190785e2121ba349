"""Every schedule family searched in a study over REST, alone and as one of several choices (a conditional space).

Each trial must record its concrete schedule and the lr/momentum its optimizer really used, and those must be
what ``phasetune.search_spaces.trace`` (the same code path) says for that schedule.
"""

from __future__ import annotations

import pytest

from phasetune.search_spaces import trace
from tests.conftest import wait_for_status

pytestmark = pytest.mark.slow

EPOCHS = 3
LR = {"low": 0.01, "high": 0.2, "log": True}
FAMILIES = {
    "constant": {"family": "constant", "lr": LR, "momentum": 0.9},
    "step": {"family": "step", "lr": LR, "step_size": 1, "gamma": {"low": 0.1, "high": 0.5}},
    "multistep": {"family": "multistep", "lr": LR, "milestones": [1, {"low": 1.5, "high": 2.5}], "gamma": 0.1},
    "exponential": {"family": "exponential", "lr": LR, "gamma": {"low": 0.5, "high": 0.9}},
    "linear": {"family": "linear", "lr": LR, "eta_min": 0.0},
    "cosine": {"family": "cosine", "lr": LR, "eta_min": 1e-4, "warmup": {"epochs": 0.5, "start_factor": 0.1}},
    "sgdr": {"family": "sgdr", "lr": LR, "t_0": 1, "t_mult": {"choices": [1, 2]}, "eta_min": 0.0},
    "cyclic": {"family": "cyclic", "base_lr": 0.001, "max_lr": LR, "step_size_up": 0.5,
               "mode": {"choices": ["triangular", "triangular2", "exp_range"]}, "gamma": 0.9,
               "cycle_momentum": True},
    "onecycle": {"family": "onecycle", "max_lr": {"low": 0.05, "high": 0.5, "log": True},
                 "pct_start": {"low": 0.2, "high": 0.4}, "anneal_strategy": {"choices": ["cos", "linear"]}},
    "rex": {"family": "rex", "lr": LR, "eta_min": 0.0, "alpha": {"choices": [0.5, 0.9]}},
    "autodecay": {"family": "autodecay", "lr": LR, "window": 2, "tolerance": {"low": 0.05, "high": 0.5}},
    "phases": {"family": "phases", "phases": [
        {"effective_lr": {"low": 0.1, "high": 1.0, "log": True}, "momentum": 0.5},
        {"family": "cosine", "lr": LR, "eta_min": 0.0, "momentum": {"low": 0.8, "high": 0.95}},
    ], "transition_epochs": [{"low": 1, "high": 2}]},
}


def _spec(name: str, schedule: dict, n_trials: int) -> dict:
    return {
        "name": name,
        "workload": {"name": "digits", "params": {}},
        "epochs": EPOCHS,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "schedule": schedule,
        "n_trials": n_trials,
        "max_concurrent_trials": 2,
        "sampler": {"name": "random", "seed": 3},
    }


def _check_realised(trial: dict, steps_per_epoch: int) -> None:
    assert trial["state"] == "COMPLETE", trial
    traced = trace(trial["schedule"], EPOCHS, steps_per_epoch)
    epochs_run = len(trial["user_attrs"]["realized_lr"])
    assert epochs_run >= 1
    expected_lr = [traced["lr"][e * steps_per_epoch] for e in range(epochs_run)]
    if trial["schedule"]["family"] == "autodecay":
        # Loss-driven: each decay the trial recorded (after epoch d) scales the lr of the epochs after it.
        decays = trial["user_attrs"]["autodecay_decay_epochs"]
        gamma = trial["schedule"]["gamma"]
        expected_lr = [lr * gamma ** sum(d < e for d in decays) for e, lr in enumerate(expected_lr)]
    assert trial["user_attrs"]["realized_lr"] == pytest.approx(expected_lr, rel=1e-6)
    # Where the schedule leaves momentum alone the optimizer keeps SGD's default, 0.
    expected_momentum = [traced["momentum"][e * steps_per_epoch] or 0.0 for e in range(epochs_run)]
    assert trial["user_attrs"]["realized_momentum"] == pytest.approx(expected_momentum, rel=1e-6)


def test_every_family_alone_and_as_a_choice(tmp_path, server_factory):
    from phasetune.workers.workloads import build_workload

    steps_per_epoch = build_workload("digits", {}, seed=0).steps_per_epoch
    server = server_factory(f"sqlite:///{tmp_path / 'families.db'}")
    with server.client() as client:
        ids = {}
        for family, schedule in FAMILIES.items():
            response = client.post("/studies", json=_spec(f"family-{family}", schedule, n_trials=1))
            assert response.status_code == 201, (family, response.text)
            ids[family] = response.json()["id"]
        choice = client.post("/studies", json=_spec("all-families", {"choices": list(FAMILIES.values())}, 8))
        assert choice.status_code == 201, choice.text
        for family, study_id in ids.items():
            study = wait_for_status(client, study_id, ("completed", "failed", "stopped"), timeout=600)
            assert study["status"] == "completed", (family, study.get("error"))
            (trial,) = client.get(f"/studies/{study_id}/trials").json()
            assert trial["schedule"]["family"] == family
            _check_realised(trial, steps_per_epoch)
        study = wait_for_status(client, choice.json()["id"], ("completed", "failed", "stopped"), timeout=600)
        assert study["status"] == "completed", study.get("error")
        trials = client.get(f"/studies/{choice.json()['id']}/trials").json()

    assert len(trials) == 8
    chosen = {t["params"]["schedule"] for t in trials}
    assert len(chosen) >= 4
    for trial in trials:
        label = trial["params"]["schedule"]
        assert trial["schedule"]["family"] == label
        # Conditional: only the chosen family's parameters exist in the trial.
        assert all(name == "schedule" or name.startswith(f"{label}.") for name in trial["params"])
        _check_realised(trial, steps_per_epoch)
