"""The Optuna-backed Tune searcher, driven directly (no Ray cluster), on SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search import Searcher

from phasetune.service.db import migrate
from phasetune.workers import epoch_log, study_attrs
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import sweep_stale_trials
from phasetune.workers.searcher import OptunaStudySearcher
from phasetune.workers.spec import TRIAL_CONFIG
from tests.factories import QUADRATIC_SPEC, handle_for


@pytest.fixture
def handle(storage_url):
    migrate(storage_url)
    study = optuna.create_study(study_name="searcher", storage=storage_url)
    study.set_user_attr(study_attrs.SPEC, QUADRATIC_SPEC)
    return StudyHandle(storage_url, "searcher")


def _result(epoch: int, value: float, done: bool = False) -> dict:
    return {"epoch": epoch, "val_loss": value, "train_loss": value, "lr": 0.1, "momentum": None, "last_epoch": done}


def test_states_values_and_budget(handle):
    searcher = OptunaStudySearcher(handle)
    first, second, third = (searcher.suggest(f"t{i}") for i in range(3))
    assert searcher.suggest("t3") == Searcher.FINISHED  # the budget is n_trials
    config = first[TRIAL_CONFIG]
    assert config.schedule["family"] == "constant" and config.epochs == 3 and config.number == 0
    assert config.seeds == handle.spec.trial_seeds(0) and config.metric == "val_loss"

    for epoch in range(2):
        searcher.on_trial_result("t0", _result(epoch, 1.0 - epoch / 10))
    searcher.on_trial_complete("t0", _result(2, 0.5, done=True))  # Tune gives the last result only here
    searcher.on_trial_result("t1", _result(0, 2.0))
    searcher.on_trial_complete("t1", _result(0, 2.0), error=True)
    # Diverged: its training loss is NaN though its val metric is a number (a NaN network still predicts).
    searcher.on_trial_complete("t2", {**_result(0, 2.3, done=True), "train_loss": float("nan")})

    trials = optuna.load_study(study_name="searcher", storage=handle.storage_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[0].value == 0.5
    assert "diverged" in trials[2].user_attrs["fail_reason"], trials[2].user_attrs
    assert trials[0].intermediate_values == {0: 1.0, 1: 0.9, 2: 0.5}
    assert trials[0].user_attrs["realized_lr"] == [0.1, 0.1, 0.1]
    assert trials[0].user_attrs["schedule"] == config.schedule
    assert searcher.remaining() == 0


def test_a_retried_trial_restarts_its_curve(handle):
    searcher = OptunaStudySearcher(handle)
    searcher.suggest("t0")
    for epoch, value in [(0, 3.0), (1, 2.0), (0, 2.5)]:  # the node died after epoch 1; Tune retried the trial
        searcher.on_trial_result("t0", _result(epoch, value))
    trial = optuna.load_study(study_name="searcher", storage=handle.storage_url).trials[0]
    assert [m["val_loss"] for m in epoch_log.history(trial.user_attrs)] == [2.5]


def test_stop_prunes_unfinished_trials(handle):
    searcher = OptunaStudySearcher(handle)
    searcher.suggest("t0")
    searcher.on_trial_result("t0", _result(0, 1.0))
    handle.stop_requested.set()
    assert searcher.suggest("t1") == Searcher.FINISHED
    searcher.on_trial_complete("t0", _result(0, 1.0))
    assert optuna.load_study(study_name="searcher", storage=handle.storage_url).trials[0].state.name == "PRUNED"


def test_swept_trials_do_not_count_against_the_budget(handle):
    searcher = OptunaStudySearcher(handle)
    searcher.suggest("t0")
    searcher.suggest("t1")
    # The driver died: a new one sweeps what the old one left RUNNING, and may run those trials again.
    assert sweep_stale_trials(handle.study) == 2
    fresh = OptunaStudySearcher(StudyHandle(handle.storage_url, "searcher"))
    assert fresh.remaining() == 3
    states = [t.state.name for t in optuna.load_study(study_name="searcher", storage=handle.storage_url).trials]
    assert states == ["FAIL", "FAIL"]


def test_stop_flag_in_storage_reaches_the_driver(handle):
    assert not handle.refresh_stop_flag()
    optuna.load_study(study_name="searcher", storage=handle.storage_url).set_user_attr(
        study_attrs.STOP_REQUESTED, True)
    fresh = StudyHandle(handle.storage_url, "searcher")
    assert fresh.refresh_stop_flag()


def test_the_handle_pickles_as_its_address(handle):
    import pickle

    assert handle.study is not None  # open the storage: engines and locks must not travel
    copy = pickle.loads(pickle.dumps(OptunaStudySearcher(handle)))
    assert copy._handle.storage_url == handle.storage_url and copy.remaining() == 3


def test_each_trial_carries_its_schedule_plot(handle, tmp_path):
    from optuna.artifacts import get_all_artifact_meta

    study = optuna.load_study(study_name="searcher", storage=handle.storage_url)
    study.set_user_attr(study_attrs.ARTIFACT_DIR, str(tmp_path / "artifacts"))
    searcher = OptunaStudySearcher(StudyHandle(handle.storage_url, "searcher"))
    searcher.suggest("t0")  # drawn on a background thread ...
    searcher.on_trial_complete("t0", _result(2, 0.5, done=True))  # ... and attached before the trial ends:
    searcher.close()  # the tell waits for the picture on its thread (Tune's loop does not)
    trial = optuna.load_study(study_name="searcher", storage=handle.storage_url).trials[0]
    assert trial.state.name == "COMPLETE" and searcher.remaining() == 2
    (meta,) = get_all_artifact_meta(trial, storage=handle.storage)
    assert meta.mimetype == "image/png"
    png = tmp_path / "artifacts" / meta.artifact_id
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_invalid_sample_fails_its_trial_not_the_study(storage_url):
    """eta_min <= lr is a cross-field rule the space's corners pass; samples that break it end FAIL, named."""
    migrate(storage_url)
    cosine = {"family": "cosine", "lr": {"low": 0.01, "high": 1.0, "log": True}, "eta_min": {"low": 0.0, "high": 0.1}}
    handle = handle_for(storage_url, "cosine", schedule=cosine, n_trials=12)
    searcher = OptunaStudySearcher(handle)
    started = []
    while (config := searcher.suggest(f"t{len(started)}")) != Searcher.FINISHED:
        started.append(config)
        searcher.on_trial_complete(f"t{len(started) - 1}", _result(2, 0.5, done=True))
    trials = optuna.load_study(study_name="cosine", storage=storage_url).trials
    assert len(trials) == 12  # the whole budget was used
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and len(started) == 12 - len(failed)  # with this seed some samples break the rule
    for trial in failed:
        assert trial.params["eta_min"] > trial.params["lr"]
        assert "eta_min" in trial.user_attrs["fail_reason"] and "lr" in trial.user_attrs["fail_reason"]
    assert all(c[TRIAL_CONFIG].schedule["eta_min"] <= c[TRIAL_CONFIG].schedule["lr"] for c in started)


def test_a_trials_own_error_ends_it_fail_with_the_reason(handle):
    searcher = OptunaStudySearcher(handle)
    searcher.suggest("t0")
    searcher.on_trial_result("t0", _result(0, 1.0))
    searcher.on_trial_complete("t0", {"trial_error": "RuntimeError: boom", "done": True})
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)  # its node died and Tune's retries ran out
    first, second = optuna.load_study(study_name="searcher", storage=handle.storage_url).trials
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"] == "RuntimeError: boom"
    assert first.intermediate_values == {0: 1.0}
    assert second.state.name == "FAIL" and "lost" in second.user_attrs["fail_reason"]


def test_trials_share_the_studys_seeds_unless_asked_otherwise(storage_url):
    migrate(storage_url)
    shared = OptunaStudySearcher(handle_for(storage_url, "shared", seed=7))
    configs = [shared.suggest(f"t{i}")[TRIAL_CONFIG] for i in range(3)]
    assert [c.seeds.as_attrs() for c in configs] == [{"data": 7, "init": 7, "batch_order": 7}] * 3
    per_trial = OptunaStudySearcher(handle_for(storage_url, "robust", seed=7,
                                                seed_policy={"init": "trial", "batch_order": "study"}))
    configs = [per_trial.suggest(f"t{i}")[TRIAL_CONFIG] for i in range(3)]
    assert {c.seeds.data for c in configs} == {7} and {c.seeds.batch_order for c in configs} == {7}
    assert len({c.seeds.init for c in configs}) == 3
    trials = optuna.load_study(study_name="robust", storage=storage_url).trials
    assert [t.user_attrs["seeds"] for t in trials] == [c.seeds.as_attrs() for c in configs]


def test_a_driver_whose_spec_no_longer_parses_fails_the_study_with_the_reason(storage_url, tmp_path):
    """Whatever fails in a driver, the spec itself included, the study ends failed with its error and nothing of
    it RUNNING: the failure is written without the spec."""
    from phasetune.workers.study_attrs import StudyStatus
    from phasetune.workers.tune_run import run_study

    migrate(storage_url)
    handle = handle_for(storage_url, "unparseable", epochs="many")
    stale = optuna.load_study(study_name="unparseable", storage=storage_url).ask()  # a previous driver's trial
    assert run_study(handle, str(tmp_path)) is StudyStatus.FAILED
    study = optuna.load_study(study_name="unparseable", storage=storage_url)
    assert study.user_attrs[study_attrs.STATUS] == StudyStatus.FAILED.value
    assert "epochs" in study.user_attrs[study_attrs.ERROR]
    assert study.trials[stale.number].state is optuna.trial.TrialState.FAIL
