"""The training loop: the optimizer uses what the plan says, divergence ends a run (phase boundaries: test_phased)."""

from __future__ import annotations

import math

import pytest
import torch

from phasetune.search_spaces import build_plan, trace
from phasetune.search_spaces.phased import realised_momentum
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from tests.factories import BRANCHES

TWO_PHASE = {
    "family": "phases",
    "phases": [
        {"lr": 0.3, "momentum": 0.0},
        {"lr": 0.01, "momentum": 0.95, "weight_decay": 1e-4},
    ],
    "transition_epochs": [2],
}


def test_realised_lr_and_momentum_follow_the_plan():
    workload = build_workload("digits", {}, seed=0)
    plan = build_plan(TWO_PHASE, 4, workload.steps_per_epoch)
    history = train(workload, plan, 4, order_seed=0)
    assert [h["lr"] for h in history] == pytest.approx([0.3, 0.3, 0.01, 0.01])
    assert [h["momentum"] for h in history] == pytest.approx([0.0, 0.0, 0.95, 0.95])
    assert [h["phase"] for h in history] == [0, 0, 1, 1]
    # The loop and trace() share the plan: the first step of each epoch matches the trace.
    traced = trace(TWO_PHASE, 4, workload.steps_per_epoch)
    spe = workload.steps_per_epoch
    assert [traced["lr"][e * spe] for e in range(4)] == pytest.approx([h["lr"] for h in history])
    assert history[-1]["val_accuracy"] > 0.8


def test_adam_phase_drives_beta1():
    schedule = {"family": "phases", "phases": [{"optimizer": "adam", "lr": 0.01, "momentum": 0.8},
                                               {"optimizer": "sgd", "lr": 0.05, "momentum": 0.5}],
                "transition_epochs": [1]}
    workload = build_workload("digits", {}, seed=1)
    history = train(workload, build_plan(schedule, 2, workload.steps_per_epoch), 2)
    assert [h["momentum"] for h in history] == pytest.approx([0.8, 0.5])


def test_divergence_ends_the_run_early():
    workload = build_workload("quadratic", {"eig_max": 1.0}, seed=0)
    plan = build_plan({"family": "constant", "lr": 50.0}, 30, workload.steps_per_epoch)
    history = train(workload, plan, 30)
    assert len(history) < 30
    assert history[-1]["last_epoch"] and not math.isfinite(history[-1]["train_loss"])


def test_realised_momentum_reads_sgd_and_adam():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert realised_momentum(torch.optim.SGD(params, lr=0.1, momentum=0.7)) == pytest.approx(0.7)
    assert realised_momentum(torch.optim.Adam(params, lr=0.1, betas=(0.6, 0.99))) == pytest.approx(0.6)


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_a_branch_from_a_checkpoint_trains_exactly_as_from_scratch(name):
    """A schedule resumed from another run's checkpoint at a phase boundary where the two agree up to there
    (weights, optimizer state, driver position, RNG) ends with bit-identical weights and the same curve as that
    schedule trained from epoch 0, on CPU: what branching trials from a shared prefix rests on (issue 13)."""
    parent_schedule, branch_schedule, at = BRANCHES[name]
    epochs = 5

    def fresh():
        return build_workload("digits", {}, seed=3)

    taken = []
    parent = fresh()
    parent_history = train(parent, build_plan(parent_schedule, epochs, parent.steps_per_epoch), epochs,
                           order_seed=7, checkpoint_at={at}, on_checkpoint=taken.append)
    assert [c.epoch for c in taken] == [at]
    resumed = fresh()
    trained_here = []
    branched = train(resumed, build_plan(branch_schedule, epochs, resumed.steps_per_epoch), epochs, order_seed=7,
                     resume=taken[0], on_epoch=lambda m: trained_here.append(m["epoch"]))
    scratch = fresh()
    expected = train(scratch, build_plan(branch_schedule, epochs, scratch.steps_per_epoch), epochs, order_seed=7)
    assert trained_here == list(range(at + 1, epochs))  # the prefix was not trained again
    for mine, theirs in zip(resumed.model.state_dict().values(), scratch.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    drop = {"seconds"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in branched] == \
        [{k: v for k, v in h.items() if k not in drop} for h in expected]
    assert branched[:at + 1] == parent_history[:at + 1]  # the shared prefix, as the parent trained it
    assert branched[-1]["val_loss"] != parent_history[-1]["val_loss"]  # and then a schedule of its own
