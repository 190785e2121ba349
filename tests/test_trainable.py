"""The trainable under real Ray Tune: a deterministic error is not retried, it ends the trial with its reason."""

from __future__ import annotations

import pytest
from ray import tune

from phasetune.workers.optuna_study import trial_end
from phasetune.workers.seeding import Seeds
from phasetune.workers.spec import TRIAL_CONFIG, TrialConfig, WorkloadRef
from phasetune.workers.study_attrs import TRIAL_ERROR
from phasetune.workers.trainable import run_trial

pytestmark = pytest.mark.slow


def test_a_deterministic_error_is_reported_not_retried(ray_client, tmp_path):
    # Valid at submission for no workload: the warmup is longer than the run, so building the plan raises.
    config = TrialConfig(number=0, schedule={"family": "cosine", "lr": 0.1, "warmup": {"epochs": 5}},
                         workload=WorkloadRef("quadratic", {}), epochs=2, seeds=Seeds(0, 0, 0), metric="val_loss",
                         data_root=None, cpus=1)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": 1}),
        param_space={TRIAL_CONFIG: config},
        # The metric the study's searcher names: Tune refuses a result without it (strict metric checking).
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    (result,) = tuner.fit()
    assert result.error is None  # Tune saw no error, so it retried nothing
    assert "warmup" in result.metrics[TRIAL_ERROR] and result.metrics["done"]
    end = trial_end(result.metrics, lost=False, stop_requested=False, metric="val_loss")
    assert end.outcome.name == "FAIL" and end.reason == result.metrics[TRIAL_ERROR]
    assert len(result.metrics_dataframe) == 1  # one attempt, one result
