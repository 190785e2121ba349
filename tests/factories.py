"""What tests share besides fixtures (those stay in conftest.py): study specs, schedule spaces, data files and
the HTTP helpers several test modules use. Tests import from here, never from one another."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import optuna

from phasetune.workers import study_attrs
from phasetune.workers.handle import StudyHandle

# ----------------------------------------------------------------------------------------------------------
# Study specs

JSON = {"Content-Type": "application/json"}  # a POST without a body says it too (docs/security.md)


def small_spec(name: str, **overrides) -> dict:
    """The README's example study, shrunk: two phases, the transition searched."""
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


# A quadratic study the searcher is driven with (no Ray).
QUADRATIC_SPEC = {
    "name": "searcher",
    "workload": {"name": "quadratic", "params": {}},
    "epochs": 3,
    "objective": {"metric": "val_loss", "direction": "minimize"},
    "schedule": {"family": "constant", "lr": {"low": 0.01, "high": 1.0, "log": True}},
    "n_trials": 3,
    "sampler": {"name": "random", "seed": 0},
}


TREE_EPOCHS = 8
# Tiny on purpose: a gate that opens after 3 pairs at any agreement, half of each rung stopped, so that a small
# study shows every kind of decision (the defaults wait for 10 completed leaves and an agreement of 0.5).
TREE_OPTIONS = {"name": "tree", "grid": 3, "min_peers": 2, "reduction_factor": 2, "gate_threshold": -1,
                "gate_min_pairs": 3}


def tree_spec(name: str, n_trials: int, **overrides) -> dict:
    """A two-phase tree study: phase 1's lr on a grid of 3, the transition at epoch 3 or 4 of 8, random search."""
    spec = small_spec(name, epochs=TREE_EPOCHS, n_trials=n_trials, sampler={"name": "random", "seed": 0},
                      strategy=TREE_OPTIONS, **{"max_concurrent_trials": 1, **overrides})
    spec["schedule"]["phases"][0]["lr"] = {"low": 0.05, "high": 0.5, "log": True}
    spec["schedule"]["transition_epochs"] = [{"low": 3, "high": 4}]
    return spec


def handle_for(storage_url: str, name: str, **overrides) -> StudyHandle:
    study = optuna.create_study(study_name=name, storage=storage_url)
    study.set_user_attr(study_attrs.SPEC, {**QUADRATIC_SPEC, "name": name, **overrides})
    return StudyHandle(storage_url, name)


ENDED = ("completed", "failed", "stopped")


FAULT_N_TRAIN = 20_000  # ps10 examples per epoch in a fault test: ~0.25 s an epoch on an idle core


def fault_spec(name: str, epochs: int, n_trials: int) -> dict:
    """ps10 with a constant schedule, 2 trials at once: a trial of a few seconds, long enough to be hit while it
    runs (at 2,000 examples an epoch took ~0.03 s, and a study could end between two polls)."""
    return small_spec(name, epochs=epochs, n_trials=n_trials,
                      schedule={"family": "constant", "lr": {"low": 0.01, "high": 0.1, "log": True}, "momentum": 0.9},
                      workload={"name": "ps10", "params": {"n_train": FAULT_N_TRAIN, "n_val": 500}})


# ----------------------------------------------------------------------------------------------------------
# Over HTTP

def submit(client: httpx.Client, spec: dict) -> int:
    created = client.post("/studies", json=spec)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def trials_of(client: httpx.Client, study_id: int, history: bool = True) -> list[dict]:
    response = client.get(f"/studies/{study_id}/trials", params={"limit": 1000, "history": str(history).lower()})
    assert response.status_code == 200, response.text
    return response.json()


def wait_until_training(client: httpx.Client, study_id: int, timeout: float = 120) -> list[dict]:
    """The study's RUNNING trials once one has reported an epoch (so a worker process really trains it). Fails at
    once, saying so, if the study ends first: the fault would have missed it, a test to fix, not a fault survived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        training = [t for t in trials_of(client, study_id, history=False)
                    if t["state"] == "RUNNING" and t["user_attrs"].get("worker")]
        if training:
            return training
        study = client.get(f"/studies/{study_id}").json()
        assert study["status"] not in ENDED, f"study {study_id} ended ({study['status']}) before a trial trained"
        time.sleep(0.3)
    study = client.get(f"/studies/{study_id}").json()
    raise TimeoutError(f"timed out after {timeout}s waiting for a trial of study {study_id} to train: "
                       f"{study['status']}, trials {study['trial_counts']}, waiting for {study.get('waiting_for')}")


def assert_budget_kept(study: dict, trials: list[dict], n_trials: int, epochs: int) -> list[dict]:
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


# ----------------------------------------------------------------------------------------------------------
# Schedules

EPOCHS, SPE = 10, 8

# A searchable space per family: every family's own fields, some as ranges or choices.
SPACES: dict[str, dict] = {
    "constant": {"family": "constant", "lr": {"low": 1e-3, "high": 1.0, "log": True}},
    "step": {"family": "step", "lr": {"low": 0.01, "high": 0.5, "log": True}, "step_size": {"low": 1.0, "high": 4.0},
             "gamma": {"choices": [0.1, 0.5]}},
    "multistep": {"family": "multistep", "lr": 0.1, "milestones": [{"low": 2, "high": 6}, {"low": 4, "high": 9}],
                  "gamma": {"low": 0.05, "high": 0.5}},
    "exponential": {"family": "exponential", "lr": 0.1, "gamma": {"low": 0.5, "high": 0.99}},
    "linear": {"family": "linear", "lr": {"low": 0.01, "high": 0.5, "log": True},
               "eta_min": {"low": 0.0, "high": 0.001}},
    "cosine": {"family": "cosine", "lr": {"low": 0.01, "high": 0.5, "log": True}, "eta_min": 0.0,
               "warmup": {"epochs": {"low": 0.5, "high": 2.0}, "start_factor": {"low": 0.0, "high": 0.5}}},
    "sgdr": {"family": "sgdr", "lr": 0.1, "t_0": {"low": 0.5, "high": 3.0}, "t_mult": {"low": 1.0, "high": 2.5},
             "eta_min": {"low": 0.0, "high": 0.001}},
    "cyclic": {"family": "cyclic", "base_lr": {"low": 1e-4, "high": 1e-3, "log": True},
               "max_lr": {"low": 0.01, "high": 0.1, "log": True}, "step_size_up": {"low": 0.5, "high": 3.0},
               "step_size_down": {"choices": [None, 1.0]},
               "mode": {"choices": ["triangular", "triangular2", "exp_range"]},
               "gamma": {"low": 0.5, "high": 1.0}, "cycle_momentum": {"choices": [True, False]}},
    "onecycle": {"family": "onecycle", "max_lr": {"low": 0.01, "high": 1.0, "log": True},
                 "pct_start": {"low": 0.1, "high": 0.5}, "div_factor": {"low": 5.0, "high": 50.0},
                 "final_div_factor": {"low": 10.0, "high": 1e4, "log": True},
                 "anneal_strategy": {"choices": ["cos", "linear"]}, "three_phase": {"choices": [False, True]},
                 "base_momentum": {"low": 0.8, "high": 0.85}, "max_momentum": {"low": 0.9, "high": 0.95}},
    "rex": {"family": "rex", "lr": {"low": 0.01, "high": 0.5, "log": True}, "alpha": {"choices": [0.5, 0.9]}},
    "autodecay": {"family": "autodecay", "lr": {"low": 0.01, "high": 0.5, "log": True},
                  "beta": {"low": 0.8, "high": 0.95},
                  "window": {"low": 2, "high": 6}, "tolerance": {"low": 0.005, "high": 0.05},
                  "zeta": {"low": 0.8, "high": 0.95}, "gamma": {"low": 0.05, "high": 0.3}, "eps": 1e-8},
}

INVALID = [
    ({"family": "constant", "lr": -0.1}, ("lr",)),
    ({"family": "cosine", "lr": {"low": -1.0, "high": 1.0}}, ("lr",)),
    ({"family": "cosine", "lr": 0.01, "eta_min": 0.1}, ("eta_min",)),
    ({"family": "step", "lr": 0.1, "step_size": 0}, ("step_size",)),
    ({"family": "step", "lr": 0.1, "step_size": 0.001}, ("step_size",)),
    ({"family": "multistep", "lr": 0.1, "milestones": [6, 3]}, ("milestones", 1)),
    ({"family": "multistep", "lr": 0.1, "milestones": [3, -1]}, ("milestones", 1)),
    ({"family": "exponential", "lr": 0.1, "gamma": 1.5}, ("gamma",)),
    ({"family": "sgdr", "lr": 0.1, "t_0": 1, "t_mult": 0.5}, ("t_mult",)),
    ({"family": "sgdr", "lr": 0.1, "t_0": {"low": 1, "high": 2}, "t_mult": {"low": 0.9, "high": 2.0}}, ("t_mult",)),
    ({"family": "cyclic", "base_lr": 0.1, "max_lr": 0.01, "step_size_up": 1}, ("base_lr",)),
    ({"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1, "mode": "sawtooth"}, ("mode",)),
    ({"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1, "cycle_momentum": True,
      "base_momentum": 0.95, "max_momentum": 0.9}, ("base_momentum",)),
    ({"family": "onecycle", "max_lr": 0.1, "pct_start": 1.2}, ("pct_start",)),
    ({"family": "onecycle", "max_lr": 0.1, "pct_start": 0.0}, ("pct_start",)),
    ({"family": "onecycle", "max_lr": 0.1, "pct_start": {"low": 0.2, "high": 1.0}}, ("pct_start",)),
    ({"family": "onecycle", "max_lr": 0.1, "pct_start": 0.7, "three_phase": True}, ("pct_start",)),
    ({"family": "onecycle", "max_lr": 0.1, "anneal_strategy": "exp"}, ("anneal_strategy",)),
    ({"family": "rex", "lr": 0.1, "alpha": 1.0}, ("alpha",)),
    ({"family": "autodecay", "lr": 0.1, "window": 0}, ("window",)),
    ({"family": "autodecay", "lr": 0.1, "zeta": 1.5}, ("zeta",)),
    ({"family": "cosine", "lr": 0.1, "warmup": {"epochs": 10}}, ("warmup", "epochs")),
    ({"family": "cosine", "lr": 0.1, "warmup": {"epochs": {"low": 1, "high": 12}}}, ("warmup", "epochs")),
    ({"family": "cosine", "lr": 0.1, "warmup": {"epochs": 1, "start_factor": 2}}, ("warmup", "start_factor")),
    ({"family": "cosine", "lr": 0.1, "warmup": {"epochs": 1, "ramp": "linear"}}, ("warmup", "ramp")),
    ({"family": "cosine", "lr": 0.1, "warmup": {"start_factor": 0.1}}, ("warmup", "epochs")),
    ({"family": "cosine", "effective_lr": 1.0}, ("momentum",)),
    ({"family": "constant", "lr": 10**400}, ("lr",)),  # beyond any float: a 422, not an OverflowError
    ({"family": "constant", "lr": {"low": 10**400, "high": 10**401}}, ("lr", "low")),
    ({"family": "autodecay", "lr": 0.1, "window": {"low": 2, "high": 5, "step": 1.5}}, ("window", "step")),
    ({"family": "multistep", "lr": 0.1, "milestones": []}, ("milestones",)),
    ({"family": "phases", "phases": [{"lr": 0.1}], "transition_epochs": 2}, ("transition_epochs",)),
    ({"family": "autodecay", "effective_lr": 0.1, "momentum": {"choices": [None, 0.9]}}, ("momentum",)),
    ({"family": "cosine", "lr": 0.5, "effective_lr": 1.0, "momentum": 0.9}, ("effective_lr",)),
    ({"family": "onecycle", "max_lr": 0.1, "effective_lr": 1.0, "momentum": 0.9}, ("effective_lr",)),
    ({"family": "cosine", "effective_lr": -1.0, "momentum": 0.9}, ("effective_lr",)),
    ({"family": "cosine", "lr": 0.1, "t_0": 1}, ("t_0",)),
    ({"family": "cosine"}, ("lr",)),
    ({"family": "phases", "phases": [{"lr": 0.5}, {"family": "cosine", "lr": -1}], "transition_epochs": [5]},
     ("phases", 1, "lr")),
    ({"choices": [{"family": "cosine", "lr": 0.1}, {"family": "sgdr", "lr": 0.1, "t_0": 1, "t_mult": 0.5}]},
     ("choices", 1, "t_mult")),
]

UNIT_ERRORS = [
    # A unit is the model's own LR scale: an unknown one, or one on anything but a learning rate, is refused here.
    ({"family": "constant", "lr": {"low": 0.1, "high": 0.5, "unit": "furlongs"}}, ("lr", "unit")),
    ({"family": "constant", "lr": 0.1, "momentum": {"low": 0.1, "high": 0.5, "unit": "lr_crit"}},
     ("momentum", "unit")),
    ({"family": "step", "lr": 0.1, "step_size": {"low": 1, "high": 2, "unit": "lr_crit"}}, ("step_size", "unit")),
    ({"family": "multistep", "lr": 0.1, "milestones": [2, {"low": 3, "high": 4, "unit": "lr_div"}]},
     ("milestones", 1, "unit")),
    ({"family": "cosine", "lr": 0.1, "warmup": {"epochs": {"low": 1, "high": 2, "unit": "lr_crit"}}},
     ("warmup", "epochs", "unit")),
    ({"family": "phases", "phases": [{"lr": 0.5}, {"lr": 0.1}],
      "transition_epochs": [{"low": 2, "high": 5, "unit": "lr_crit"}]}, ("transition_epochs", 0, "unit")),
]

# A checkpoint and the branches that resume from it.
PHASE1 = {"lr": 0.3, "momentum": 0.0}
BRANCHES = {
    # (the run that writes the checkpoint, the branch that resumes from it, the epoch index it is taken at)
    "2-phase": ({"family": "phases", "transition_epochs": [2],
                 "phases": [PHASE1, {"lr": 0.01, "momentum": 0.95, "weight_decay": 1e-4}]},
                {"family": "phases", "transition_epochs": [2],
                 "phases": [PHASE1, {"family": "cosine", "lr": 0.05, "momentum": 0.9}]}, 1),
    "3-phase": ({"family": "phases", "transition_epochs": [1, 3],
                 "phases": [PHASE1, {"lr": 0.1, "momentum": 0.5, "keep_optimizer_state": True},
                            {"lr": 0.01, "momentum": 0.9}]},
                {"family": "phases", "transition_epochs": [1, 3],
                 "phases": [PHASE1, {"lr": 0.1, "momentum": 0.5, "keep_optimizer_state": True},
                            {"family": "linear", "lr": 0.02, "momentum": 0.9, "keep_optimizer_state": True}]}, 2),
    # (the branch's last phase keeps the momentum buffers the checkpoint carries)
}


# ----------------------------------------------------------------------------------------------------------
# Data files

def make_npz(root: Path, name: str = "blobs.npz", n_train: int = 240, n_val: int = 60, seed: int = 0) -> Path:
    """Three Gaussian blobs in 8 dimensions as x_train, y_train, x_val, y_val (integer labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 3

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, size=n)
        return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_val, y_val) = draw(n_train), draw(n_val)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return path


def make_image_folder(root: Path, name: str = "shapes", per_class: int = 24, size: int = 12, split: bool = False,
                      seed: int = 0) -> Path:
    """Class subfolders of small PNGs (a bright square top-left, bottom-right or centre, with noise); with
    ``split``, under ``train/`` and ``val/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / name
    corners = {"topleft": (0, 0), "bottomright": (size // 2, size // 2), "centre": (size // 4, size // 4)}
    for part, count in ((("train", per_class), ("val", per_class // 3)) if split else (("", per_class),)):
        for label, (r, c) in corners.items():
            directory = folder / part / label
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(size, size, 3))
                pixels[r:r + size // 2, c:c + size // 2] += 180
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(directory / f"{i}.png")
    return folder


# ----------------------------------------------------------------------------------------------------------
# The driver's path in this process (no Ray): the searcher as Tune drives it, the trainable's own code


class _Stopped(Exception):
    pass


def drive(searcher, max_trials: int | None = None, abandon_after: int | None = None) -> int:
    """Run ``searcher``'s trials one after another in this process as Tune would: ``suggest``, the trainable's
    ``train_trial``, for each result ``should_stop`` then ``on_trial_result``, the last (or stopped) result to
    ``on_trial_complete``. After ``max_trials`` suggestions it returns; the last one of them is abandoned after
    ``abandon_after`` epochs when given (left RUNNING, as a killed driver leaves it). Returns the trials started."""
    from ray.tune.search import Searcher

    from phasetune.workers.spec import TRIAL_CONFIG
    from phasetune.workers.trainable import train_trial

    started = 0
    while max_trials is None or started < max_trials:
        trial_id = f"in-process-{time.monotonic_ns()}"
        config = searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            break
        started += 1
        abandon = abandon_after if started == max_trials else None

        def report(result: dict, trial_id: str = trial_id, abandon: int | None = abandon) -> None:
            if abandon is not None and result["epoch"] >= abandon:
                raise _Stopped
            if searcher.should_stop(trial_id, result) or result.get("last_epoch"):
                searcher.on_trial_complete(trial_id, result)
                raise _Stopped
            searcher.on_trial_result(trial_id, result)

        try:
            train_trial(config[TRIAL_CONFIG], "cpu", {}, report)
        except _Stopped:
            pass
    return started
