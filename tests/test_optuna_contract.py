"""What phasetune relies on in Optuna beyond its documented API: the private names in ``workers/optuna_study.py``.

If a new Optuna release renames or changes one of them, this fails first, and loudly, naming it.
"""

from __future__ import annotations

import warnings

import optuna
import pytest

from phasetune.workers import optuna_study


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="contract", storage=f"sqlite:///{tmp_path / 'contract.db'}")


def test_private_names_still_mean_what_phasetune_reads(study):
    storage = optuna_study.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage), "Study._storage"
    sid = optuna_study.study_id(study)
    assert sid == storage.get_study_id_from_name("contract"), "Study._study_id"
    (frozen_study,) = storage.get_all_studies()
    assert optuna_study.study_id(frozen_study) == sid, "FrozenStudy._study_id"
    trial = study.ask()
    tid = optuna_study.trial_id(trial)
    assert tid == storage.get_trial_id_from_study_id_trial_number(sid, trial.number), "Trial._trial_id"
    assert optuna_study.trial_id(study.trials[0]) == tid, "FrozenTrial._trial_id"


def test_a_retried_trial_can_overwrite_its_curve_where_report_cannot(study):
    """Why ``set_intermediate_value`` writes through the storage: ``Trial.report`` keeps the first value of a step."""
    trial = study.ask()
    trial.report(1.0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial.report(2.0, 0)
    assert study.trials[0].intermediate_values == {0: 1.0}
    optuna_study.set_intermediate_value(study, trial, 0, 3.0)
    assert study.trials[0].intermediate_values == {0: 3.0}


def test_the_sweep_fails_a_running_trial_by_number(study):
    study.ask()
    assert optuna_study.sweep_stale_trials(study) == 1
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["phasetune_swept"] is True
    assert trial.user_attrs["fail_reason"].startswith("swept: ")  # every FAIL says why (issue 24)
    assert optuna_study.sweep_stale_trials(study) == 0


def test_the_rdb_reads_agree_with_optunas_public_ones(study):
    """``count_trials``, ``count_trials_with_attr`` and ``trials_page`` read Optuna's tables through its private
    models; they must give what the public (load-everything) API gives."""
    from optuna.trial import TrialState

    for i in range(5):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("tag", i)
        if i % 2 == 0:
            trial.set_user_attr("even", True)
        trial.report(i / 10, 0)
        if i < 4:
            study.tell(trial, i / 10) if i % 3 else study.tell(trial, state=TrialState.FAIL)
    storage = optuna_study.storage_of(study)._backend
    sid = optuna_study.study_id(study)
    public = study.get_trials(deepcopy=False)
    expected: dict = {}
    for trial in public:
        expected[trial.state] = expected.get(trial.state, 0) + 1
    assert optuna_study.count_trials(storage, sid) == expected
    assert optuna_study.count_trials_with_attr(storage, sid, "even") == 3
    page = optuna_study.trials_page(storage, sid, 1, 3)
    assert [t.number for t in page] == [1, 2, 3]
    for ours, theirs in zip(page, public[1:4]):  # as Optuna builds them, less the intermediate values
        assert ours == optuna.trial.FrozenTrial(**{**_fields(theirs), "intermediate_values": {}})
    assert optuna_study.trials_page(storage, sid, 5, 3) == []
    assert all("even" not in t.user_attrs and "tag" in t.user_attrs
               for t in optuna_study.trials_page(storage, sid, 0, 5, omit=("ev",)))
    assert optuna_study.best_trial(storage, sid).number == study.best_trial.number == 1


def _fields(trial):
    return {"number": trial.number, "state": trial.state, "value": None, "values": trial.values,
            "datetime_start": trial.datetime_start, "datetime_complete": trial.datetime_complete,
            "params": trial.params, "distributions": trial.distributions, "user_attrs": trial.user_attrs,
            "system_attrs": trial.system_attrs, "intermediate_values": trial.intermediate_values,
            "trial_id": optuna_study.trial_id(trial)}
