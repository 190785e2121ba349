"""Early stopping's policies (``workers.early_stopping``) and the cooldown probe (``workers.cooldown``, which the
schedule tree judges prefixes by) on real training, without Ray: the decisions the service's searcher and the
benchmarks take."""

from __future__ import annotations

import copy

import pytest
import torch

from phasetune.search_spaces import SpecError
from phasetune.search_spaces.plan import build_plan
from phasetune.workers.early_stopping import EarlyStopper, EarlyStopping, Policy, TrialRecords
from phasetune.workers.optuna_study import TrialOutcome, trial_end
from phasetune.workers.seeding import Seeds
from phasetune.workers.study_attrs import LARGE_STEP
from phasetune.workers.train import train
from phasetune.workers.tree import FixedProbes
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
    """Every schedule trained to the end once, probed after every epoch (a probe changes nothing, see
    test_a_probe_leaves_training_exactly_as_it_was), so each policy's decisions can be replayed on the results."""
    torch.set_num_threads(1)
    cache = WorkloadCache()
    out = {}
    for name, schedule in SCHEDULES.items():
        workload = build_workload("ps10", PS10, Seeds(0, 0, 0), cache=cache)
        plan = build_plan(schedule, EPOCHS, workload.steps_per_epoch)
        out[name] = train(workload, plan, EPOCHS, probes=FixedProbes(range(1, EPOCHS), 0.15))
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


def test_asha_prunes_the_eventual_best_before_its_decay(curves):
    """Why raw values are the wrong signal for schedules (the schedule tree judges a prefix by its cooldown probe:
    tests/test_bench_tree.py keeps this best)."""
    finals = {name: results[-1]["val_accuracy"] for name, results in curves.items()}
    assert max(finals, key=finals.get) == "large-late", finals
    # Inside its large-step phase it looks worse than a small-step trial at the same epoch.
    before_decay = curves["large-late"][8]
    assert before_decay[LARGE_STEP] and before_decay["val_accuracy"] < curves["small-cosine"][8]["val_accuracy"]
    asha = run_policy(EarlyStopping(Policy.ASHA), curves)
    assert asha["large-late"] is not None and asha["large-late"] < 9, asha  # stopped before its decay at epoch 9


def test_a_restarted_stopper_takes_the_decisions_the_first_would_have(curves):
    """The rungs rebuilt from the recorded scores (what a restarted driver loads from the storage) decide the
    next trial exactly as the stopper that recorded them."""
    config = EarlyStopping(Policy.ASHA, min_peers=2)
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


def test_where_autodecay_ends_a_trial_itself_that_is_its_last_epoch_not_a_prune():
    torch.set_num_threads(1)
    workload = build_workload("ps10", PS10, Seeds(0, 0, 0))
    schedule = {"family": "autodecay", "lr": 0.3, "beta": 0.0, "window": 2, "tolerance": 0.2, "gamma": 0.1}
    plan = build_plan(schedule, EPOCHS, workload.steps_per_epoch)
    history = train(workload, plan, EPOCHS)
    (decay,) = plan.extra_attrs()["autodecay_decay_epochs"][:1]
    assert [r[LARGE_STEP] for r in history] == [r["epoch"] < decay for r in history]  # before its first decay
    stopped = plan.extra_attrs()["autodecay_stopped_epoch"]
    assert stopped == history[-1]["epoch"] < EPOCHS - 1 and history[-1]["last_epoch"]  # AutoDecay ended it itself
    end = trial_end(history[-1], lost=False, stop_requested=False, metric="val_accuracy")
    assert end.outcome is TrialOutcome.COMPLETE  # ... which is no prune


def test_a_probe_leaves_training_exactly_as_it_was():
    """The cooldown probe forks and discards: the trained weights are bit for bit those of a run without it."""
    torch.set_num_threads(1)
    schedule = two_phase(0.3, 4)
    weights = []
    for probes in (None, FixedProbes({1, 3, 5}, 0.15)):
        workload = build_workload("digits", {}, Seeds(0, 0, 0))
        history = train(workload, build_plan(schedule, 8, workload.steps_per_epoch), 8, probes=probes)
        weights.append(copy.deepcopy(workload.model.state_dict()))
        probed = [m["epoch"] for m in history if "cooldown_val_accuracy" in m]
    assert probed == [0, 2, 4]  # after 1, 3 and 5 epochs: inside phase 1 and after its decay at 4
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
    config = EarlyStopping.parse({"policy": "asha", "reduction_factor": 2, "grace_period": 2, "min_peers": None})
    assert config == EarlyStopping(Policy.ASHA, grace_period=2, reduction_factor=2.0)
    assert EarlyStopping.parse(config.to_dict()) == config
    assert config.to_dict() == {"policy": "asha", "grace_period": 2, "min_peers": 4, "reduction_factor": 2.0}
    for raw, field in [({"policy": "pbt"}, "policy"), ({"policy": "median", "cooldown_fraction": 0.1},
                                                         "cooldown_fraction"),
                       ({"policy": "asha", "grace_period": 1.5}, "grace_period"),
                       ({"policy": "median", "reduction_factor": 2}, "reduction_factor")]:
        with pytest.raises(SpecError) as err:
            EarlyStopping.parse(raw)
        assert err.value.loc == ("early_stopping", field)
    with pytest.raises(SpecError) as err:  # retired: the schedule tree replaced it
        EarlyStopping.parse({"policy": "schedule_aware"})
    assert err.value.loc == ("early_stopping", "policy") and '"strategy": {"name": "tree"}' in str(err.value)
