"""``attach`` drives a real optimizer exactly as ``trace`` says; checkpoint/resume gives identical values."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from phasetune.search_spaces import apply_to_optimizer, attach, trace

EPOCHS, SPE = 4, 5
SCHEDULES = {
    "onecycle": {"family": "onecycle", "max_lr": 0.2, "pct_start": 0.3},
    "cyclic": {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0.6, "mode": "triangular2",
               "cycle_momentum": True},
    "phases": {"family": "phases", "transition_epochs": [1.4],
               "phases": [{"lr": 0.3, "momentum": 0.0},
                          {"family": "cosine", "lr": 0.02, "momentum": 0.95, "warmup": {"epochs": 0.6}}]},
    "cosine": {"family": "cosine", "lr": 0.05, "eta_min": 0.001},
}


def _setup(optimizer: str, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt: torch.optim.Optimizer = (torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.5) if optimizer == "sgd"
                                  else torch.optim.Adam(model.parameters(), lr=1.0))
    return model, opt


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: LRScheduler, steps: range) -> list[tuple]:
    """Real optimizer steps on fixed data; the lr and momentum each step actually used."""
    data = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    x, y = data[:, :3], data[:, 3:]
    used = []
    for _ in steps:
        group = opt.param_groups[0]
        used.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    return used


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_optimizer_sees_the_traced_values(name: str, optimizer: str) -> None:
    schedule = SCHEDULES[name]
    model, opt = _setup(optimizer)
    sched = attach(schedule, opt, SPE, EPOCHS)
    assert isinstance(sched, LRScheduler)
    used = _train(model, opt, sched, range(EPOCHS * SPE))
    expected = trace(schedule, EPOCHS, SPE)
    assert [lr for lr, _ in used] == expected["lr"]
    default = 0.5 if optimizer == "sgd" else 0.9  # where the schedule leaves momentum alone
    assert [m for _, m in used] == [default if m is None else m for m in expected["momentum"]]
    assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resume_from_state_dict_gives_identical_values(name: str, optimizer: str) -> None:
    schedule, total, cut = SCHEDULES[name], EPOCHS * SPE, 8
    model, opt = _setup(optimizer)
    sched = attach(schedule, opt, SPE, EPOCHS)
    _train(model, opt, sched, range(cut))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    straight = _train(model, opt, sched, range(cut, total))
    final = [p.detach().clone() for p in model.parameters()]

    model2, opt2 = _setup(optimizer, seed=1)  # different init: everything must come from the checkpoint
    sched2 = attach(schedule, opt2, SPE, EPOCHS)
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    resumed = _train(model2, opt2, sched2, range(cut, total))
    assert resumed == straight
    assert all(torch.equal(a, b) for a, b in zip(final, model2.parameters()))


def test_autodecay_state_survives_resume() -> None:
    schedule = {"family": "autodecay", "lr": 0.1, "beta": 0.0, "window": 2, "tolerance": 0.05, "gamma": 0.1}
    _, opt = _setup("sgd")
    sched = attach(schedule, opt, SPE, 20)
    for epoch, loss in enumerate([1.0, 0.5, 0.49]):
        assert sched.observe(epoch, loss)
        for _ in range(SPE):
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    state = copy.deepcopy(sched.state_dict())
    _, opt2 = _setup("sgd")
    sched2 = attach(schedule, opt2, SPE, 20)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    assert [sched2.observe(3, 0.48), sched2.observe(4, 0.475)] == [True, False]
    assert sched2.extra_attrs()["autodecay_decay_epochs"] == [2]


def test_fresh_optimizer_state_at_a_phase_boundary() -> None:
    schedule = copy.deepcopy(SCHEDULES["phases"])
    schedule["phases"][0]["momentum"] = 0.5  # so that phase 1 leaves momentum buffers
    model, opt = _setup("sgd")
    sched = attach(schedule, opt, SPE, EPOCHS)
    _train(model, opt, sched, range(6))  # the boundary is step 7
    assert opt.state  # momentum buffers exist
    sched.step()  # step 7: phase 2 starts with a fresh optimizer state
    assert not opt.state
    kept = copy.deepcopy(schedule)
    kept["phases"][1]["keep_optimizer_state"] = True
    model, opt = _setup("sgd")
    sched = attach(kept, opt, SPE, EPOCHS)
    _train(model, opt, sched, range(7))
    assert opt.state


def test_load_state_dict_refuses_another_schedule() -> None:
    _, opt = _setup("sgd")
    state = attach(SCHEDULES["cosine"], opt, SPE, EPOCHS).state_dict()
    with pytest.raises(ValueError, match="different schedule"):
        attach(SCHEDULES["onecycle"], opt, SPE, EPOCHS).load_state_dict(state)


def test_apply_to_optimizer() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    sgd, adam = torch.optim.SGD([param], lr=1.0), torch.optim.AdamW([param], lr=1.0, betas=(0.9, 0.98))
    apply_to_optimizer(sgd, 0.3, 0.8)
    apply_to_optimizer(adam, 0.3, 0.8)
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]) == (0.3, 0.8)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["betas"]) == (0.3, (0.8, 0.98))
    apply_to_optimizer(sgd, 0.1, None)
    assert sgd.param_groups[0]["momentum"] == 0.8  # None leaves momentum alone
    with pytest.raises(ValueError, match="Adagrad"):
        apply_to_optimizer(torch.optim.Adagrad([param]), 0.1, 0.9)
