"""Conformance: each family's per-step lr and momentum equal torch's scheduler stepped once per optimizer step.

Random configurations (seeded), durations converted to steps exactly as the library does. Compared with a relative
1e-6 (plus an absolute 1e-12 * peak lr, for values that should be exactly 0) wherever torch's output is well defined:
cosine up to ``T`` (torch climbs again after), 1cycle up to ``T - 1`` (torch extrapolates at ``T``, then raises).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as tls

from phasetune.search_spaces import build_plan, trace
from phasetune.search_spaces.families.rex import Rex

SEEDS = range(20)
RTOL = 1e-6


def _torch_values(make: Callable[[torch.optim.Optimizer], Any], n: int, optimizer: str = "sgd",
                  lr: float = 0.1) -> tuple[list[float], list[float]]:
    """lr and momentum (or beta1) of a real optimizer at steps 0..n-1 under ``make(optimizer)``."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt: torch.optim.Optimizer = (torch.optim.SGD([param], lr=lr, momentum=0.5) if optimizer == "sgd"
                                  else torch.optim.Adam([param], lr=lr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no training here
        sched = make(opt)
        lrs, moms = [], []
        for t in range(n):
            if t:
                sched.step()
            group = opt.param_groups[0]
            lrs.append(float(group["lr"]))
            moms.append(float(group["betas"][0] if "betas" in group else group["momentum"]))
    return lrs, moms


def _ours(schedule: dict, epochs: int, spe: int, n: int) -> tuple[list[float], list[float | None]]:
    """Our values at steps 0..n-1 (n may exceed the run by one: the plan holds the family's value at T)."""
    plan = build_plan(schedule, epochs, spe)
    values = [plan(t) for t in range(n)]
    traced = trace(schedule, epochs, spe)
    assert traced["lr"] == [v.lr for v in values[: plan.total_steps]]  # the training loop's path is the same
    return [v.lr for v in values], [v.momentum for v in values]


def _close(ours: list, theirs: list, scale: float) -> None:
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float),
                               rtol=RTOL, atol=1e-12 * scale)


def _run(rng: random.Random, low: int = 1, high: int = 8) -> tuple[int, int, int]:
    epochs, spe = rng.randint(low, high), rng.randint(1, 25)
    return epochs, spe, epochs * spe


@pytest.mark.parametrize("seed", SEEDS)
def test_step(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr, gamma = 10 ** rng.uniform(-3, 0), rng.uniform(0.05, 0.95)
    step_size = rng.choice([rng.randint(1, epochs), rng.uniform(0.5, epochs)])
    steps = round(step_size * spe)
    if steps < 1:
        step_size, steps = 1, spe
    ours, _ = _ours({"family": "step", "lr": lr, "step_size": step_size, "gamma": gamma}, epochs, spe, total + 1)
    theirs, _ = _torch_values(lambda o: tls.StepLR(o, step_size=steps, gamma=gamma), total + 1, lr=lr)
    _close(ours, theirs, lr)


@pytest.mark.parametrize("seed", SEEDS)
def test_multistep(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng, low=2)
    lr, gamma = 10 ** rng.uniform(-3, 0), rng.uniform(0.05, 0.95)
    steps = sorted(rng.sample(range(1, total + 3), rng.randint(1, min(4, total))))
    milestones = [s / spe for s in steps]  # fractional epochs
    ours, _ = _ours({"family": "multistep", "lr": lr, "milestones": milestones, "gamma": gamma}, epochs, spe, total + 1)
    theirs, _ = _torch_values(lambda o: tls.MultiStepLR(o, milestones=steps, gamma=gamma), total + 1, lr=lr)
    _close(ours, theirs, lr)


@pytest.mark.parametrize("seed", SEEDS)
def test_exponential(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr, gamma = 10 ** rng.uniform(-3, 0), rng.uniform(0.3, 1.0)
    ours, _ = _ours({"family": "exponential", "lr": lr, "gamma": gamma}, epochs, spe, total + 1)
    theirs, _ = _torch_values(lambda o: tls.ExponentialLR(o, gamma=gamma ** (1 / spe)), total + 1, lr=lr)
    _close(ours, theirs, lr)


@pytest.mark.parametrize("seed", SEEDS)
def test_linear(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr = 10 ** rng.uniform(-3, 0)
    eta_min = 0.0 if seed % 2 == 0 else lr * rng.uniform(0.0, 0.9)
    ours, _ = _ours({"family": "linear", "lr": lr, "eta_min": eta_min}, epochs, spe, total + 5)
    if eta_min == 0.0:
        make = lambda o: tls.PolynomialLR(o, total_iters=total, power=1.0)  # noqa: E731
    else:
        make = lambda o: tls.LinearLR(o, start_factor=1.0, end_factor=eta_min / lr, total_iters=total)  # noqa: E731
    theirs, _ = _torch_values(make, total + 5, lr=lr)  # both torch classes hold their last value past T
    _close(ours, theirs, lr)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr = 10 ** rng.uniform(-3, 0)
    eta_min = rng.choice([0.0, lr * rng.uniform(0, 0.5)])
    ours, _ = _ours({"family": "cosine", "lr": lr, "eta_min": eta_min}, epochs, spe, total + 1)
    theirs, _ = _torch_values(lambda o: tls.CosineAnnealingLR(o, T_max=total, eta_min=eta_min), total + 1, lr=lr)
    _close(ours, theirs, lr)


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_is_clamped_where_torch_climbs_again(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    schedule = {"family": "cosine", "lr": 0.1, "eta_min": 0.001}
    ours, _ = _ours(schedule, epochs, spe, total + 1)
    plan = build_plan(schedule, epochs, spe)
    assert [plan(total + k).lr for k in (1, 7, total)] == [ours[total]] * 3 == [pytest.approx(0.001)] * 3


@pytest.mark.parametrize("seed", SEEDS)
def test_sgdr(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr, t0_steps, t_mult = 10 ** rng.uniform(-3, 0), rng.randint(1, max(1, total // 2)), rng.choice([1, 2, 3])
    eta_min = rng.choice([0.0, lr * rng.uniform(0, 0.5)])
    schedule = {"family": "sgdr", "lr": lr, "t_0": t0_steps / spe, "t_mult": t_mult, "eta_min": eta_min}
    ours, _ = _ours(schedule, epochs, spe, total + 1)
    theirs, _ = _torch_values(
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=t0_steps, T_mult=t_mult, eta_min=eta_min), total + 1, lr=lr)
    _close(ours, theirs, lr)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize("seed", range(10))
def test_cyclic(seed: int, mode: str) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng, low=2, high=10)
    base_lr = 10 ** rng.uniform(-4, -2)
    max_lr = base_lr * rng.uniform(1.0, 20.0)
    up = rng.randint(1, max(1, total // 3))
    down = rng.choice([None, rng.randint(1, max(1, total // 3))])
    gamma_step = rng.uniform(0.97, 1.0)
    cycle_momentum = seed % 2 == 1
    base_m, max_m = rng.uniform(0.5, 0.85), rng.uniform(0.86, 0.99)
    optimizer = "adam" if seed % 4 == 3 else "sgd"
    schedule = {"family": "cyclic", "base_lr": base_lr, "max_lr": max_lr, "step_size_up": up / spe,
                "step_size_down": None if down is None else down / spe, "mode": mode, "gamma": gamma_step**spe,
                "cycle_momentum": cycle_momentum, "base_momentum": base_m, "max_momentum": max_m}
    ours, ours_m = _ours(schedule, epochs, spe, total + 1)
    theirs, theirs_m = _torch_values(
        lambda o: tls.CyclicLR(o, base_lr=base_lr, max_lr=max_lr, step_size_up=up, step_size_down=down, mode=mode,
                               gamma=gamma_step, cycle_momentum=cycle_momentum, base_momentum=base_m,
                               max_momentum=max_m), total + 1, optimizer=optimizer)
    _close(ours, theirs, max_lr)
    if cycle_momentum:
        _close(ours_m, theirs_m, 1.0)
    else:
        assert ours_m == [None] * (total + 1)


def test_cyclic_matches_smiths_symmetric_form() -> None:
    spe, up = 4, 6
    ours, _ = _ours({"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": up / spe}, 6, spe, 24)
    for t, value in enumerate(ours):
        c = math.floor(1 + t / (2 * up))
        x = abs(t / up - 2 * c + 1)
        assert value == pytest.approx(0.01 + 0.09 * max(0.0, 1 - x), rel=1e-9)


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("seed", range(8))
def test_onecycle(seed: int, anneal: str, three_phase: bool) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng, low=2, high=8)
    spe = max(spe, 5)
    total = epochs * spe
    max_lr = 10 ** rng.uniform(-3, 0)
    pct = rng.uniform(0.1, 0.5 if three_phase else 0.9)
    div, final_div = rng.uniform(5, 50), 10 ** rng.uniform(1, 4)
    cycle_momentum = seed % 3 != 0
    base_m, max_m = rng.uniform(0.7, 0.88), rng.uniform(0.89, 0.99)
    optimizer = "adam" if seed % 2 else "sgd"
    schedule = {"family": "onecycle", "max_lr": max_lr, "pct_start": pct, "div_factor": div,
                "final_div_factor": final_div, "anneal_strategy": anneal, "three_phase": three_phase,
                "cycle_momentum": cycle_momentum, "base_momentum": base_m, "max_momentum": max_m}
    ours, ours_m = _ours(schedule, epochs, spe, total)
    theirs, theirs_m = _torch_values(
        lambda o: tls.OneCycleLR(o, max_lr=max_lr, total_steps=total, pct_start=pct, anneal_strategy=anneal,
                                 cycle_momentum=cycle_momentum, base_momentum=base_m, max_momentum=max_m,
                                 div_factor=div, final_div_factor=final_div, three_phase=three_phase),
        total, optimizer=optimizer)
    _close(ours, theirs, max_lr)
    if cycle_momentum:
        _close(ours_m, theirs_m, 1.0)
    plan = build_plan(schedule, epochs, spe)
    assert plan(total).lr == plan(total + 3).lr == ours[-1]  # held where torch extrapolates


@pytest.mark.parametrize("seed", SEEDS)
def test_rex_against_lambdalr(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng)
    lr = 10 ** rng.uniform(-3, 0)
    eta_min = rng.choice([0.0, lr * rng.uniform(0, 0.5)])
    alpha = rng.choice([0.5, 0.9, rng.uniform(0, 0.95)])

    def factor(t: int) -> float:
        z = min(t, total) / total
        return (eta_min + (lr - eta_min) * (1 - z) / (1 - alpha * z)) / lr

    ours, _ = _ours({"family": "rex", "lr": lr, "eta_min": eta_min, "alpha": alpha}, epochs, spe, total + 3)
    theirs, _ = _torch_values(lambda o: tls.LambdaLR(o, factor), total + 3, lr=lr)
    _close(ours, theirs, lr)


def test_rex_profile_properties() -> None:
    def rho(z: float, alpha: float) -> float:
        return Rex(lr=1.0, eta_min=0.0, total_steps=1, alpha=alpha).rho(z)

    assert (rho(0, 0.5), rho(0.5, 0.5), rho(1, 0.5)) == (1.0, pytest.approx(2 / 3), 0.0)
    assert rho(0.5, 0.9) == pytest.approx(0.909, abs=1e-3)
    zs = np.linspace(0, 1, 101)
    assert all(rho(z, 0.5) >= 1 - z - 1e-15 for z in zs)
    assert all(rho(z, 0.0) == pytest.approx(1 - z) for z in zs)


@pytest.mark.parametrize("seed", range(10))
def test_warmup_then_cosine_against_sequentiallr(seed: int) -> None:
    rng = random.Random(seed)
    epochs, spe, total = _run(rng, low=2)
    lr, eta_min, start = 10 ** rng.uniform(-3, 0), 0.0, rng.uniform(0.01, 1.0)
    warm = rng.randint(1, total - 1)
    schedule = {"family": "cosine", "lr": lr, "eta_min": eta_min,
                "warmup": {"epochs": warm / spe, "start_factor": start}}
    ours, _ = _ours(schedule, epochs, spe, total + 1)

    def make(o: torch.optim.Optimizer) -> tls.LRScheduler:
        ramp = tls.LinearLR(o, start_factor=start, end_factor=1.0, total_iters=warm)
        cosine = tls.CosineAnnealingLR(o, T_max=total - warm, eta_min=eta_min)
        return tls.SequentialLR(o, [ramp, cosine], milestones=[warm])

    theirs, _ = _torch_values(make, total + 1, lr=lr)
    _close(ours, theirs, lr)
