"""Branching from a stored prefix (what the schedule tree's leaves do) without Ray: the checkpoint grid of a space,
a trial's prefix params, and a trial's use of the store: it resumes from the deepest checkpoint of its prefix, ends
as it would from scratch, and a missing, corrupt or unwritable store makes it train from scratch with the reason
recorded, never fail. The spec's retired ``branching`` switch is refused with what replaced it."""

from __future__ import annotations

import pytest
import torch

from phasetune.search_spaces import SpecError, build_plan
from phasetune.search_spaces.space import checkpoint_epochs
from phasetune.workers.branching import TrialBranch, phase_count, prefix_params
from phasetune.workers.seeding import Seeds
from phasetune.workers.spec import StudySpec
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from tests.factories import BRANCHES, small_spec

SEEDS = Seeds(data=1, init=2, batch_order=3)
EPOCHS = 5


def test_the_retired_branching_switch_is_refused_with_what_replaced_it():
    with pytest.raises(SpecError) as err:
        StudySpec.parse(small_spec("b", branching={"enabled": True}))
    assert err.value.loc == ("branching",) and '"strategy": {"name": "tree"}' in str(err.value)
    stored = small_spec("b", branching={"enabled": False, "child_fraction": 0.5, "top_k": 3, "max_bytes": 1 << 30})
    assert StudySpec.parse(stored) == StudySpec.parse(small_spec("b"))  # an earlier version's stored spec, off


def test_checkpoint_epochs_are_the_last_full_epochs_before_each_candidate_boundary():
    phases = {"family": "phases", "phases": [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}],
              "transition_epochs": [{"low": 2, "high": 4}, 7.5]}
    assert checkpoint_epochs(phases, 10) == (1, 2, 3, 6)
    preset = {"preset": "regimes", "transition_epoch": {"low": 3, "high": 5}}
    choices = {"choices": [preset, {"family": "cosine", "lr": 0.1}]}
    assert checkpoint_epochs(choices, 10) == (2, 3, 4)
    assert checkpoint_epochs({"family": "cosine", "lr": 0.1}, 10) == ()
    last = {**phases, "transition_epochs": [1, {"low": 8, "high": 10}]}
    assert checkpoint_epochs(last, 10) == (0, 7, 8)  # none at the last epoch: nothing trains after it


def test_prefix_params_are_the_first_phases_and_their_boundaries():
    params = {"schedule": "phases", "phases.phase0.lr": 0.3, "phases.phase1.lr": 0.1, "phases.phase2.lr": 0.01,
              "phases.transition_epoch0": 2, "phases.transition_epoch1": 4}
    assert phase_count(params) == 3 and phase_count({"lr": 0.1}) == 0
    assert prefix_params(params, 1) == {"schedule": "phases", "phases.phase0.lr": 0.3}
    assert prefix_params(params, 2) == {"schedule": "phases", "phases.phase0.lr": 0.3, "phases.phase1.lr": 0.1,
                                        "phases.transition_epoch0": 2}
    assert prefix_params({"phase0.lr": 0.3, "phase1.lr": 0.1, "transition_epoch0": 2}, 1) == {"phase0.lr": 0.3}


def _branch(tmp_path, schedule, trial, parent=None, io_budget=1.0):
    workload = build_workload("digits", {}, SEEDS)
    plan = build_plan(schedule, EPOCHS, workload.steps_per_epoch)
    config = {"root": str(tmp_path / "store"), "max_bytes": 1 << 30, "epochs": [0, 1, 2, 3], "parent": parent,
              "io_budget": io_budget}
    return workload, plan, TrialBranch.open(config, "digits", {}, SEEDS, plan, trial)


def _run(workload, plan, branch):
    resume = branch.resume()
    history = train(workload, plan, EPOCHS, order_seed=SEEDS.batch_order, resume=resume,
                    checkpoint_at=branch.checkpoint_at, on_checkpoint=branch.save)
    return history


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_a_trial_resumes_from_the_deepest_checkpoint_of_its_prefix_and_ends_as_from_scratch(tmp_path, name):
    parent_schedule, child_schedule, at = BRANCHES[name]
    workload, plan, parent = _branch(tmp_path, parent_schedule, trial=0)
    _run(workload, plan, parent)
    assert parent.parent is None and parent.written >= 1 and parent.summary()["problems"] == []
    workload, plan, child = _branch(tmp_path, child_schedule, trial=1, parent=0)
    history = _run(workload, plan, child)
    # The deepest shared checkpoint: the epoch before the two schedules part (the BRANCHES' own ``at``).
    assert child.summary()["parent"] == 0 and child.branched_at == at and child.reused_epochs == at + 1
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    scratch = build_workload("digits", {}, SEEDS)
    expected = train(scratch, build_plan(child_schedule, EPOCHS, scratch.steps_per_epoch), EPOCHS,
                     order_seed=SEEDS.batch_order)
    for mine, theirs in zip(workload.model.state_dict().values(), scratch.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in expected]


def test_a_missing_or_corrupt_checkpoint_means_from_scratch_recorded(tmp_path):
    parent_schedule, child_schedule, at = BRANCHES["2-phase"]
    workload, plan, lonely = _branch(tmp_path, child_schedule, trial=1, parent=0)  # its parent left nothing
    assert len(_run(workload, plan, lonely)) == EPOCHS
    assert lonely.parent is None and "from scratch" in lonely.summary()["problems"][0]
    for path in (tmp_path / "store").glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint")  # every checkpoint of the prefix corrupt (evicted alike: gone)
    workload, plan, child = _branch(tmp_path, child_schedule, trial=2, parent=1)
    assert len(_run(workload, plan, child)) == EPOCHS
    assert child.parent is None and "corrupt" in child.summary()["problems"][0]


def test_a_store_that_cannot_be_written_costs_the_branch_not_the_trial(tmp_path):
    (tmp_path / "store").write_text("a file where the store's directory should be")
    workload, plan, branch = _branch(tmp_path, BRANCHES["2-phase"][0], trial=0)
    assert len(_run(workload, plan, branch)) == EPOCHS
    assert branch.written == 0 and "no checkpoint store" in branch.summary()["problems"][0]


def test_no_checkpoint_is_left_inside_the_last_phase(tmp_path):
    schedule = {"family": "phases", "transition_epochs": [2], "phases": [{"lr": 0.1}, {"lr": 0.01}]}
    _, _, branch = _branch(tmp_path, schedule, trial=0)
    assert sorted(branch.keys) == [0, 1]  # a prefix into the last phase is no child's


def test_checkpoints_are_left_within_the_io_budget(tmp_path):
    schedule = {"family": "phases", "transition_epochs": [4], "phases": [{"lr": 0.1}, {"lr": 0.01}]}
    workload, plan, ample = _branch(tmp_path / "ample", schedule, trial=0)
    _run(workload, plan, ample)
    assert ample.written == 4 and ample.skipped == 0
    workload, plan, frugal = _branch(tmp_path / "frugal", schedule, trial=0, io_budget=1e-9)  # the lookup spent it
    assert len(_run(workload, plan, frugal)) == EPOCHS
    assert frugal.written == 0 and frugal.summary()["checkpoints_skipped"] == 4
