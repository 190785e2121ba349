"""A thin Ray Tune ``Searcher`` over an Optuna study in RDB storage: the database holds all searcher state.

``suggest`` asks Optuna for a trial and samples a concrete schedule from the study's space (define-by-run); a
sample that breaks a cross-field rule (``eta_min`` above the sampled ``lr``) ends that trial FAIL with the rule's
fields in its ``fail_reason``, and the search goes on. ``on_trial_result`` writes the epoch's objective as an
intermediate value and its record into the trial's history (``epoch_log``: constant work per epoch);
``on_trial_complete`` tells Optuna the outcome (``optuna_study.trial_end``). Each trial's schedule plot is drawn and
attached on a background thread; a trial whose picture is not ready when it ends is told after it, on a thread of
its own, so that neither starting nor ending a trial waits for a picture. Nothing is swallowed: a failed ``tell`` raises
(from ``close`` if it was queued). What remains of the budget is counted, not read from the storage.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any

import optuna
from ray.tune.search import Searcher

from phasetune.search_spaces import SpecError, build_plan, sample_schedule
from phasetune.search_spaces.plot import upload_schedule_png
from phasetune.workers import early_stopping, optuna_study, study_attrs
from phasetune.workers.checkpoints import CheckpointStore, prefix_keys
from phasetune.workers.early_stopping import Decision, EarlyStopper, TrialRecords
from phasetune.workers.epoch_log import EpochLog
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import TrialEnd, TrialOutcome
from phasetune.workers.spec import TRIAL_CONFIG, Direction, StudySpec
from phasetune.workers.study_attrs import TREE_ATTR, EndedBy
from phasetune.workers.tree import GriddedTrial, Leaf, TreeDecision, TreeSearch, prefix_rungs, trunk_id
from phasetune.workers.workloads import workloads

TrialState = optuna.trial.TrialState
logger = logging.getLogger(__name__)


class OptunaStudySearcher(Searcher):
    def __init__(self, handle: StudyHandle, units: dict[str, float] | None = None,
                 checkpoint_root: str | None = None) -> None:
        super().__init__(metric=handle.spec.objective.metric,
                         mode="max" if handle.spec.objective.direction is Direction.MAXIMIZE else "min")
        self._handle = handle
        self._units = units or {}
        self._trials: dict[str, optuna.Trial] = {}
        self._logs: dict[str, EpochLog] = {}
        self._ended = 0  # trials this searcher has told Optuna the end of
        self._plots: dict[str, Future[Any]] = {}
        self._pending: list[Future[None]] = []  # tells queued behind their trial's picture
        self._last: dict[str, dict[str, Any]] = {}  # each running trial's last epoch result
        self._stops: dict[str, Decision] = {}  # trials early stopping has stopped, until they end
        self._cooldown: dict[str, dict[str, float]] = {}  # each running trial's cooldown-probe cost so far
        self._checkpoint_root = checkpoint_root  # the study's checkpoint store (a tree study's trunks)
        self._leaves: dict[str, Leaf] = {}  # a tree study's running leaves
        self._tree_stops: dict[str, TreeDecision] = {}  # leaves the tree has stopped, until they end

    @property
    def _study(self) -> optuna.Study:
        return self._handle.study

    @property
    def _spec(self) -> StudySpec:
        return self._handle.spec

    @cached_property
    def _epoch_keys(self) -> tuple[str, ...]:
        """What each epoch's record in the ``metrics`` attr holds: the loop's own keys and the workload's metrics."""
        workload = workloads()[self._spec.workload.name]
        return (*study_attrs.EPOCH_KEYS, *workload.epoch_metrics())

    @cached_property
    def _final_keys(self) -> frozenset[str]:
        return frozenset(workloads()[self._spec.workload.name].final_metrics())

    @cached_property
    def _plotter(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="schedule-plot")

    @cached_property
    def _teller(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tell-after-plot")

    @cached_property
    def _early(self) -> EarlyStopper:
        """The study's early stopping, its rungs rebuilt from the scores earlier drivers recorded."""
        spec = self._spec
        stopper = EarlyStopper(spec.early_stopping, spec.epochs, spec.objective.metric,
                               maximize=spec.objective.direction is Direction.MAXIMIZE)
        if stopper.active:
            stopper.load(self._recorded_scores())
        return stopper

    def _recorded_scores(self) -> list[TrialRecords]:
        scores: dict[int, dict[str, Any]] = {}
        states: dict[int, TrialState] = {}
        for number, state, key, value in optuna_study.user_attrs_with_prefix(
                self._handle.storage, self._handle.study_id, study_attrs.RUNG_ATTR):
            if state.is_finished():  # a running trial's are the sweeper's: it is failed and rerun
                scores.setdefault(number, {})[key] = value
                states[number] = state
        return [TrialRecords(number, states[number] is TrialState.COMPLETE, early_stopping.scores_in(attrs))
                for number, attrs in scores.items()]

    @cached_property
    def _finished_at_start(self) -> int:
        """Finished trials that use up the budget when this driver began, except those the sweeper failed (crash
        victims): counted once, in the storage; from then on this driver's own ends are counted as they happen."""
        storage, study_id = self._handle.storage, self._handle.study_id
        counts = optuna_study.count_trials(storage, study_id)
        swept = optuna_study.count_trials_with_attr(storage, study_id, study_attrs.SWEPT)
        return sum(counts.get(state, 0) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)) - swept

    def remaining(self) -> int:
        """Trials still to start: the budget minus finished and running ones (constant work: no trial is read)."""
        return self._spec.n_trials - self._finished_at_start - self._ended - len(self._trials)

    @cached_property
    def _store(self) -> CheckpointStore | None:
        """A tree study's checkpoint store (its trunks' checkpoints), to report what it holds."""
        tree = self._spec.strategy.tree
        if tree is not None and self._checkpoint_root is not None:
            return CheckpointStore(self._checkpoint_root, tree.max_bytes)
        return None

    @cached_property
    def _store_use(self) -> dict[str, int]:
        """The study's reuses so far, counted on from what earlier drivers recorded."""
        recorded = self._study.user_attrs.get(study_attrs.CHECKPOINTS) or {}
        return {"reuses": int(recorded.get("reuses", 0)), "reused_epochs": int(recorded.get("reused_epochs", 0))}

    @cached_property
    def _tree(self) -> TreeSearch | None:
        """A tree study's decisions, over the state earlier drivers left in the study's attrs."""
        options = self._spec.strategy.tree
        if options is None:
            return None
        return TreeSearch(options, self._spec.epochs, self._spec.objective.metric,
                          maximize=self._spec.objective.direction is Direction.MAXIMIZE,
                          state=self._study.user_attrs.get(study_attrs.TREE_STATE))

    def _save_tree(self) -> None:
        tree = self._tree
        if tree is not None and tree.changed:
            self._handle.set_attr(study_attrs.TREE_STATE, tree.state())
            self._handle.set_attr(study_attrs.TREE, tree.summary())
            tree.changed = False

    def _leaf(self, trial: optuna.Trial, schedule: dict[str, Any], plan: Any) -> Leaf:
        """Trial ``trial`` as a leaf: its trunk, the epoch its last phase begins, its prefix at each candidate."""
        transition = int(schedule["transition_epochs"][-1])
        rungs = prefix_rungs(self._spec.schedule, self._spec.epochs, transition)
        keys = prefix_keys(self._spec.workload.name, self._spec.workload.params, self._spec.trial_seeds(trial.number),
                           plan, [r - 1 for r in rungs])
        return Leaf(trial.number, trunk_id(trial.params), transition,
                    {r: key[:12] for r in rungs if (key := keys[r - 1]) is not None})

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while not self._handle.ending and self.remaining() > 0:
            trial = self._study.ask()
            tree = self._spec.strategy.tree
            sampled = trial if tree is None else GriddedTrial(trial, len(self._spec.schedule["phases"]), tree.grid)
            try:
                schedule = sample_schedule(sampled, self._spec.schedule, self._spec.epochs, self._units)
                plan = build_plan(schedule, self._spec.epochs, self._spec.steps_per_epoch)  # as the trial will
            except SpecError as err:  # this sample breaks a rule of its family: this trial fails, the study not
                optuna_study.tell(self._study, trial, TrialEnd(TrialOutcome.FAIL, reason=f"invalid sample: {err}"))
                self._ended += 1
                continue
            leaf = None
            if self._tree is not None:
                leaf = self._leaf(trial, schedule, plan)
                self._tree.start(leaf)
                stopped = self._tree.admit(leaf)
                self._save_tree()
                if stopped is not None:  # its prefix is already known to be below its peers: not trained at all
                    trial.set_user_attr(study_attrs.SCHEDULE, schedule)
                    trial.set_user_attr(TREE_ATTR, leaf.attrs())
                    optuna_study.tell(self._study, trial, TrialEnd(TrialOutcome.PRUNED, reason=stopped.reason))
                    self._ended += 1
                    continue
            return self._start(trial_id, trial, schedule, leaf)
        return Searcher.FINISHED

    def _start(self, trial_id: str, trial: optuna.Trial, schedule: dict[str, Any],
               leaf: Leaf | None = None) -> dict[str, Any]:
        seeds = self._spec.trial_seeds(trial.number)
        trial.set_user_attr(study_attrs.SCHEDULE, schedule)
        trial.set_user_attr(study_attrs.SEEDS, seeds.as_attrs())
        trial.set_user_attr(study_attrs.RAY_TRIAL_ID, trial_id)
        if self._units:  # params hold unit values, the schedule absolute LRs: keep the scale beside them
            trial.set_user_attr(study_attrs.LR_UNITS, self._units)
        if self._handle.artifact_store is not None:
            # Drawn off this thread; attached while the trial runs (a finished trial's attrs cannot change).
            self._plots[trial_id] = self._plotter.submit(
                upload_schedule_png, trial, schedule, self._spec.epochs, self._spec.steps_per_epoch,
                self._handle.artifact_store)
        self._trials[trial_id] = trial
        self._logs[trial_id] = EpochLog()
        if leaf is not None and self._tree is not None:  # the tree: its prefix from the store, probed where new
            self._leaves[trial_id] = leaf
            trial.set_user_attr(TREE_ATTR, leaf.attrs())
            branch = None if self._checkpoint_root is None else {
                "root": self._checkpoint_root, "max_bytes": self._tree.policy.options.max_bytes,
                "epochs": [r - 1 for r in sorted(leaf.prefixes)], "parent": None}
            probe_at = leaf.probe_at(self._tree.policy)
            return {TRIAL_CONFIG: self._spec.trial_config(trial.number, schedule, branch, probe_at)}
        return {TRIAL_CONFIG: self._spec.trial_config(trial.number, schedule)}

    def should_stop(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Early stopping's decision on the trial's epoch ``result`` (Tune's stopper asks, before
        ``on_trial_result``); the score it read is recorded in the trial's attrs first, and so is what the trial's
        cooldown probes have cost so far."""
        trial = self._trials.get(trial_id)
        if trial is None or study_attrs.TRIAL_ERROR in result:
            return False
        if trial_id in self._leaves:
            return self._tree_should_stop(trial_id, trial, result)
        if not self._early.active:
            return False
        decision, attrs = self._early.decide(trial.number, result)
        attrs.update(self._probe_cost(trial_id, result))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if decision is None or not decision.stop:
            return False
        self._stops[trial_id] = decision
        return True

    def _tree_should_stop(self, trial_id: str, trial: optuna.Trial, result: dict[str, Any]) -> bool:
        """The tree's decision after a leaf's epoch; its attrs (decisions, probe cost) when something was decided."""
        assert self._tree is not None
        leaf = self._leaves[trial_id]
        before = len(leaf.decisions)
        decision = self._tree.on_result(leaf, result, reused=bool(result.get(study_attrs.REUSED)))
        self._save_tree()
        attrs = self._probe_cost(trial_id, result)
        if len(leaf.decisions) > before:
            attrs[TREE_ATTR] = leaf.attrs()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if decision is None or not decision.stop:
            return False
        self._tree_stops[trial_id] = decision
        return True

    def _probe_cost(self, trial_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """What the trial's cooldown probes have cost so far, as an attr, when this result carries one."""
        attrs: dict[str, Any] = {}
        if study_attrs.COOLDOWN_STEPS in result and not result.get(study_attrs.REUSED):  # (its parent paid that)
            cost = self._cooldown.setdefault(trial_id, {"probes": 0, "steps": 0, "seconds": 0.0})
            cost["probes"] += 1
            cost["steps"] += int(result[study_attrs.COOLDOWN_STEPS])
            cost["seconds"] += float(result.get(study_attrs.COOLDOWN_SECONDS, 0.0))
            attrs[study_attrs.COOLDOWN_ATTR] = dict(cost)
        return attrs

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Constant work per epoch: the objective as the epoch's intermediate value, the epoch's record into its
        chunk of the history (``epoch_log``); what is written once goes at the trial's first or last epoch."""
        trial = self._trials[trial_id]
        if study_attrs.TRIAL_ERROR in result:
            return  # not an epoch: the trial's error, which on_trial_complete records
        epoch, done = int(result["epoch"]), bool(result.get(study_attrs.LAST_EPOCH))
        log = self._logs[trial_id]
        log.add({k: v for k, v in result.items()
                 if k in self._epoch_keys or k.startswith(study_attrs.COOLDOWN_PREFIX)})
        self._last[trial_id] = result
        value = result.get(self._spec.objective.metric)
        if value is not None and math.isfinite(value):
            optuna_study.set_intermediate_value(self._study, trial, epoch, float(value))
        attrs: dict[str, Any] = log.due(final=done or epoch == 0)
        if epoch == 0:  # where the trial runs changes only when Tune retries it, and a retry restarts at epoch 0
            attrs.update({key: result.get(key) for key in study_attrs.PLACEMENT_KEYS})
            if result.get(study_attrs.WORKER):
                attrs[study_attrs.WORKER] = json.loads(result[study_attrs.WORKER])
        if done:
            attrs.update({**log.realised(), **json.loads(result.get(study_attrs.SCHEDULE_ATTRS) or "{}")})
            final = {k: v for k, v in result.items() if k in self._final_keys}
            if final:  # the test split's metrics, reported once with the last epoch
                attrs[study_attrs.TEST_METRICS] = final
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._trials:
            return
        if result and "epoch" in result and self._logs[trial_id].epochs <= int(result["epoch"]):
            self.on_trial_result(trial_id, result)  # Tune hands a trial's last result only to this method
        decision = self._stops.get(trial_id)
        tree_stop = self._tree_stops.get(trial_id)
        stopped_by = decision.reason if decision is not None else tree_stop.reason if tree_stop is not None else None
        end = optuna_study.trial_end(result, lost=error, stop_requested=self._handle.ending,
                                     metric=self._spec.objective.metric, time_limit_s=self._spec.trial_time_limit_s,
                                     stopped_by=stopped_by)
        if decision is not None and end.outcome is TrialOutcome.PRUNED:
            for key, value in decision.attrs(self._spec.early_stopping.policy).items():
                self._trials[trial_id].set_user_attr(key, value)
        self._finish(trial_id, end)

    def close_open_trials(self) -> None:
        """End the trials Tune never completed (a stop ends the experiment without completing them): one whose
        last epoch was already reported is COMPLETE, the others PRUNED (stopped) or FAIL (the run just ended)."""
        for trial_id in list(self._trials):
            last = self._last.get(trial_id)
            if self._handle.ending:
                end = optuna_study.trial_end(last, lost=False, stop_requested=True, metric=self._spec.objective.metric)
                if end.outcome is TrialOutcome.PRUNED and self._handle.time_is_up.is_set():
                    end = TrialEnd(TrialOutcome.PRUNED, reason=f"{EndedBy.STUDY_TIME_LIMIT.value}: the study's time "
                                                               f"was up")
            else:
                end = TrialEnd(TrialOutcome.FAIL, reason="the Tune run ended without completing it")
            self._finish(trial_id, end)

    def _finish(self, trial_id: str, end: TrialEnd) -> None:
        """Write what is left of the trial and tell Optuna its end; if its picture is still being drawn, the tell
        follows the picture on the teller thread, so that Tune's loop (which calls this) never waits for it."""
        trial = self._trials.pop(trial_id)
        self._ended += 1
        last = self._last.pop(trial_id, None)
        if last is not None and last.get(study_attrs.BRANCH):
            self._record_branch(trial, json.loads(last[study_attrs.BRANCH]))
        self._stops.pop(trial_id, None)
        self._tree_stops.pop(trial_id, None)
        self._cooldown.pop(trial_id, None)
        leaf = self._leaves.pop(trial_id, None)
        if leaf is not None and self._tree is not None:
            if end.outcome is TrialOutcome.COMPLETE and end.value is not None:
                self._tree.complete(leaf, end.value)
            trial.set_user_attr(TREE_ATTR, leaf.attrs())
            self._save_tree()
        if self._early.active:
            self._early.finish(trial.number, completed=end.outcome is TrialOutcome.COMPLETE)
        log = self._logs.pop(trial_id, None)
        if log is not None:  # what the throttle held back, and (for a trial cut short) its realised lr and momentum
            attrs = {**log.due(final=True), **({} if log.realised_written else log.realised())}
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        plot = self._plots.pop(trial_id, None)
        if plot is None or plot.done():
            self._tell_after(plot, trial, end)
        else:  # on a thread of its own, which waits for this trial's picture only
            self._pending.append(self._teller.submit(self._tell_after, plot, trial, end))

    def _record_branch(self, trial: optuna.Trial, branch: dict[str, Any]) -> None:
        """The trial's use of the store in its attrs; the study's (what the store holds, reuses) in the study's."""
        trial.set_user_attr(study_attrs.BRANCH, branch)
        if branch.get("parent") is not None:
            self._store_use["reuses"] += 1
            self._store_use["reused_epochs"] += int(branch.get("reused_epochs") or 0)
        if self._store is not None:
            self._handle.set_attr(study_attrs.CHECKPOINTS, {**self._store.stats(), **self._store_use})

    def _tell_after(self, plot: Future[Any] | None, trial: optuna.Trial, end: TrialEnd) -> None:
        if plot is not None and plot.exception() is not None:  # waits for it; a missing one loses no result
            err = plot.exception()
            logger.warning("schedule plot of trial %d failed: %s", trial.number, err)
            trial.set_user_attr(study_attrs.SCHEDULE_PLOT_ERROR, f"{type(err).__name__}: {err}")
        optuna_study.tell(self._study, trial, end)

    def close(self) -> None:
        """Wait for the tells that follow a picture; the first that failed raises (nothing is swallowed)."""
        pending, self._pending = self._pending, []
        try:
            wait(pending)
        finally:
            for name in ("_teller", "_plotter"):
                if name in self.__dict__:
                    self.__dict__.pop(name).shutdown(wait=True)
        for future in pending:
            future.result()

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds the searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see ``save``."""

    def __getstate__(self) -> dict[str, Any]:
        return {"handle": self._handle, "units": self._units, "checkpoint_root": self._checkpoint_root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["handle"], state["units"], state.get("checkpoint_root"))  # type: ignore[misc]
