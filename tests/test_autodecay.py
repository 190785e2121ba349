"""AutoDecay: the decision flow of schedules-spec.md section 3, its bookkeeping, and the EDMA claim C14."""

from __future__ import annotations

import numpy as np
import pytest

from phasetune.search_spaces import build_plan
from phasetune.search_spaces.families import Horizon
from phasetune.search_spaces.families.autodecay import AutoDecay

DEFAULTS = {"lr": 0.1, "beta": 0.9, "window": 5, "tolerance": 0.02, "zeta": 0.9, "gamma": 0.1, "eps": 1e-8}


def _autodecay(epochs: int = 100, **overrides: float) -> AutoDecay:
    return AutoDecay.from_params({**DEFAULTS, **overrides}, Horizon(epochs * 10, 10))


def test_hand_computed_flow_without_smoothing() -> None:
    # beta = 0: g is the raw loss, so every decision can be checked by hand.
    sched = _autodecay(beta=0.0, window=2, tolerance=0.05, zeta=0.9)
    assert sched.observe(0, 1.0)  # g_ref = 1.0
    assert sched.observe(1, 0.5)  # window [1.0, 0.5]: range 1.0 relative, not stable
    assert sched.observe(2, 0.49)  # [0.5, 0.49]: 0.0204 < 0.05 stable; 0.49 / 1.0 <= 0.9: decay
    assert sched.decay_epochs == [2] and sched(0).lr == pytest.approx(0.01)
    assert sched.observe(3, 0.48)  # new stage: g_ref = 0.48
    assert not sched.observe(4, 0.475)  # stable, 0.475 / 0.48 = 0.99 > 0.9: terminate
    assert sched.extra_attrs() == {"autodecay_decay_epochs": [2], "autodecay_stopped_epoch": 4,
                                   "autodecay_epochs_saved": 95}
    assert not sched.observe(5, 0.1)  # stays stopped
    assert sched(12345).lr == pytest.approx(0.01)


def test_synthetic_plateaus_decay_twice_then_terminate() -> None:
    sched = _autodecay(epochs=200)
    levels = [1.0, 0.5, 0.48]  # stage 3 improves by 4% only (< 1 - zeta): terminate there
    epoch, stage, start, lrs = 0, 0, 2.0, []
    while True:
        level = levels[min(sched.decays, len(levels) - 1)]
        loss = level + (start - level) * 0.5 ** stage
        lrs.append(sched(epoch * 10).lr)
        keep_going = sched.observe(epoch, loss)
        if not keep_going:
            break
        if len(sched.decay_epochs) and sched.decay_epochs[-1] == epoch:
            start, stage = loss, 0
        else:
            stage += 1
        epoch += 1
        assert epoch < 200
    assert sched.decays == 2
    assert sched.decay_epochs[0] < sched.decay_epochs[1] < sched.stopped_epoch
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.1, 0.01, 0.001])
    attrs = sched.extra_attrs()
    assert attrs["autodecay_stopped_epoch"] == epoch and attrs["autodecay_epochs_saved"] == 200 - (epoch + 1)


def test_constant_loss_is_unbiased_and_terminates_after_one_window() -> None:
    sched = _autodecay()
    for epoch in range(4):
        assert sched.observe(epoch, 3.0)
        assert sched.history[-1] == pytest.approx(3.0, rel=1e-12)  # bias correction: no pull towards f(0) = 0
    assert not sched.observe(4, 3.0)  # stable at once, but no drop at all


def test_noisy_loss_never_stable_keeps_going() -> None:
    rng = np.random.default_rng(0)
    sched = _autodecay(tolerance=1e-4)
    assert all(sched.observe(e, 1.0 + 0.5 * rng.random()) for e in range(50))
    assert sched.decays == 0


def test_plan_feeds_autodecay_and_resumes_from_state() -> None:
    schedule = {"family": "autodecay", "lr": 0.1, "beta": 0.0, "window": 2, "tolerance": 0.05, "gamma": 0.1}
    plan = build_plan(schedule, 20, 4)
    for epoch, loss in enumerate([1.0, 0.5, 0.49]):
        assert plan.observe(epoch, loss)
    assert plan(12).lr == pytest.approx(0.01)
    state = plan.phases[0].schedule.state_dict()
    fresh = build_plan(schedule, 20, 4)
    fresh.phases[0].schedule.load_state_dict(state)
    assert [fresh.observe(e, v) for e, v in ((3, 0.48), (4, 0.475))] == [True, False]
    assert fresh.extra_attrs()["autodecay_stopped_epoch"] == 4


def test_edma_monte_carlo_claim_c14() -> None:
    """g(t) is unbiased for the beta-weighted average of the loss, with the stated variance (You et al. A.1)."""
    beta, sigma, n, steps = 0.9, 0.1, 100_000, 40
    rng = np.random.default_rng(0)
    true = 1.0 + 0.5 * np.exp(-np.arange(1, steps + 1) / 10)  # a decreasing underlying loss
    noisy = true + sigma * rng.standard_normal((n, steps))
    f = np.zeros(n)
    for t in range(1, steps + 1):
        f = beta * f + (1 - beta) * noisy[:, t - 1]
        g = f / (1 - beta**t)
        weights = beta ** np.arange(t - 1, -1, -1)
        target = (weights * true[:t]).sum() / weights.sum()
        variance = (1 - beta) / (1 + beta) * (1 + beta**t) / (1 - beta**t) * sigma**2
        assert abs(g.mean() - target) < 3 * np.sqrt(variance / n)
        assert g.var() == pytest.approx(variance, rel=0.02)
    assert (1 - beta) / (1 + beta) == pytest.approx(0.0526, abs=1e-4)
    # The family computes the same g: replay a few of the sequences through it (window too long to ever decide).
    for row in noisy[:3]:
        sched = _autodecay(window=1000)
        for epoch, loss in enumerate(row):
            sched.observe(epoch, float(loss))
        f_row = 0.0
        for loss in row:
            f_row = beta * f_row + (1 - beta) * loss
        assert sched.history[-1] == pytest.approx(f_row / (1 - beta**steps), rel=1e-12)
