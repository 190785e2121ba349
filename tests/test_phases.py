"""The study spec's phases: validation names the field, sampling is define-by-run, boundaries stay ordered."""

from __future__ import annotations

import optuna
import pytest

from phasetune.search_spaces import SpecError, build_plan, sample_schedule, validate_schedule

PHASES = {
    "family": "phases",
    "phases": [
        {"optimizer": "sgd", "lr": {"low": 0.05, "high": 1.0, "log": True}, "momentum": 0.0},
        {"optimizer": "sgd", "lr": {"low": 0.001, "high": 0.05, "log": True}, "momentum": {"low": 0.8, "high": 0.99}},
        {"lr": {"choices": [0.001, 0.0001]}, "momentum": 0.99, "nesterov": True},
    ],
    "transition_epochs": [{"low": 2, "high": 6}, {"low": 3, "high": 9}],
}


def test_n_phase_space_samples_ordered_boundaries():
    validate_schedule(PHASES, 12, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        concrete = sample_schedule(trial, PHASES, 12)
        first, second = concrete["transition_epochs"]
        assert 2 <= first < second <= 9
        assert 0.05 <= concrete["phases"][0]["lr"] <= 1.0
        assert concrete["phases"][2]["lr"] in (0.001, 0.0001)
        assert set(trial.params) == {"phase0.lr", "phase1.lr", "phase1.momentum", "phase2.lr",
                                     "transition_epoch0", "transition_epoch1"}
        plan = build_plan(concrete, 12, 5)
        assert [p.start_step for p in plan.phases] == [0, first * 5, second * 5]
        study.tell(trial, 0.0)


@pytest.mark.parametrize("space,loc", [
    ({"family": "phases", "phases": []}, ("phases",)),
    ({"family": "phases", "phases": [{"lr": 0.1}, {"lr": 0.1}]}, ("transition_epochs",)),
    ({"family": "phases", "phases": [{"lr": 0.1}, {"lr": 0.1}], "transition_epochs": [{"low": 5, "high": 12}]},
     ("transition_epochs", 0)),
    ({"family": "phases", "phases": [{"lr": 0.1}, {"lr": {"low": 0, "high": 1, "log": True}}],
      "transition_epochs": [3]}, ("phases", 1, "lr", "low")),
    ({"family": "phases", "phases": [{"lr": 0.1, "nesterov": True}]}, ("phases", 0, "nesterov")),
    ({"family": "phases", "phases": [{"family": "phases"}]}, ("phases", 0, "family")),
    ({"family": "constant"}, ("lr",)),
    ({"family": "constant", "lr": {"choices": []}}, ("lr", "choices")),
    ({"family": "constant", "lr": {"low": 0.1}}, ("lr", "high")),
    ({"family": "constant", "lr": {"low": 0.1, "high": 1, "step": 0.1, "log": True}}, ("lr", "step")),
    ({"choices": []}, ("choices",)),
    ({"choices": [{"family": "constant", "lr": -1}]}, ("choices", 0, "lr")),
])
def test_invalid_spaces_name_the_field(space, loc):
    with pytest.raises(SpecError) as err:
        validate_schedule(space, 12, 10)
    assert err.value.loc == loc


def test_choices_are_conditional():
    space = {"choices": [
        {"family": "constant", "lr": {"low": 0.01, "high": 0.1}},
        {"family": "phases", "phases": [{"lr": 0.5}, {"lr": {"low": 0.001, "high": 0.01}}], "transition_epochs": [2]},
    ]}
    validate_schedule(space, 4, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        concrete = sample_schedule(trial, space, 4)
        chosen = trial.params["schedule"]
        seen.add(chosen)
        assert concrete["family"] == chosen
        assert all(name == "schedule" or name.startswith(f"{chosen}.") for name in trial.params)
        study.tell(trial, 0.0)
    assert seen == {"constant", "phases"}
