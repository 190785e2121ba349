"""Branching (issue 13) without Ray: the spec's switch, the checkpoint grid of a space, which trials are children
of which prefix (through Optuna's enqueue_trial, as the searcher does), and a trial's use of the store: it resumes
from the deepest checkpoint of its prefix, ends as it would from scratch, and a missing, corrupt or unwritable
store makes it train from scratch with the reason recorded, never fail."""

from __future__ import annotations

import pytest
import torch

from phasetune.search_spaces import SpecError, build_plan, sample_schedule
from phasetune.search_spaces.space import checkpoint_epochs
from phasetune.workers.branching import Branching, Completed, TrialBranch, phase_count, prefix_params, propose
from phasetune.workers.optuna_study import sampler_for
from phasetune.workers.seeding import Seeds
from phasetune.workers.spec import SamplerSpec, StudySpec
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from tests.factories import BRANCHES, small_spec

SEEDS = Seeds(data=1, init=2, batch_order=3)
EPOCHS = 5


def test_branching_options_are_checked_and_round_trip():
    assert Branching.parse(None) == Branching() and not Branching().enabled
    config = Branching.parse({"enabled": True, "child_fraction": 0.25, "top_k": 2, "max_bytes": 1 << 21})
    assert Branching.parse(config.to_dict()) == config
    for bad, field in (({"child_fraction": 1.5}, "child_fraction"), ({"top_k": 0}, "top_k"),
                       ({"top_k": 1.5}, "top_k"), ({"enabled": "yes"}, "enabled"), ({"cap": 1}, "cap")):
        with pytest.raises(SpecError) as err:
            Branching.parse(bad)
        assert err.value.loc == ("branching", field)


def test_a_branching_study_needs_phases_and_shared_seeds():
    spec = StudySpec.parse(small_spec("b", branching={"enabled": True}))
    assert spec.branching.enabled and StudySpec.parse(spec.to_dict()) == spec
    for overrides in ({"schedule": {"family": "cosine", "lr": {"low": 0.01, "high": 0.1}}},
                      {"seed_policy": {"init": "trial"}}):
        with pytest.raises(SpecError) as err:
            StudySpec.parse(small_spec("b", branching={"enabled": True}, **overrides))
        assert err.value.loc == ("branching", "enabled")
    StudySpec.parse(small_spec("b", schedule={"family": "cosine", "lr": 0.1}))  # off: anything goes


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


def test_children_are_proposed_after_the_startup_from_the_best_completed_trials():
    completed = [Completed(n, v, {"phase0.lr": 0.1 * n, "phase1.lr": 0.01, "transition_epoch0": 2})
                 for n, v in enumerate([0.5, 0.9, 0.7, 0.2, 0.8])]
    config = Branching(enabled=True, child_fraction=1.0, top_k=2)
    assert propose(completed, 3, config, maximize=True, startup=5, seed=0) is None  # still the random start-up
    assert propose(completed, 9, Branching(enabled=True, child_fraction=0.0), maximize=True, startup=5,
                   seed=0) is None
    parents = {propose(completed, n, config, maximize=True, startup=5, seed=0).parent for n in range(5, 40)}
    assert parents == {1, 4}  # the two best
    assert {propose(completed, n, config, maximize=False, startup=5, seed=0).parent for n in range(5, 40)} == {3, 0}
    child = propose(completed, 7, config, maximize=True, startup=5, seed=0)
    assert child == propose(completed, 7, config, maximize=True, startup=5, seed=0)  # a restarted driver alike
    assert child.params == {"phase0.lr": pytest.approx(0.1 * child.parent)} and child.depth == 1
    shares = [propose(completed, n, Branching(enabled=True), maximize=True, startup=5, seed=0) for n in range(5, 205)]
    assert 70 < sum(p is not None for p in shares) < 130  # child_fraction 0.5


def test_an_enqueued_child_keeps_its_parents_prefix_and_tpe_draws_the_rest():
    import optuna

    space = small_spec("b")["schedule"]
    study = optuna.create_study(direction="maximize", sampler=sampler_for(SamplerSpec(n_startup_trials=2), 0))
    for _ in range(3):
        trial = study.ask()
        sample_schedule(trial, space, 4)
        study.tell(trial, trial.params["phase0.lr"])
    best = study.best_trial
    completed = [Completed(t.number, t.value, t.params) for t in study.trials]
    child = propose(completed, len(study.trials), Branching(enabled=True, child_fraction=1.0, top_k=1),
                    maximize=True, startup=2, seed=0)
    study.enqueue_trial(child.params, skip_if_exists=False)
    trial = study.ask()
    schedule = sample_schedule(trial, space, 4)
    assert schedule["phases"][0]["lr"] == best.params["phase0.lr"]
    assert {"phase1.lr", "phase1.momentum", "transition_epoch0"} <= set(trial.params)


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
