"""Early stopping: the one owner of the decision to stop a plain study's trial before its last epoch (the
study's stop and time limits aside; a tree study's stops are ``workers.tree``'s).

Two policies besides ``none`` (the default), the baselines users know:

- ``median``: Optuna's ``MedianPruner`` rule on raw epoch values. From epoch ``grace_period`` on, a trial whose best
  value so far is worse than the median of the completed trials' values at the same epoch stops, once
  ``min_peers`` completed trials have one.
- ``asha``: asynchronous successive halving on raw epoch values (Ray Tune's ``AsyncHyperBandScheduler`` rule). At
  the rungs ``grace_period * reduction_factor**k`` epochs, a trial below the ``1 - 1/reduction_factor`` quantile of
  the values recorded at that rung stops, once ``min_peers`` trials have one.

Both judge raw values, which favours small learning rates and early decays; the schedule tree judges a prefix by
a cooldown probe instead. ``schedule_aware`` (probes, never judging inside a large-step phase) is retired: the
tree replaced it (``RETIRED``).

Every score a decision reads is written to the trial's user attrs (``early_stopping:<epoch>``) as it is taken, so a
restarted driver rebuilds the rungs from the storage (``EarlyStopper.load``) and keeps every decision. Pure Python:
the service's searcher and the benches run the same code.
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
from phasetune.workers.study_attrs import DECISION_ATTR, PRUNED_AT_EPOCH, RUNG_ATTR


class Policy(str, enum.Enum):
    NONE = "none"
    MEDIAN = "median"
    ASHA = "asha"


# Retired policies: what a spec that names one is told (a 422 naming early_stopping.policy).
RETIRED = {"schedule_aware": 'retired: the schedule tree replaced it ("strategy": {"name": "tree"}: a prefix judged '
                             'by one cooldown probe, leaves after their own decay, every stop gated by measured rank '
                             'agreement; docs/search.md)'}


@dataclass(frozen=True)
class EarlyStopping:
    """The spec's ``early_stopping``. Each policy takes only its own options (``OPTIONS``)."""

    policy: Policy = Policy.NONE
    grace_period: int = 1  # epochs every trial trains before the first decision
    reduction_factor: float = 3.0  # rungs at grace * rf**k epochs; a trial needs the top 1/rf at one to go on
    min_peers: int = 4  # trials with a value at a point before any is stopped there (Optuna's n_min_trials)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> EarlyStopping:
        """From the spec's JSON; SpecError naming ``early_stopping.<field>``."""
        raw = {key: value for key, value in (raw or {}).items() if value is not None}  # None: the default
        if raw.get("policy") in RETIRED:
            raise RuleError(("early_stopping", "policy"), RETIRED[raw["policy"]])
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
            if not out or rung > out[-1]:
                out.append(rung)
            # On to the first k whose rung is larger: with rf near 1, k += 1 would take ~1/ln(rf) steps per epoch
            # (a request with reduction_factor 1.000000001 hung the API).
            k = max(k + 1, math.ceil(math.log((rung + 0.5) / self.grace_period) / math.log(self.reduction_factor)))
        return tuple(out)


_SHARED = {"grace_period", "min_peers"}
OPTIONS: dict[Policy, frozenset[str]] = {
    Policy.NONE: frozenset(),
    Policy.MEDIAN: frozenset(_SHARED),
    Policy.ASHA: frozenset({*_SHARED, "reduction_factor"}),
}
BOUNDS: dict[str, Interval] = {  # the API's schema states the same (service.schemas)
    "grace_period": Interval(1, 100_000, note="epochs"),
    "min_peers": Interval(1, 100_000),
    "reduction_factor": Interval(1, 1e3, open_low=True),
}
_PARSER = Options("early_stopping", BOUNDS, integers=frozenset({"grace_period", "min_peers"}))


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

    def _asha(self, number: int, epoch: int, completed: int, signal: float, rung: int) -> Decision:
        """Ray Tune's asynchronous rule: stop below the (1 - 1/rf) quantile of every score at the rung."""
        peers = self._at[rung]
        scores = [s for n, s in peers.items() if n != number] + [signal]
        name = f"{self.config.policy.value}: {self.metric}"
        if len(scores) < self.config.min_peers:
            return Decision(False, epoch, self._sign * signal, f"{name}: {len(scores)} trials at rung {rung}, fewer "
                                                               f"than min_peers", rung, len(scores))
        cutoff = float(np.percentile(scores, (1 - 1 / self.config.reduction_factor) * 100))
        if signal < cutoff:
            return Decision(True, epoch, self._sign * signal,
                            f"{name} {self._sign * signal:.6g} after {completed} epochs below the cutoff "
                            f"{self._sign * cutoff:.6g} of {len(scores)} trials at rung {rung}", rung, len(scores))
        return Decision(False, epoch, self._sign * signal, f"{name}: at or above the rung's cutoff", rung, len(scores))

    # ---- state -----------------------------------------------------------------------------------------------

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
