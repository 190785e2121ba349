"""The phased-optimizer driver: one driver for the training loop and ``attach``, resumable bit-identically.

The study's loop (``workers.train.train``) and a user's loop with ``attach`` must train the same schedule the same
way: the same lr and momentum at every step and the same fresh start at a phase boundary, weight decay included.
"""

from __future__ import annotations

import copy

import pytest
import torch

from phasetune.search_spaces import PhasedOptimizer, attach, build_plan, trace
from phasetune.workers.seeding import batch_order
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload

EPOCHS = 4
# Phase 2 starts mid-epoch, with another weight decay and momentum: what a fresh optimizer per phase must carry.
TWO_PHASE = {
    "family": "phases",
    "phases": [
        {"optimizer": "sgd", "lr": 0.2, "momentum": 0.5, "weight_decay": 0.0, "nesterov": False},
        {"optimizer": "sgd", "family": "cosine", "lr": 0.05, "eta_min": 0.0, "momentum": 0.9,
         "weight_decay": 0.05, "nesterov": True},
    ],
    "transition_epochs": [1.5],
}


def _digits(seed: int = 0):
    return build_workload("digits", {"hidden": 16}, seed)


def _user_loop(schedule: dict, seed: int = 0) -> tuple[list[torch.Tensor], list[tuple[float, float]]]:
    """What a user writes: their own SGD, ``attach``, and the study's batches (its seed policy's order)."""
    w = _digits(seed)
    optimizer = torch.optim.SGD(w.model.parameters(), lr=1.0)
    scheduler = attach(schedule, optimizer, w.steps_per_epoch, EPOCHS)
    used = []
    for epoch in range(EPOCHS):
        w.model.train()
        order = batch_order(len(w.train_x), seed, epoch)
        for batch in range(w.steps_per_epoch):
            group = optimizer.param_groups[0]
            used.append((group["lr"], group["momentum"]))
            index = order[batch * w.batch_size:(batch + 1) * w.batch_size]
            loss = w.loss(w.model(w.train_x[index]), w.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return [p.detach().clone() for p in w.model.parameters()], used


def test_attach_trains_like_the_study_loop_across_a_boundary():
    w = _digits()
    train(w, build_plan(TWO_PHASE, EPOCHS, w.steps_per_epoch), EPOCHS, order_seed=0)
    weights, used = _user_loop(TWO_PHASE)
    traced = trace(TWO_PHASE, EPOCHS, w.steps_per_epoch)
    assert [lr for lr, _ in used] == traced["lr"]
    assert [m for _, m in used] == traced["momentum"]
    for study_param, user_param in zip(w.model.parameters(), weights, strict=True):
        assert torch.equal(study_param, user_param)
    # The weight decay of phase 2 did something: without it the weights differ.
    no_decay = copy.deepcopy(TWO_PHASE)
    no_decay["phases"][1]["weight_decay"] = 0.0
    other, _ = _user_loop(no_decay)
    assert not all(torch.equal(a, b) for a, b in zip(weights, other, strict=True))


def _run(driver: PhasedOptimizer, model: torch.nn.Module, steps: range) -> list[tuple]:
    data = torch.randn(16, 5, generator=torch.Generator().manual_seed(7))
    x, y = data[:, :3], data[:, 3:]
    seen = []
    for _ in steps:
        values = driver.prepare()
        seen.append((values.phase, type(driver.optimizer).__name__, driver.optimizer.param_groups[0]["lr"]))
        driver.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        driver.step()
    return seen


SWITCHING = {  # SGD with momentum, then Adam, then SGD again, kept: every kind of boundary
    "family": "phases",
    "phases": [
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        {"optimizer": "adam", "family": "linear", "lr": 0.01, "momentum": 0.8},
        {"optimizer": "adam", "lr": 0.005, "keep_optimizer_state": True, "weight_decay": 1e-2},
    ],
    "transition_epochs": [1.2, 2.6],
}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("cut", [3, 6, 7, 13, 19])  # mid-phase, on a boundary, just after one, in the last phase
def test_a_checkpoint_resumes_bit_identically(cut: int):
    spe, epochs = 5, 4
    model = _model(0)
    driver = PhasedOptimizer(build_plan(SWITCHING, epochs, spe), model.parameters())
    _run(driver, model, range(cut))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "driver": driver.state_dict()})
    straight = _run(driver, model, range(cut, spe * epochs))

    resumed_model = _model(1)  # other weights: everything must come from the checkpoint
    resumed = PhasedOptimizer(build_plan(SWITCHING, epochs, spe), resumed_model.parameters())
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["driver"])
    assert _run(resumed, resumed_model, range(cut, spe * epochs)) == straight
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_boundaries_start_fresh_carry_over_or_switch_type():
    spe = 5
    model = _model(0)
    driver = PhasedOptimizer(build_plan(SWITCHING, 4, spe), model.parameters())
    seen = _run(driver, model, range(6))
    assert {name for _, name, _ in seen} == {"SGD"}
    sgd = driver.optimizer
    _run(driver, model, range(6, 7))  # step 6 begins phase 1: a new type, a new optimizer
    assert isinstance(driver.optimizer, torch.optim.Adam) and driver.optimizer is not sgd
    group = driver.optimizer.param_groups[0]
    assert group["betas"][0] == 0.8 and group["weight_decay"] == 0.0
    adam = driver.optimizer
    _run(driver, model, range(7, 13))  # step 13 begins phase 2, which keeps the state
    steps_before = adam.state[next(iter(model.parameters()))]["step"].item()
    _run(driver, model, range(13, 14))
    assert driver.optimizer is adam and adam.param_groups[0]["weight_decay"] == 1e-2
    assert adam.state[next(iter(model.parameters()))]["step"].item() == steps_before + 1


def test_a_fresh_phase_equals_a_newly_made_optimizer():
    """Beginning a same-type phase in place leaves exactly what constructing the phase's optimizer leaves."""
    schedule = {"family": "phases", "transition_epochs": [1],
                "phases": [{"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                           {"lr": 0.01}]}  # momentum, nesterov and weight decay unstated: torch's defaults
    model = _model(0)
    driver = PhasedOptimizer(build_plan(schedule, 2, 3), model.parameters())
    _run(driver, model, range(4))
    made = torch.optim.SGD(model.parameters(), lr=0.01)
    assert not driver.optimizer.state
    assert ({k: v for k, v in driver.optimizer.param_groups[0].items() if k != "params"}
            == {k: v for k, v in made.param_groups[0].items() if k != "params"})


def test_attach_runs_every_phase_on_the_users_optimizer():
    model = _model(0)
    with pytest.raises(ValueError, match="phase 1 of the schedule runs 'adam'"):
        attach(SWITCHING, torch.optim.SGD(model.parameters(), lr=0.1), 5, 4)
    unnamed = {"family": "cosine", "lr": 0.05}  # names no type: any optimizer, its own settings kept
    adam = torch.optim.Adam(model.parameters(), lr=1.0, weight_decay=0.3)
    attach(unnamed, adam, 5, 4)
    assert adam.param_groups[0]["weight_decay"] == 0.3 and adam.param_groups[0]["lr"] == 0.05


def test_resuming_into_a_fresh_optimizer_sets_the_phases_settings_up():
    """A checkpoint of the schedule alone (the optimizer left new) still resumes inside the right phase."""
    spe = 5
    model = _model(0)
    scheduler = attach(TWO_PHASE, torch.optim.SGD(model.parameters(), lr=1.0), spe, EPOCHS)
    for _ in range(10):  # phase 2 begins at step 7
        scheduler.step()
    fresh = torch.optim.SGD(model.parameters(), lr=1.0)
    resumed = attach(TWO_PHASE, fresh, spe, EPOCHS)
    resumed.load_state_dict(scheduler.state_dict())
    group = fresh.param_groups[0]
    assert (group["weight_decay"], group["nesterov"], group["momentum"]) == (0.05, True, 0.9)
    assert resumed.last_epoch == 10 and resumed.get_last_lr() == scheduler.get_last_lr()
    owned = PhasedOptimizer(build_plan(SWITCHING, 4, spe), _model(1).parameters())
    driver = PhasedOptimizer(build_plan(SWITCHING, 4, spe), model.parameters())
    _run(driver, model, range(8))  # in phase 1, on Adam
    owned.load_state_dict(driver.state_dict(include_optimizer=False))
    assert isinstance(owned.optimizer, torch.optim.Adam) and owned.phase == 1


def test_an_lr_beyond_what_the_weights_take_is_a_divergence_not_torchs_error():
    """A multistep schedule within the spec's lr bound that grows past float32's largest: the step is refused as
    ``diverged: ...`` (the trial's fail_reason) rather than torch's "value cannot be converted" RuntimeError."""
    from phasetune.search_spaces.phased import Diverged

    schedule = {"family": "multistep", "lr": 1e38, "milestones": [1], "gamma": 100.0}
    model = _model(0)
    driver = PhasedOptimizer(build_plan(schedule, 2, 3), model.parameters())
    _run(driver, model, range(3))  # epoch 0: 1e38 is a float32 lr (the weights diverge, which the loss reports)
    with pytest.raises(Diverged, match=r"^diverged: lr 1e\+40 overflows the torch.float32 weights"):
        _run(driver, model, range(1))
