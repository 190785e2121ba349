"""Early stopping's policies (``workers.early_stopping``) and the cooldown probe (``workers.cooldown``) on real
training, without Ray: the decisions the service's searcher and the benchmark take."""

from __future__ import annotations

import copy

import pytest
import torch

from phasetune.search_spaces import SpecError
from phasetune.search_spaces.plan import build_plan
from phasetune.workers.early_stopping import (
    LARGE_STEP,
    EarlyStopper,
    EarlyStopping,
    Policy,
    ProbeSchedule,
    TrialRecords,
)
from phasetune.workers.optuna_study import TrialOutcome, trial_end
from phasetune.workers.seeding import Seeds
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload
from phasetune.workers.workloads.cache import WorkloadCache

PS10 = {"noise": 0.1, "n_train": 1000, "n_val": 500}
EPOCHS = 12


def two_phase(lr1: float, transition: int, lr2: float = 0.01) -> dict:
    return {"family": "phases", "transition_epochs": [transition],
            "phases": [{"lr": lr1, "momentum": 0.0}, {"family": "constant", "lr": lr2, "momentum": 0.9}]}


# Trained in this order. "large-late" is the eventual best: a large-LR first phase that decays late (two-regimes
# paper), worse than the small-LR trials on raw validation accuracy until after its decay.
SCHEDULES = {
    "small-early": two_phase(0.05, 1),
    "small-early-2": two_phase(0.1, 2),
    "mid": two_phase(0.2, 3),
    "small-cosine": {"family": "cosine", "lr": 0.05, "momentum": 0.9},
    "large-late-2": two_phase(0.6, 8),
    "large-late": two_phase(1.0, 9),
    "small-late": two_phase(0.05, 6),
    "tiny-constant": {"family": "constant", "lr": 0.01, "momentum": 0.0},
}


@pytest.fixture(scope="module")
def curves() -> dict[str, list[dict]]:
    """Every schedule trained to the end once, probed at schedule_aware's points (a probe changes nothing, see
    test_a_probe_leaves_training_exactly_as_it_was), so each policy's decisions can be replayed on the results."""
    torch.set_num_threads(1)
    cache, probed = WorkloadCache(), EarlyStopping(Policy.SCHEDULE_AWARE)
    out = {}
    for name, schedule in SCHEDULES.items():
        workload = build_workload("ps10", PS10, Seeds(0, 0, 0), cache=cache)
        plan = build_plan(schedule, EPOCHS, workload.steps_per_epoch)
        out[name] = train(workload, plan, EPOCHS, probes=ProbeSchedule(probed, EPOCHS))
    return out


def run_policy(config: EarlyStopping, curves: dict[str, list[dict]]) -> dict[str, int | None]:
    """Each trial in turn through the policy, as the searcher feeds it: the epoch each stopped after (None: ran
    to its end)."""
    stopper = EarlyStopper(config, EPOCHS, "val_accuracy", maximize=True)
    stopped: dict[str, int | None] = {}
    for number, (name, results) in enumerate(curves.items()):
        stopped[name] = None
        for result in results:
            decision, _ = stopper.decide(number, result)
            if decision is not None and decision.stop:
                stopped[name] = decision.epoch
                break
        stopper.finish(number, completed=stopped[name] is None)
    return stopped


def test_the_naive_policies_prune_the_eventual_best_and_schedule_aware_keeps_it(curves):
    finals = {name: results[-1]["val_accuracy"] for name, results in curves.items()}
    assert max(finals, key=finals.get) == "large-late", finals
    # Inside its large-step phase it looks worse than a small-step trial at the same epoch.
    before_decay = curves["large-late"][8]
    assert before_decay[LARGE_STEP] and before_decay["val_accuracy"] < curves["small-cosine"][8]["val_accuracy"]

    asha = run_policy(EarlyStopping(Policy.ASHA), curves)
    assert asha["large-late"] is not None and asha["large-late"] < 9, asha  # stopped before its decay at epoch 9

    aware = run_policy(EarlyStopping(Policy.SCHEDULE_AWARE), curves)
    assert aware["large-late"] is None, aware
    assert any(epoch is not None for epoch in aware.values()), aware  # it does stop trials, after their decay
    for name, epoch in aware.items():
        if epoch is not None:
            assert not curves[name][epoch][LARGE_STEP], (name, epoch)


def test_a_restarted_stopper_takes_the_decisions_the_first_would_have(curves):
    """The rungs rebuilt from the recorded scores (what a restarted driver loads from the storage) decide the
    next trial exactly as the stopper that recorded them."""
    config = EarlyStopping(Policy.SCHEDULE_AWARE, min_peers=2)
    first = EarlyStopper(config, EPOCHS, "val_accuracy", maximize=True)
    records = []
    names = list(curves)
    for number, name in enumerate(names[:-1]):
        scores, completed = {}, True
        for result in curves[name]:
            decision, attrs = first.decide(number, result)
            scores.update({int(key.split(":")[1]): value for key, value in attrs.items()})
            if decision is not None and decision.stop:
                completed = False
                break
        first.finish(number, completed)
        records.append(TrialRecords(number, completed, scores))
    restarted = EarlyStopper(config, EPOCHS, "val_accuracy", maximize=True)
    restarted.load(records)
    last = len(names) - 1
    for result in curves[names[-1]]:
        assert restarted.decide(last, result) == first.decide(last, result)


def test_autodecay_is_not_judged_before_its_first_decay_and_its_own_end_is_complete(curves):
    """AutoDecay's phase before its first decay is a large-step phase: probed and recorded, never judged; after
    the decay it is judged like any trial, and where AutoDecay ends the trial itself that is its last epoch."""
    torch.set_num_threads(1)
    stopper = EarlyStopper(EarlyStopping(Policy.SCHEDULE_AWARE), EPOCHS, "val_accuracy", maximize=True)
    for number, results in enumerate(curves.values()):  # the peers
        for result in results:
            decision, _ = stopper.decide(number, result)
            if decision is not None and decision.stop:
                break
        stopper.finish(number, completed=decision is None or not decision.stop)
    ends = []
    for number, tolerance in enumerate((0.05, 0.2), start=len(curves)):
        workload = build_workload("ps10", PS10, Seeds(0, 0, 0))
        schedule = {"family": "autodecay", "lr": 0.3, "beta": 0.0, "window": 2, "tolerance": tolerance, "gamma": 0.1}
        plan = build_plan(schedule, EPOCHS, workload.steps_per_epoch)
        history = train(workload, plan, EPOCHS, probes=ProbeSchedule(stopper.config, EPOCHS))
        decisions = [stopper.decide(number, result) for result in history]
        (decay,) = plan.extra_attrs()["autodecay_decay_epochs"][:1]
        assert [r[LARGE_STEP] for r in history] == [r["epoch"] < decay for r in history]
        inside = [(d, attrs) for (d, attrs), r in zip(decisions, history, strict=True) if r[LARGE_STEP] and d]
        assert inside and all(not d.stop and "large-step" in d.reason and attrs for d, attrs in inside)
        ends.append((history[-1], plan.extra_attrs()["autodecay_stopped_epoch"]))
    (late, late_stop), (early, early_stop) = ends
    assert late_stop is None and late["epoch"] == EPOCHS - 1  # decayed at epoch 10: too late to be worth a probe
    assert early_stop == early["epoch"] < EPOCHS - 1 and early["last_epoch"]  # AutoDecay ended it itself ...
    end = trial_end(early, lost=False, stop_requested=False, metric="val_accuracy")
    assert end.outcome is TrialOutcome.COMPLETE  # ... which is no prune


def test_a_diverged_trial_stops_at_once_even_in_its_large_step_phase():
    stopper = EarlyStopper(EarlyStopping(Policy.SCHEDULE_AWARE), EPOCHS, "val_accuracy", maximize=True)
    decision, _ = stopper.decide(0, {"epoch": 0, "train_loss": 2.0, "initial_loss": 2.3, LARGE_STEP: True})
    assert decision is None  # epoch 0: not a probe point, not diverged
    catapult, _ = EarlyStopper(EarlyStopping(Policy.SCHEDULE_AWARE), EPOCHS, "val_accuracy", maximize=True).decide(
        2, {"epoch": 0, "train_loss": 40.0, "initial_loss": 2.3, LARGE_STEP: True})
    assert catapult is None  # the first epoch's loss may spike at large LR (catapult) and come back
    decision, _ = stopper.decide(0, {"epoch": 1, "train_loss": 40.0, LARGE_STEP: True})
    assert decision.stop and "diverged" in decision.reason and decision.epoch == 1
    decision, _ = EarlyStopper(EarlyStopping(Policy.SCHEDULE_AWARE), EPOCHS, "val_accuracy", maximize=True).decide(
        1, {"epoch": 0, "train_loss": float("nan"), LARGE_STEP: True})
    assert decision.stop and "diverged" in decision.reason


def test_a_probe_leaves_training_exactly_as_it_was():
    """The cooldown probe forks and discards: the trained weights are bit for bit those of a run without it."""
    torch.set_num_threads(1)
    schedule = two_phase(0.3, 4)
    weights = []
    for probes in (None, ProbeSchedule(EarlyStopping(Policy.SCHEDULE_AWARE), 8)):
        workload = build_workload("digits", {}, Seeds(0, 0, 0))
        history = train(workload, build_plan(schedule, 8, workload.steps_per_epoch), 8, probes=probes)
        weights.append(copy.deepcopy(workload.model.state_dict()))
        probed = [m["epoch"] for m in history if "cooldown_val_accuracy" in m]
    assert probed == [0, 2, 4]  # rungs 1 and 3 (inside phase 1), then the catch-up after its decay at 4
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_the_probe_measures_what_decaying_now_would_give(curves):
    """After a large-LR phase the decayed fork is better than the running trial (the warmup-stable-decay
    observation the probe rests on); its cost is reported in steps."""
    result = curves["large-late"][8]
    assert result["cooldown_val_accuracy"] > result["val_accuracy"]
    assert result["cooldown_steps"] == -(-int(0.15 * 9 * 8 * 10) // 10)  # ceil(15% of 9 epochs' 8 steps)


def test_rungs_and_options():
    assert EarlyStopping(Policy.ASHA).rungs(10) == (1, 3, 9)
    assert EarlyStopping(Policy.ASHA, grace_period=2, reduction_factor=2).rungs(10) == (2, 4, 8)
    assert EarlyStopping(Policy.MEDIAN, grace_period=3).rungs(6) == (3, 4, 5)
    assert EarlyStopping().rungs(10) == ()
    # schedule_aware probes only where a stop saves more than the probe costs: not after 9 of 10 epochs.
    aware = EarlyStopping(Policy.SCHEDULE_AWARE)
    assert aware.rungs(10) == (1, 3) and aware.rungs(30) == (1, 3, 9)
    late = ProbeSchedule(aware, 10)
    assert late.due(3, large_step=True) and not any(late.due(e, large_step=True) for e in range(4, 9))
    assert not late.due(9, large_step=False)  # its catch-up would cost 1.35 epochs to save 1
    early = ProbeSchedule(aware, 10)
    assert early.due(3, large_step=True) and early.due(5, large_step=False) and not early.due(6, large_step=False)
    config = EarlyStopping.parse({"policy": "asha", "reduction_factor": 2, "grace_period": 2, "min_peers": None})
    assert config == EarlyStopping(Policy.ASHA, grace_period=2, reduction_factor=2.0)
    assert EarlyStopping.parse(config.to_dict()) == config
    assert config.to_dict() == {"policy": "asha", "grace_period": 2, "min_peers": 4, "reduction_factor": 2.0}
    for raw, field in [({"policy": "pbt"}, "policy"), ({"policy": "median", "cooldown_fraction": 0.1},
                                                         "cooldown_fraction"),
                       ({"policy": "asha", "grace_period": 1.5}, "grace_period"),
                       ({"policy": "schedule_aware", "divergence_factor": 1}, "divergence_factor")]:
        with pytest.raises(SpecError) as err:
            EarlyStopping.parse(raw)
        assert err.value.loc == ("early_stopping", field)
