"""A thin Ray Tune ``Searcher`` over an Optuna study in RDB storage: the database holds all searcher state.

``suggest`` asks Optuna for a trial and samples a concrete schedule from the study's space (define-by-run);
``on_trial_result`` writes the epoch's objective as an intermediate value and the realised lr/momentum as user attrs;
``on_trial_complete`` tells Optuna the outcome. Nothing is swallowed: a failed ``tell`` raises.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from ray.tune.search import Searcher

from search_spaces import sample_schedule
from search_spaces.plot import upload_schedule_png
from workers import study_attrs
from workers.handle import StudyHandle

TrialState = optuna.trial.TrialState


class OptunaStudySearcher(Searcher):
    def __init__(self, handle: StudyHandle, units: dict[str, float] | None = None) -> None:
        super().__init__(metric=handle.spec.metric, mode="max" if handle.spec.direction == "maximize" else "min")
        self._handle = handle
        self._units = units or {}
        self._trials: dict[str, optuna.Trial] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}

    @property
    def _study(self) -> optuna.Study:
        return self._handle.study

    @property
    def _storage(self) -> optuna.storages.BaseStorage:
        return self._handle.storage

    @property
    def _spec(self) -> study_attrs.StudySpec:
        return self._handle.spec

    def close_open_trials(self) -> None:
        """End the trials Tune never completed (a stop ends the experiment without completing them)."""
        state = TrialState.PRUNED if self._handle.stop_requested.is_set() else TrialState.FAIL
        for trial_id in list(self._trials):
            trial = self._trials.pop(trial_id)
            self._history.pop(trial_id, None)
            self._study.tell(trial, state=state)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds the searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see ``save``."""

    def __getstate__(self) -> dict[str, Any]:
        return {"handle": self._handle, "units": self._units}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["handle"], state["units"])  # type: ignore[misc]

    def remaining(self) -> int:
        """Trials still to run: the budget minus finished trials, except those the sweeper failed (crash victims)."""
        finished = [
            t for t in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
            if not t.user_attrs.get(study_attrs.SWEPT)
        ]
        return self._spec.n_trials - len(finished) - len(self._trials)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._handle.stop_requested.is_set() or self.remaining() <= 0:
            return Searcher.FINISHED
        trial = self._study.ask()
        schedule = sample_schedule(trial, self._spec.schedule, self._spec.epochs, self._units)
        trial.set_user_attr("schedule", schedule)
        trial.set_user_attr("ray_trial_id", trial_id)
        if self._units:  # params hold unit values, the schedule absolute LRs: keep the scale beside them
            trial.set_user_attr("lr_units", self._units)
        if self._handle.artifact_store is not None:
            # Attached while the trial runs: a finished trial's attrs cannot change.
            upload_schedule_png(trial, schedule, self._spec.epochs, self._handle.steps_per_epoch,
                                self._handle.artifact_store)
        self._trials[trial_id] = trial
        self._history[trial_id] = []
        return {
            "optuna_trial_number": trial.number,
            "schedule": schedule,
            "workload": self._spec.workload,
            "epochs": self._spec.epochs,
            "seed": self._spec.seed + trial.number,
            "cpus": self._spec.cpus,
        }

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._trials[trial_id]
        epoch = int(result["epoch"])
        # A retried trial starts again at epoch 0: its curve restarts rather than mixing two runs.
        history = self._history[trial_id][:epoch]
        history.append({k: result.get(k) for k in study_attrs.EPOCH_METRICS if k in result})
        self._history[trial_id] = history
        value = result.get(self._spec.metric)
        if value is not None and math.isfinite(value):
            self._storage.set_trial_intermediate_value(trial._trial_id, epoch, float(value))
        attrs = {
            "metrics": history,
            "realized_lr": [h["lr"] for h in history],
            "realized_momentum": [h["momentum"] for h in history],
            **json.loads(result.get("schedule_attrs") or "{}"),
        }
        if epoch == 0:  # where the trial runs changes only when Tune retries it, and a retry restarts at epoch 0
            attrs.update({key: result.get(key) for key in ("ray_node_id", "ray_node_ip", "device")})
        for key, attr in attrs.items():
            self._storage.set_trial_user_attr(trial._trial_id, key, attr)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._trials:
            return
        if result and "epoch" in result and len(self._history[trial_id]) <= int(result["epoch"]):
            self.on_trial_result(trial_id, result)  # Tune hands a trial's last result only to this method
        trial = self._trials.pop(trial_id)
        self._history.pop(trial_id, None)
        value = (result or {}).get(self._spec.metric)
        finished = bool((result or {}).get("done"))
        if error:
            self._study.tell(trial, state=TrialState.FAIL)
        elif not finished and self._handle.stop_requested.is_set():
            self._study.tell(trial, state=TrialState.PRUNED)
        elif value is None or not math.isfinite(value):
            trial.set_user_attr("fail_reason", "no finite objective value (diverged?)")
            self._study.tell(trial, state=TrialState.FAIL)
        else:
            self._study.tell(trial, float(value))
