"""Early stopping: the one owner of the decision to stop a trial before its last epoch (the study's stop and time
limits aside).

Three policies besides ``none`` (the default):

- ``median``: Optuna's ``MedianPruner`` rule on raw epoch values. From epoch ``grace_period`` on, a trial whose best
  value so far is worse than the median of the completed trials' values at the same epoch stops, once
  ``min_peers`` completed trials have one.
- ``asha``: asynchronous successive halving on raw epoch values (Ray Tune's ``AsyncHyperBandScheduler`` rule). At
  the rungs ``grace_period * reduction_factor**k`` epochs, a trial below the ``1 - 1/reduction_factor`` quantile of
  the values recorded at that rung stops, once ``min_peers`` trials have one.
- ``schedule_aware``: the same asynchronous rungs, but trials are ranked by a **cooldown probe** (``cooldown.py``:
  the trial's weights and optimizer forked, the LR annealed to zero over ``cooldown_fraction`` of the steps done,
  evaluated, discarded): how good the trial would be if it decayed now. Only where a stop could save more epochs
  than the probe costs (``worth_probing``): no probe at a rung near the end. A trial inside its large-step phase
  (``Plan.in_large_step_phase``) is probed and recorded there, never judged; it is judged at the first epoch after
  that phase (a catch-up probe, against the peers of the last rung it passed). A diverged trial (non-finite loss,
  or from the second epoch on a training loss ``divergence_factor`` times its first step's: the first epoch may
  hold a catapult) stops at once, wherever it is; it ends FAIL, not PRUNED, when its loss is non-finite.

Every score a decision reads is written to the trial's user attrs (``early_stopping:<epoch>``) as it is taken, so a
restarted driver rebuilds the rungs from the storage (``EarlyStopper.load``) and keeps every decision. The trainable
side (which epochs to probe) is ``ProbeSchedule``; the driver side (stop or not) is ``EarlyStopper``. Both are pure
Python: the service's searcher and ``bench/search_efficiency.py`` run the same code.
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from phasetune.search_spaces import SpecError
from phasetune.search_spaces.checks import Interval, Options
from phasetune.search_spaces.errors import RuleError
from phasetune.workers.results import LARGE_STEP  # an epoch's result key (owned with the others)

RUNG_ATTR = "early_stopping:"  # + the epochs completed: the score recorded there (a trial user attr)
DECISION_ATTR = "early_stopping"  # why a trial stopped: {policy, pruned_at_epoch, score, reason, ...}
PRUNED_AT_EPOCH = "pruned_at_epoch"  # the 0-based index of a stopped trial's last trained epoch
COOLDOWN_ATTR = "cooldown"  # what a trial's cooldown probes cost: {probes, steps, seconds}
COOLDOWN_PREFIX = "cooldown_"  # the probe's metrics in an epoch's result: cooldown_val_loss, cooldown_steps, ...
COOLDOWN_STEPS = COOLDOWN_PREFIX + "steps"  # an epoch's result: the optimizer steps its probe took
COOLDOWN_SECONDS = COOLDOWN_PREFIX + "seconds"
INITIAL_LOSS = "initial_loss"  # epoch 0's result: the loss of the first batch before any step


class Policy(str, enum.Enum):
    NONE = "none"
    MEDIAN = "median"
    ASHA = "asha"
    SCHEDULE_AWARE = "schedule_aware"


@dataclass(frozen=True)
class EarlyStopping:
    """The spec's ``early_stopping``. Each policy takes only its own options (``OPTIONS``)."""

    policy: Policy = Policy.NONE
    grace_period: int = 1  # epochs every trial trains before the first decision
    reduction_factor: float = 3.0  # rungs at grace * rf**k epochs; a trial needs the top 1/rf at one to go on
    min_peers: int = 4  # trials with a value at a point before any is stopped there (Optuna's n_min_trials)
    cooldown_fraction: float = 0.15  # the probe's span, as a share of the steps done so far
    divergence_factor: float = 10.0  # a training loss this many times the first step's is divergence

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> EarlyStopping:
        """From the spec's JSON; SpecError naming ``early_stopping.<field>``."""
        raw = {key: value for key, value in (raw or {}).items() if value is not None}  # None: the default
        try:
            policy = Policy(raw.pop("policy", Policy.NONE.value))
        except ValueError:
            raise SpecError(("early_stopping", "policy"), f"unknown policy; expected one of "
                                                          f"{[p.value for p in Policy]}") from None
        allowed = OPTIONS[policy]
        for key in raw:
            if key not in allowed:
                raise RuleError(("early_stopping", key), f"not an option of policy {policy.value!r}; its options: "
                                                         f"{sorted(allowed) or 'none'}")
        return cls(policy=policy, **_PARSER.parse(raw))

    def to_dict(self) -> dict[str, Any]:
        """The policy and its own options (what ``parse`` takes back)."""
        own = OPTIONS[self.policy]
        return {"policy": self.policy.value, **{k: v for k, v in asdict(self).items() if k in own}}

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """The epoch counts (epochs completed) at which trials are judged, all before the last epoch."""
        if self.policy is Policy.NONE:
            return ()
        if self.policy is Policy.MEDIAN:
            return tuple(range(self.grace_period, epochs))
        out: list[int] = []
        k = 0
        while (rung := round(self.grace_period * self.reduction_factor**k)) < epochs:
            if (not out or rung > out[-1]) and self.worth_probing(rung, epochs):
                out.append(rung)
            k += 1
        return tuple(out)

    def worth_probing(self, completed: int, epochs: int) -> bool:
        """Whether a decision after ``completed`` epochs can save more than it costs: a cooldown probe there
        costs ``cooldown_fraction * completed`` epochs, a stop saves ``epochs - completed`` at most. (Only
        schedule_aware probes; the other policies' decisions cost nothing.)"""
        if self.policy is not Policy.SCHEDULE_AWARE:
            return True
        return epochs - completed > self.cooldown_fraction * completed


_SHARED = {"grace_period", "min_peers"}
OPTIONS: dict[Policy, frozenset[str]] = {
    Policy.NONE: frozenset(),
    Policy.MEDIAN: frozenset(_SHARED),
    Policy.ASHA: frozenset({*_SHARED, "reduction_factor"}),
    Policy.SCHEDULE_AWARE: frozenset({*_SHARED, "reduction_factor", "cooldown_fraction", "divergence_factor"}),
}
BOUNDS: dict[str, Interval] = {  # the API's schema states the same (service.schemas)
    "grace_period": Interval(1, 100_000, note="epochs"),
    "min_peers": Interval(1, 100_000),
    "reduction_factor": Interval(1, 1e3, open_low=True),
    "cooldown_fraction": Interval(0, 1, open_low=True, note="a share of the steps done"),
    "divergence_factor": Interval(1, 1e12, open_low=True),
}
_PARSER = Options("early_stopping", BOUNDS, integers=frozenset({"grace_period", "min_peers"}))


class ProbeSchedule:
    """The trainable's side of ``schedule_aware``: after which epochs to run the cooldown probe. At every rung,
    and once at the first epoch after a large-step phase in which a rung fell (the trial's deferred judgement)."""

    def __init__(self, config: EarlyStopping, epochs: int) -> None:
        self._rungs = frozenset(config.rungs(epochs)) if config.policy is Policy.SCHEDULE_AWARE else frozenset()
        self._config = config
        self._epochs = epochs
        self._deferred = False
        self.fraction = config.cooldown_fraction

    def due(self, completed: int, large_step: bool) -> bool:
        """Probe after ``completed`` epochs, the last of which ended inside a large-step phase or not."""
        if not self._rungs or completed >= self._epochs:
            return False
        if completed in self._rungs:
            self._deferred = large_step  # judged here unless inside a large-step phase: then after it
            return True
        if self._deferred and not large_step:
            self._deferred = False
            return self._config.worth_probing(completed, self._epochs)  # too late to save more than it costs
        return False


@dataclass(frozen=True)
class Decision:
    stop: bool
    epoch: int  # 0-based index of the epoch it was taken after
    score: float | None  # the value it ranked the trial by
    reason: str
    rung: int | None = None  # the epochs-completed point whose peers it was compared with
    peers: int = 0  # how many scores it was ranked among (itself included)

    def attrs(self, policy: Policy) -> dict[str, Any]:
        """A stopped trial's user attrs: why it stopped (the dashboard shows them)."""
        record = {"policy": policy.value, PRUNED_AT_EPOCH: self.epoch, "score": self.score, "rung": self.rung,
                  "peers": self.peers, "reason": self.reason}
        return {PRUNED_AT_EPOCH: self.epoch, DECISION_ATTR: record}


@dataclass(frozen=True)
class TrialRecords:
    """One trial's recorded scores, as the storage holds them (``EarlyStopper.load``)."""

    number: int
    completed: bool  # it ran to its last epoch (COMPLETE)
    scores: Mapping[int, float]  # epochs completed -> score


class EarlyStopper:
    """The driver's side: decides, per epoch result, whether a trial stops. One per study (per driver)."""

    def __init__(self, config: EarlyStopping, epochs: int, metric: str, maximize: bool) -> None:
        self.config = config
        self.metric = metric
        self._sign = 1.0 if maximize else -1.0  # scores are compared as sign * value: higher is better
        self._rungs = config.rungs(epochs)
        self._rung_set = frozenset(self._rungs)
        self._at: dict[int, dict[int, float]] = defaultdict(dict)  # rung -> trial -> score (every trial: asha)
        self._completed_at: dict[int, list[float]] = defaultdict(list)  # epoch -> completed trials' values
        self._open: dict[int, dict[int, float]] = defaultdict(dict)  # running trial -> its recorded scores
        self._best: dict[int, float] = {}  # running trial -> its best signed value so far (median)
        self._initial: dict[int, float] = {}  # running trial -> its first step's loss

    @property
    def active(self) -> bool:
        return self.config.policy is not Policy.NONE

    def load(self, records: Iterable[TrialRecords]) -> None:
        """The scores a previous driver recorded (finished trials only: a running one is swept and rerun)."""
        for trial in records:
            signed = {epochs: self._sign * value for epochs, value in trial.scores.items()}
            for epochs, signal in signed.items():
                if epochs in self._rung_set:
                    self._at[epochs][trial.number] = signal
            if trial.completed:
                self._complete(signed)

    def decide(self, number: int, result: Mapping[str, Any]) -> tuple[Decision | None, dict[str, Any]]:
        """The decision after trial ``number``'s epoch ``result`` (None: not a decision point), and the user attrs
        to record with it (the score, before the decision is acted on)."""
        if not self.active or "epoch" not in result:
            return None, {}
        epoch = int(result["epoch"])
        completed = epoch + 1
        if INITIAL_LOSS in result:
            self._initial[number] = float(result[INITIAL_LOSS])
        diverged = self._diverged(number, result)
        if self.config.policy is Policy.SCHEDULE_AWARE:
            return self._schedule_aware(number, epoch, completed, result, diverged)
        value = result.get(self.metric)
        signal = None if value is None or not math.isfinite(value) else self._sign * float(value)
        if signal is not None:
            self._best[number] = max(signal, self._best.get(number, -math.inf))
        if completed not in self._rung_set:
            return None, {}
        if signal is None:  # as Optuna's pruners do: a NaN value at a decision point stops the trial
            return Decision(True, epoch, None, f"{self.config.policy.value}: no finite {self.metric}"), {}
        attrs = {f"{RUNG_ATTR}{completed}": float(value)}
        self._record(number, completed, signal)
        if self.config.policy is Policy.MEDIAN:
            return self._median(number, epoch, completed), attrs
        return self._asha(number, epoch, completed, signal, completed), attrs

    def finish(self, number: int, completed: bool) -> None:
        """Trial ``number`` ended (ran to its last epoch: ``completed``); its scores become completed peers."""
        scores = self._open.pop(number, {})
        self._best.pop(number, None)
        self._initial.pop(number, None)
        if completed:
            self._complete(scores)

    # ---- the policies ----------------------------------------------------------------------------------------

    def _median(self, number: int, epoch: int, completed: int) -> Decision:
        peers = self._completed_at.get(completed, [])
        best = self._best[number]
        if len(peers) < self.config.min_peers:
            return Decision(False, epoch, self._sign * best, f"median: {len(peers)} completed trials at epoch {epoch}, "
                                                f"fewer than min_peers", completed, len(peers))
        median = float(np.median(peers))
        if best < median:
            return Decision(True, epoch, self._sign * best,
                            f"median: best {self.metric} so far {self._sign * best:.6g} worse than the median "
                            f"{self._sign * median:.6g} of {len(peers)} completed trials at epoch {epoch}", completed,
                            len(peers))
        return Decision(False, epoch, self._sign * best, "median: at or above the median", completed, len(peers))

    def _asha(self, number: int, epoch: int, completed: int, signal: float, rung: int, what: str = "") -> Decision:
        """Ray Tune's asynchronous rule: stop below the (1 - 1/rf) quantile of every score at the rung."""
        peers = self._at[rung]
        scores = [s for n, s in peers.items() if n != number] + [signal]
        name = f"{self.config.policy.value}: {what or self.metric}"
        if len(scores) < self.config.min_peers:
            return Decision(False, epoch, self._sign * signal, f"{name}: {len(scores)} trials at rung {rung}, fewer "
                                                               f"than min_peers", rung, len(scores))
        cutoff = float(np.percentile(scores, (1 - 1 / self.config.reduction_factor) * 100))
        if signal < cutoff:
            return Decision(True, epoch, self._sign * signal,
                            f"{name} {self._sign * signal:.6g} after {completed} epochs below the cutoff "
                            f"{self._sign * cutoff:.6g} of {len(scores)} trials at rung {rung}", rung, len(scores))
        return Decision(False, epoch, self._sign * signal, f"{name}: at or above the rung's cutoff", rung, len(scores))

    def _schedule_aware(self, number: int, epoch: int, completed: int, result: Mapping[str, Any],
                        diverged: str | None) -> tuple[Decision | None, dict[str, Any]]:
        if diverged is not None:
            return Decision(True, epoch, None, f"schedule_aware: diverged ({diverged})"), {}
        score_key = COOLDOWN_PREFIX + self.metric
        if score_key not in result:
            return None, {}  # not a probed epoch: no decision
        value = result[score_key]
        if value is None or not math.isfinite(value):
            return Decision(True, epoch, None, f"schedule_aware: the cooldown probe's {self.metric} is not finite "
                                               f"(diverged)"), {}
        signal = self._sign * float(value)
        attrs = {f"{RUNG_ATTR}{completed}": float(value)}
        what = f"cooldown {self.metric}"
        if completed in self._rung_set:
            self._record(number, completed, signal)
            if result.get(LARGE_STEP):
                return Decision(False, epoch, float(value), "schedule_aware: inside its large-step phase: "
                                                            "recorded, judged after the phase", completed), attrs
            return self._asha(number, epoch, completed, signal, completed, what), attrs
        # A catch-up probe: the first epoch after a large-step phase, judged against the last rung it passed.
        self._open[number][completed] = signal
        passed = [rung for rung in self._rungs if rung <= completed]
        if not passed:
            return None, attrs
        return self._asha(number, epoch, completed, signal, passed[-1], what), attrs

    # ---- state -----------------------------------------------------------------------------------------------

    def _diverged(self, number: int, result: Mapping[str, Any]) -> str | None:
        loss = result.get("train_loss")
        if loss is None:
            return None
        if not math.isfinite(loss):
            return f"train_loss {loss}"
        initial = self._initial.get(number)
        if result.get("epoch", 0) < 1:
            return None  # a catapult: at large LR the loss spikes in the first steps and comes back down
        if initial is not None and math.isfinite(initial) and loss > self.config.divergence_factor * initial:
            return (f"train_loss {loss:.6g} is more than {self.config.divergence_factor:g}× the first step's "
                    f"{initial:.6g}")
        return None

    def _record(self, number: int, rung: int, signal: float) -> None:
        self._open[number][rung] = signal
        self._at[rung][number] = signal

    def _complete(self, scores: Mapping[int, float]) -> None:
        """A completed trial's values, for the median rule (signed as recorded)."""
        for epochs, signal in scores.items():
            self._completed_at[epochs].append(signal)


def scores_in(user_attrs: Mapping[str, Any]) -> dict[int, float]:
    """A trial's ``early_stopping:<epochs>`` attrs as {epochs completed: score}."""
    return {int(key[len(RUNG_ATTR):]): float(value) for key, value in user_attrs.items()
            if key.startswith(RUNG_ATTR) and key[len(RUNG_ATTR):].isdigit()}
