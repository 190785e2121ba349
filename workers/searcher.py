"""A thin Ray Tune ``Searcher`` over an Optuna study in RDB storage: the database holds all searcher state.

It decides; ``trial_writes.TrialWrites`` records. ``suggest`` asks Optuna for a trial and samples a concrete
schedule from the study's space (define-by-run; on the tree's grid for a tree study, whose leaf may be stopped
before it trains); a sample that breaks a cross-field rule (``eta_min`` above the sampled ``lr``) ends that trial
FAIL with the rule's fields in its ``fail_reason``, and the search goes on. ``should_stop`` takes early stopping's
or the tree's decision after each epoch; ``on_trial_complete`` maps Tune's end of a trial to Optuna's
(``optuna_study.trial_end``). What remains of the budget is counted, not read from the storage.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import optuna
from ray.tune.search import Searcher

from phasetune.search_spaces import SpecError, build_plan, sample_schedule
from phasetune.workers import early_stopping, optuna_study, study_attrs
from phasetune.workers.checkpoints import CheckpointStore, prefix_keys
from phasetune.workers.early_stopping import Decision, EarlyStopper, TrialRecords
from phasetune.workers.handle import StudyHandle
from phasetune.workers.optuna_study import TrialEnd, TrialOutcome
from phasetune.workers.spec import TRIAL_CONFIG, Direction, StudySpec
from phasetune.workers.study_attrs import TREE_ATTR, EndedBy
from phasetune.workers.tree import GriddedTrial, Leaf, TreeDecision, TreeSearch, prefix_rungs, trunk_id
from phasetune.workers.trial_writes import TrialWrites

TrialState = optuna.trial.TrialState
logger = logging.getLogger(__name__)


class OptunaStudySearcher(Searcher):
    def __init__(self, handle: StudyHandle, units: dict[str, float] | None = None,
                 checkpoint_root: str | None = None) -> None:
        super().__init__(metric=handle.spec.objective.metric,
                         mode="max" if handle.spec.objective.direction is Direction.MAXIMIZE else "min")
        self._handle = handle
        self._units = units or {}
        self._checkpoint_root = checkpoint_root  # the study's checkpoint store (a tree study's trunks)
        self._ended = 0  # trials this searcher has told Optuna the end of
        self._stops: dict[str, Decision] = {}  # trials early stopping has stopped, until they end
        self._leaves: dict[str, Leaf] = {}  # a tree study's running leaves
        self._tree_stops: dict[str, TreeDecision] = {}  # leaves the tree has stopped, until they end

    @cached_property
    def _writes(self) -> TrialWrites:
        return TrialWrites(self._handle, self._store)

    @property
    def _study(self) -> optuna.Study:
        return self._handle.study

    @property
    def _spec(self) -> StudySpec:
        return self._handle.spec

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
        return self._spec.n_trials - self._finished_at_start - self._ended - len(self._writes)

    @cached_property
    def _store(self) -> CheckpointStore | None:
        """A tree study's checkpoint store (its trunks' checkpoints), to report what it holds."""
        tree = self._spec.strategy.tree
        if tree is not None and self._checkpoint_root is not None:
            return CheckpointStore(self._checkpoint_root, tree.max_bytes)
        return None

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
                self._writes.never_started(trial, TrialEnd(TrialOutcome.FAIL, reason=f"invalid sample: {err}"), {})
                self._ended += 1
                continue
            leaf = None
            if self._tree is not None:
                leaf = self._leaf(trial, schedule, plan)
                self._tree.start(leaf)
                stopped = self._tree.admit(leaf)
                self._save_tree()
                if stopped is not None:  # its prefix is already known to be below its peers: not trained at all
                    self._writes.never_started(trial, TrialEnd(TrialOutcome.PRUNED, reason=stopped.reason),
                                               {study_attrs.SCHEDULE: schedule, TREE_ATTR: leaf.attrs()})
                    self._ended += 1
                    continue
            return self._start(trial_id, trial, schedule, leaf)
        return Searcher.FINISHED

    def _start(self, trial_id: str, trial: optuna.Trial, schedule: dict[str, Any],
               leaf: Leaf | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self._units:  # params hold unit values, the schedule absolute LRs: keep the scale beside them
            attrs[study_attrs.LR_UNITS] = self._units
        if leaf is not None:
            attrs[TREE_ATTR] = leaf.attrs()
        self._writes.start(trial_id, trial, schedule, attrs)
        if leaf is not None and self._tree is not None:  # the tree: its prefix from the store, probed where new
            self._leaves[trial_id] = leaf
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
        trial = self._writes.trial(trial_id)
        if trial is None or study_attrs.TRIAL_ERROR in result:
            return False
        if trial_id in self._leaves:
            return self._tree_should_stop(trial_id, result)
        if not self._early.active:
            return False
        decision, attrs = self._early.decide(trial.number, result)
        self._writes.set(trial_id, attrs)
        if decision is None or not decision.stop:
            return False
        self._stops[trial_id] = decision
        return True

    def _tree_should_stop(self, trial_id: str, result: dict[str, Any]) -> bool:
        """The tree's decision after a leaf's epoch; its attrs (decisions, probe cost) when something was decided."""
        assert self._tree is not None
        leaf = self._leaves[trial_id]
        before = len(leaf.decisions)
        decision = self._tree.on_result(leaf, result, reused=bool(result.get(study_attrs.REUSED)))
        self._save_tree()
        attrs = self._writes.probe_cost(trial_id, result)
        if len(leaf.decisions) > before:
            attrs[TREE_ATTR] = leaf.attrs()
        self._writes.set(trial_id, attrs)
        if decision is None or not decision.stop:
            return False
        self._tree_stops[trial_id] = decision
        return True

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._writes.result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._writes:
            return
        if result and "epoch" in result and self._writes.epochs(trial_id) <= int(result["epoch"]):
            self._writes.result(trial_id, result)  # Tune hands a trial's last result only to this method
        decision = self._stops.get(trial_id)
        tree_stop = self._tree_stops.get(trial_id)
        stopped_by = decision.reason if decision is not None else tree_stop.reason if tree_stop is not None else None
        end = optuna_study.trial_end(result, lost=error, stop_requested=self._handle.ending,
                                     metric=self._spec.objective.metric, time_limit_s=self._spec.trial_time_limit_s,
                                     stopped_by=stopped_by)
        if decision is not None and end.outcome is TrialOutcome.PRUNED:
            self._writes.set(trial_id, decision.attrs(self._spec.early_stopping.policy))
        self._finish(trial_id, end)

    def close_open_trials(self) -> None:
        """End the trials Tune never completed (a stop ends the experiment without completing them): one whose
        last epoch was already reported is COMPLETE, the others PRUNED (stopped) or FAIL (the run just ended)."""
        for trial_id in self._writes.ids():
            last = self._writes.last(trial_id)
            if self._handle.ending:
                end = optuna_study.trial_end(last, lost=False, stop_requested=True, metric=self._spec.objective.metric)
                if end.outcome is TrialOutcome.PRUNED and self._handle.time_is_up.is_set():
                    end = TrialEnd(TrialOutcome.PRUNED, reason=f"{EndedBy.STUDY_TIME_LIMIT.value}: the study's time "
                                                               f"was up")
            else:
                end = TrialEnd(TrialOutcome.FAIL, reason="the Tune run ended without completing it")
            self._finish(trial_id, end)

    def _finish(self, trial_id: str, end: TrialEnd) -> None:
        """The trial's end: its decisions' bookkeeping, then what is left of it written and told (``TrialWrites``)."""
        self._ended += 1
        self._stops.pop(trial_id, None)
        self._tree_stops.pop(trial_id, None)
        attrs: dict[str, Any] = {}
        leaf = self._leaves.pop(trial_id, None)
        if leaf is not None and self._tree is not None:
            if end.outcome is TrialOutcome.COMPLETE and end.value is not None:
                self._tree.complete(leaf, end.value)
            attrs[TREE_ATTR] = leaf.attrs()
            self._save_tree()
        trial = self._writes.end(trial_id, end, attrs)
        if self._early.active:
            self._early.finish(trial.number, completed=end.outcome is TrialOutcome.COMPLETE)

    def close(self) -> None:
        """Wait for the tells that follow a picture; the first that failed raises (nothing is swallowed)."""
        if "_writes" in self.__dict__:
            self._writes.close()

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna storage holds the searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see ``save``."""

    def __getstate__(self) -> dict[str, Any]:
        return {"handle": self._handle, "units": self._units, "checkpoint_root": self._checkpoint_root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["handle"], state["units"], state.get("checkpoint_root"))  # type: ignore[misc]
