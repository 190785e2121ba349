"""Every family is searchable (alone, as a choice, inside a phase); bad specs name the field; contract tests."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from phasetune.search_spaces import FAMILIES, SpecError, build_plan, sample_schedule, trace, validate_schedule
from phasetune.search_spaces.families import Horizon
from phasetune.search_spaces.segment import build
from tests.factories import EPOCHS, INVALID, SPACES, SPE, UNIT_ERRORS

optuna.logging.set_verbosity(optuna.logging.WARNING)
# A concrete example per family, for the contract tests.
EXAMPLES: dict[str, dict] = {
    "constant": {"family": "constant", "lr": 0.1},
    "step": {"family": "step", "lr": 0.1, "step_size": 3, "gamma": 0.1},
    "multistep": {"family": "multistep", "lr": 0.1, "milestones": [5, 7.5], "gamma": 0.1},
    "exponential": {"family": "exponential", "lr": 0.1, "gamma": 0.8},
    "linear": {"family": "linear", "lr": 0.1, "eta_min": 0.001},
    "cosine": {"family": "cosine", "lr": 0.1, "eta_min": 0.0},
    "sgdr": {"family": "sgdr", "lr": 0.1, "t_0": 1.5, "t_mult": 2, "eta_min": 0.0},
    "cyclic": {"family": "cyclic", "base_lr": 0.001, "max_lr": 0.1, "step_size_up": 2.0, "cycle_momentum": True},
    "onecycle": {"family": "onecycle", "max_lr": 0.1, "three_phase": True, "pct_start": 0.25},
    "rex": {"family": "rex", "lr": 0.1, "alpha": 0.9},
    "autodecay": {"family": "autodecay", "lr": 0.1},
}
FIRST_LR = {"cyclic": 0.001, "onecycle": 0.1 / 25}


def test_every_family_has_a_space_and_an_example() -> None:
    assert set(SPACES) == set(EXAMPLES) == set(FAMILIES)


def _study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


@pytest.mark.parametrize("family", sorted(SPACES))
def test_family_is_searchable_alone(family: str) -> None:
    space = SPACES[family]
    validate_schedule(space, EPOCHS, SPE)
    study = _study()
    for _ in range(6):
        trial = study.ask()
        concrete = sample_schedule(trial, space, EPOCHS)
        assert concrete["family"] == family
        lrs = trace(concrete, EPOCHS, SPE)["lr"]
        assert all(math.isfinite(v) and v >= 0 for v in lrs)
        study.tell(trial, lrs[-1])
    names = list(study.trials[0].params)
    for key, value in space.items():
        if isinstance(value, (dict, list)):  # searched: it has an Optuna parameter (milestones0, warmup.epochs...)
            assert any(name.startswith(key) for name in names), (key, names)


def test_choices_params_appear_only_in_trials_that_chose_them() -> None:
    space = {"choices": [SPACES["cosine"], SPACES["onecycle"], SPACES["autodecay"]]}
    validate_schedule(space, EPOCHS, SPE)
    study = _study()
    chosen = set()
    for _ in range(15):
        trial = study.ask()
        concrete = sample_schedule(trial, space, EPOCHS)
        label = trial.params["schedule"]
        chosen.add(label)
        assert concrete["family"] == label
        assert all(name == "schedule" or name.startswith(f"{label}.") for name in trial.params)
        trace(concrete, EPOCHS, SPE)
        study.tell(trial, 0.0)
    assert chosen == {"cosine", "onecycle", "autodecay"}


def test_phases_with_a_cosine_phase() -> None:
    space = {"family": "phases", "transition_epochs": [{"low": 3, "high": 7}],
             "phases": [{"effective_lr": {"low": 0.5, "high": 2.0, "log": True},
                         "momentum": {"choices": [0.0, 0.5, 0.9]}},
                        {"family": "cosine", "lr": {"low": 1e-3, "high": 1e-2, "log": True}, "momentum": 0.98}]}
    validate_schedule(space, EPOCHS, SPE)
    study = _study()
    for _ in range(5):
        trial = study.ask()
        concrete = sample_schedule(trial, space, EPOCHS)
        first, second = concrete["phases"]
        assert first["lr"] == pytest.approx(first["effective_lr"] * (1 - first["momentum"]))
        values = trace(concrete, EPOCHS, SPE)
        boundary = round(concrete["transition_epochs"][0] * SPE)
        assert set(values["lr"][:boundary]) == {first["lr"]}
        assert values["lr"][boundary] == second["lr"]  # the cosine phase starts at its own step 0
        assert values["lr"][-1] < second["lr"] * 0.01
        assert values["momentum"][boundary:] == [0.98] * (EPOCHS * SPE - boundary)
        study.tell(trial, 0.0)


def test_effective_lr_is_recorded_and_gives_lr() -> None:
    space = {"family": "cosine", "effective_lr": {"low": 0.1, "high": 1.0}, "momentum": {"low": 0.0, "high": 0.95}}
    validate_schedule(space, EPOCHS, SPE)
    study = _study()
    for _ in range(5):
        concrete = sample_schedule(study.ask(), space, EPOCHS)
        assert concrete["lr"] == pytest.approx(concrete["effective_lr"] * (1 - concrete["momentum"]))
        assert trace(json.loads(json.dumps(concrete)), EPOCHS, SPE)["lr"][0] == pytest.approx(concrete["lr"])
        validate_schedule(concrete, EPOCHS, SPE)  # the recorded pair agrees
    without_lr = {"family": "step", "effective_lr": 1.0, "momentum": 0.9, "step_size": 2}
    assert trace(without_lr, 4, 2)["lr"][0] == pytest.approx(0.1)


def test_list_fields_are_sampled_increasing() -> None:
    # Overlapping ranges: each draw starts after the previous one (the ends must still increase).
    space = {"family": "multistep", "lr": 0.1, "milestones": [{"low": 2.0, "high": 8.0}, {"low": 2.5, "high": 9.0}]}
    validate_schedule(space, EPOCHS, SPE)
    study = _study()
    for _ in range(20):
        concrete = sample_schedule(study.ask(), space, EPOCHS)
        assert concrete["milestones"][0] < concrete["milestones"][1]
        trace(concrete, EPOCHS, SPE)


@pytest.mark.parametrize(("space", "loc"), INVALID, ids=[f"{s.get('family', 'choices')}-{'.'.join(map(str, loc))}"
                                                          for s, loc in INVALID])
def test_invalid_spec_names_the_field(space: dict, loc: tuple) -> None:
    with pytest.raises(SpecError) as err:
        validate_schedule(space, EPOCHS, SPE)
    assert err.value.loc[: len(loc)] == loc, err.value


@pytest.mark.parametrize(("space", "loc"), UNIT_ERRORS, ids=[".".join(map(str, loc)) for _, loc in UNIT_ERRORS])
def test_units_are_checked_by_the_schedule_space(space: dict, loc: tuple) -> None:
    with pytest.raises(SpecError) as err:
        validate_schedule(space, EPOCHS, SPE)
    assert err.value.loc == loc, err.value
    validate_schedule({"family": "cosine", "lr": {"low": 1, "high": 3, "unit": "lr_crit"},
                       "eta_min": {"low": 0.0, "high": 0.1, "unit": "lr_div"}}, EPOCHS, SPE)


def test_durations_are_checked_at_the_workloads_resolution() -> None:
    """0.1 epochs is one step at 10 steps per epoch and none at 4: refused up front, not in a trial."""
    space = {"family": "step", "lr": 0.1, "step_size": 0.1}
    validate_schedule(space, EPOCHS, 10)
    with pytest.raises(SpecError) as err:
        validate_schedule(space, EPOCHS, 4)
    assert err.value.loc == ("step_size",)
    warm = {"family": "cosine", "lr": 0.1, "warmup": {"epochs": {"low": 0.1, "high": 1.0}}}
    with pytest.raises(SpecError) as err:
        validate_schedule(warm, EPOCHS, 4)
    assert err.value.loc == ("warmup", "epochs")


def test_concrete_schedules_are_checked_too() -> None:
    with pytest.raises(SpecError) as err:
        trace({"family": "cosine", "lr": -0.1}, 2, 2)
    assert err.value.loc == ("lr",)
    with pytest.raises(SpecError) as err:
        trace({"family": "cosine", "lr": 0.1, "warmup": {"epochs": 3}}, 2, 2)
    assert err.value.loc == ("warmup", "epochs")
    with pytest.raises(SpecError) as err:
        trace({"family": "cosine", "effective_lr": 1.0, "momentum": 0.9, "lr": 0.5}, 2, 2)
    assert err.value.loc == ("lr",)


# ---- contract tests, parametrized over every family -------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_first_value(family: str) -> None:
    values = trace(EXAMPLES[family], EPOCHS, SPE)
    assert values["lr"][0] == pytest.approx(FIRST_LR.get(family, 0.1))


@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_lr_finite_and_positive(family: str) -> None:
    for spe in (1, 3, SPE):
        assert all(math.isfinite(v) and v > 0 for v in trace(EXAMPLES[family], EPOCHS, spe)["lr"])


@pytest.mark.parametrize("family", sorted(EXAMPLES))
@pytest.mark.parametrize("warmup", [None, {"epochs": 1.5, "start_factor": 0.1}])
def test_value_is_held_past_the_end(family: str, warmup: dict | None) -> None:
    concrete = {**EXAMPLES[family], **({"warmup": warmup} if warmup else {})}
    total = EPOCHS * SPE
    schedule = build(family, concrete, Horizon(total, SPE))
    at_end = schedule(total)
    assert all(schedule(total + k) == at_end for k in (1, 5, 10 * total))
    assert at_end.lr >= 0 and math.isfinite(at_end.lr)


@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_warmup_ramps_to_the_family_start(family: str) -> None:
    concrete = {**EXAMPLES[family], "warmup": {"epochs": 2, "start_factor": 0.0}}
    with_warmup = trace(concrete, EPOCHS, SPE)["lr"]
    assert with_warmup[0] == 0.0
    assert with_warmup[:2 * SPE] == sorted(with_warmup[:2 * SPE])
    assert with_warmup[2 * SPE] == pytest.approx(FIRST_LR.get(family, 0.1))
    assert with_warmup[SPE] == pytest.approx(with_warmup[2 * SPE] / 2)


@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_json_round_trip_of_concrete_schedules(family: str) -> None:
    concrete = sample_schedule(_study().ask(), SPACES[family], EPOCHS)
    again = json.loads(json.dumps(concrete))
    assert again == concrete
    assert trace(again, EPOCHS, SPE) == trace(concrete, EPOCHS, SPE)
    validate_schedule(again, EPOCHS, SPE)  # a concrete schedule is also a (degenerate) space
    plan = build_plan(again, EPOCHS, SPE)
    assert plan.total_steps == EPOCHS * SPE


def test_a_phase_is_checked_over_the_span_it_can_get() -> None:
    """A warmup of 3 epochs cannot fit a phase that ends at epoch 1: every trial would fail, so it is refused."""
    def space(transition):
        return {"family": "phases", "transition_epochs": [transition],
                "phases": [{"family": "cosine", "lr": 0.1, "warmup": {"epochs": 3}}, {"lr": 0.01}]}

    with pytest.raises(SpecError) as err:
        validate_schedule(space(1), EPOCHS, SPE)
    assert err.value.loc == ("phases", 0, "warmup", "epochs")
    validate_schedule(space({"low": 1, "high": 6}), EPOCHS, SPE)  # long enough in some draws: those that are not fail
