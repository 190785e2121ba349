"""The schedule tree (issue 23): the one owner of when the tree stops a prefix or a leaf, for the service's
searcher and for ``bench/tree_sim.py`` alike.

A schedule space of phases is a tree: the first phase's settings, a transition epoch, the next phase's settings...
Under ``"strategy": {"name": "tree"}`` the shared settings (every phase's but the last) are searched on a grid
(``GriddedTrial``) and transitions on whole epochs, so that prefixes coincide; a **trunk** is one prefix, trained
once through the checkpoint store (``workers.branching.TrialBranch``) and grown only as far as a leaf needs it; a
trial is a **leaf**: it resumes from its trunk's deepest stored checkpoint and trains its last phase.

- **Prefix decisions.** At each transition candidate r a prefix reaches, the trial that trains it there runs one
  cooldown probe (once per prefix, not per leaf: ``FixedProbes``). A leaf that needs that prefix past r goes on
  only if the prefix's probe is at or above the ``1 - 1/reduction_factor`` quantile of every prefix's probe at r
  (Ray Tune's asynchronous rule), once ``min_peers`` prefixes have one. Only prefixes at the same epoch compare.
- **Leaf decisions.** A leaf whose last phase began at t is judged ``d`` epochs later, at ASHA's rungs over its
  remaining epochs, on its raw value, against the leaves that began it at the same t at the same depth.
- **The gate.** Every rung keeps the pairs (its signal, the final value) of the completed leaves that passed it;
  it stops nothing until ``gate_min_pairs`` pairs have a Spearman of at least ``gate_threshold``. Below, it records
  what it would have done and lets the leaf go on.
- A diverged result (non-finite loss or metric, or training ended early) stops at once, anywhere, ungated.

Pure Python, no Ray and no Optuna: everything a decision reads is in ``TreeState`` (JSON as it stands), which the
searcher keeps in the study's attrs, so a restarted driver takes the same decisions.

Defaults, from first principles and not fitted to any benchmark: ``reduction_factor`` 3 and ``min_peers`` 4 are
the service's ASHA defaults; ``gate_threshold`` 0.5 is the rank agreement the bench's P4 asks of a signal;
``gate_min_pairs`` 10 because below ~10 pairs a Spearman's sampling SD under no association (1/sqrt(n-1) = 0.33)
is too wide to tell 0.5 from 0; ``grid`` 6 log-spaced values per shared setting (the issue's 6-8);
``cooldown_fraction`` 0.15, the probe the tables were built with.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from phasetune.search_spaces import SpecError, params, space
from phasetune.search_spaces.checks import Interval, Options
from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.params import TrialLike
from phasetune.workers.branching import phase_count, prefix_params
from phasetune.workers.early_stopping import EarlyStopping, Policy
from phasetune.workers.study_attrs import COOLDOWN_PREFIX


class StrategyName(str, enum.Enum):
    PLAIN = "plain"  # the sampler's trials, each from epoch 0 (with the study's early stopping, if any)
    TREE = "tree"


BOUNDS: dict[str, Interval] = {  # the API's schema states the same (service.schemas)
    "grid": Interval(2, 64, note="values per shared setting"),
    "reduction_factor": Interval(1, 1e3, open_low=True),
    "min_peers": Interval(1, 100_000),
    "gate_threshold": Interval(-1, 1.5, note="above 1: a gate that never opens (records only)"),
    "gate_min_pairs": Interval(3, 100_000),
    "cooldown_fraction": Interval(0, 1, open_low=True, note="a share of the steps done"),
    "max_bytes": Interval(1 << 20, 1 << 50, note="bytes"),
}
_PARSER = Options("strategy", BOUNDS, integers=frozenset({"grid", "min_peers", "gate_min_pairs", "max_bytes"}))


@dataclass(frozen=True)
class TreeOptions:
    """The tree strategy's options (the spec's ``strategy`` beside ``"name": "tree"``)."""

    grid: int = 6
    reduction_factor: float = 3.0
    min_peers: int = 4
    gate_threshold: float = 0.5
    gate_min_pairs: int = 10
    cooldown_fraction: float = 0.15  # the probe's span, a share of the steps done (what schedule_aware used)
    max_bytes: int = 1 << 30  # the checkpoint store's cap (trunks' checkpoints)

    def __post_init__(self) -> None:
        _PARSER.parse(asdict(self))  # a bench's own options meet the API's bounds too


@dataclass(frozen=True)
class Strategy:
    """The spec's ``strategy``: ``plain`` (the default) takes no options; ``tree`` takes ``TreeOptions``."""

    name: StrategyName = StrategyName.PLAIN
    tree: TreeOptions | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Strategy:
        raw = {key: value for key, value in (raw or {}).items() if value is not None}
        try:
            name = StrategyName(raw.pop("name", StrategyName.PLAIN.value))
        except ValueError:
            raise SpecError(("strategy", "name"), f"unknown strategy; expected one of "
                                                  f"{[s.value for s in StrategyName]}") from None
        if name is StrategyName.PLAIN:
            if raw:
                raise RuleError(("strategy", sorted(raw)[0]), "not an option of strategy 'plain' (it takes none)")
            return cls()
        return cls(name, TreeOptions(**_PARSER.parse(raw)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name.value, **(asdict(self.tree) if self.tree is not None else {})}


def check_space(schedule: Any, epochs: int) -> None:
    """The tree needs a ``phases`` space of two or more phases whose transitions can be whole epochs: RuleError
    naming the field (relative to the spec)."""
    if not isinstance(schedule, Mapping) or schedule.get("family") != space.PHASES:
        raise RuleError(("strategy", "name"), "the tree strategy shares phase prefixes: the schedule must be a "
                                              "'phases' family of two or more phases (not choices or a preset)")
    if len(schedule.get("phases", [])) < 2:
        raise RuleError(("schedule", "phases"), "the tree strategy needs two or more phases")
    for i, low, high in _transition_ranges(schedule):
        if math.floor(high) < math.ceil(low):
            raise RuleError(("schedule", "transition_epochs", i), f"the tree strategy branches at whole epochs: "
                                                                  f"[{low}, {high}] holds none")
    if not space.checkpoint_epochs(schedule, epochs):
        raise RuleError(("schedule", "transition_epochs"), f"no transition below epochs - 1 ({epochs - 1})")


def _transition_ranges(schedule: Mapping[str, Any]) -> Iterable[tuple[int, float, float]]:
    for i, raw in enumerate(schedule.get("transition_epochs", [])):
        edges = [float(v) for v in params.candidates(params.parse(raw))]
        yield i, min(edges), max(edges)


def grid_values(low: float, high: float, log: bool, n: int) -> list[float]:
    """``n`` values from ``low`` to ``high``, log-spaced or even, at 6 significant digits (JSON-exact)."""
    if n < 2 or low == high:
        return [low]
    if log:
        values = [math.exp(math.log(low) + k * (math.log(high) - math.log(low)) / (n - 1)) for k in range(n)]
    else:
        values = [low + k * (high - low) / (n - 1) for k in range(n)]
    return sorted({float(f"{v:.6g}") for v in values})


class GriddedTrial:
    """A ``TrialLike`` that puts the tree's shared settings on a grid: a float setting of any phase but the last
    becomes a categorical of ``grid_values`` (Optuna's own distribution: TPE and random search choose among them,
    and every trial is still one complete configuration), a transition epoch a whole epoch. The last phase's
    settings stay as the space says."""

    def __init__(self, trial: TrialLike, phases: int, resolution: int) -> None:
        self._trial, self._last, self._resolution = trial, phases - 1, resolution

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if space.boundary_index(name) is not None:
            return self._trial.suggest_int(name, math.ceil(low), math.floor(high))
        phase = space.phase_index(name)
        if phase is not None and phase < self._last and step is None and low < high:
            return float(self._trial.suggest_categorical(name, grid_values(low, high, log, self._resolution)))
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._trial.suggest_categorical(name, choices)


def trunk_id(params: Mapping[str, Any]) -> str:
    """A leaf's trunk: its Optuna params of every phase but the last and the boundaries between them (12 hex)."""
    shared = prefix_params(params, phase_count(params) - 1)
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def prefix_rungs(schedule_space: Mapping[str, Any], epochs: int, transition: int) -> tuple[int, ...]:
    """The transition candidates (epochs completed) up to a leaf's last transition: where its prefix is judged."""
    return tuple(e + 1 for e in space.checkpoint_epochs(schedule_space, epochs) if e + 1 <= transition)


class FixedProbes:
    """The trainable's probe schedule under the tree: a cooldown probe after exactly the epochs counts given (the
    prefixes this leaf trains first), as ``phasetune.workers.train.Probes`` says."""

    def __init__(self, completed: Iterable[int], fraction: float) -> None:
        self._at, self.fraction = frozenset(completed), fraction

    def due(self, completed: int, large_step: bool) -> bool:
        return completed in self._at


# ---- decisions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeDecision:
    stop: bool
    rung: str  # "prefix:<r>" or "leaf:<t>:<d>" or "diverged"
    signal: float | None
    reason: str
    peers: int = 0
    gate: float | None = None  # the rung's rank agreement when decided (None: too few pairs)
    would_stop: bool = False  # what the quantile rule said, gate or not


@dataclass
class TreeState:
    """Everything decisions read. Keys are strings so that the state is JSON as it stands."""

    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # prefix rung r -> prefix -> signal
    leaf_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # "t:d" -> trial -> signal
    pairs: dict[str, list[list[float]]] = field(default_factory=dict)  # rung key -> [[signal, final], ...]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # every decision, in order
    trunks: dict[str, list[int]] = field(default_factory=dict)  # live: trunk -> the leaves (trial numbers) it had
    stops: dict[str, int] = field(default_factory=dict)  # live: stops by kind (prefix, leaf, diverged)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TreeState:
        return cls(**{k: raw[k] for k in ("probes", "leaf_scores", "pairs", "decisions", "trunks", "stops")
                      if k in raw})


def _ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy's ``rankdata``; scipy is not a dependency)."""
    array = np.asarray(values, dtype=float)
    ranks = np.empty(len(array))
    ranks[np.argsort(array, kind="mergesort")] = np.arange(1, len(array) + 1)
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def leaf_rungs(epochs: int, transition: int, options: TreeOptions) -> tuple[int, ...]:
    """Depths (epochs after the last phase began at ``transition``) at which a leaf is judged: ASHA's rungs over
    its own remaining epochs (``workers.early_stopping`` owns the rung rule)."""
    return EarlyStopping(Policy.ASHA, reduction_factor=options.reduction_factor).rungs(epochs - transition)


class TreePolicy:
    """Takes the tree's decisions and records them in ``state``."""

    def __init__(self, options: TreeOptions, epochs: int, state: TreeState | None = None) -> None:
        self.options = options
        self.epochs = epochs
        self.state = state if state is not None else TreeState()

    def agreement(self, rung: str) -> float | None:
        """Spearman of the rung's signal with the final value over the completed leaves that passed it; None
        with fewer than ``gate_min_pairs`` pairs or no spread."""
        pairs = self.state.pairs.get(rung, [])
        if len(pairs) < self.options.gate_min_pairs:
            return None
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(set(a)) < 2 or len(set(b)) < 2:
            return None
        rho = float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])  # Spearman: Pearson on (tie-averaged) ranks
        return rho if math.isfinite(rho) else None

    def _judge(self, rung: str, signal: float, scores: Sequence[float], what: str) -> TreeDecision:
        """The asynchronous quantile rule, then the gate."""
        gate = self.agreement(rung)
        if len(scores) < self.options.min_peers:
            decision = TreeDecision(False, rung, signal, f"{what}: {len(scores)} at {rung}, fewer than min_peers",
                                    len(scores), gate)
        else:
            cutoff = float(np.percentile(scores, (1 - 1 / self.options.reduction_factor) * 100))
            below = signal < cutoff
            opened = gate is not None and gate >= self.options.gate_threshold
            if below and opened:
                reason = (f"{what} {signal:.6g} below the cutoff {cutoff:.6g} of {len(scores)} at {rung} "
                          f"(rank agreement {gate:.2f} >= {self.options.gate_threshold:g})")
            elif below:
                reason = (f"{what} {signal:.6g} below the cutoff {cutoff:.6g} at {rung}, recorded only: rank "
                          f"agreement {'too few pairs' if gate is None else format(gate, '.2f')} < "
                          f"{self.options.gate_threshold:g}")
            else:
                reason = f"{what}: at or above the cutoff at {rung}"
            decision = TreeDecision(below and opened, rung, signal, reason, len(scores), gate, below)
        self.state.decisions.append(asdict(decision))
        return decision

    def record_probe(self, prefix: str, rung: int, signal: float) -> None:
        """A prefix's cooldown probe after ``rung`` epochs (once per prefix and rung)."""
        self.state.probes.setdefault(str(rung), {})[prefix] = signal

    def probe(self, prefix: str, rung: int) -> float | None:
        return self.state.probes.get(str(rung), {}).get(prefix)

    def prefix(self, prefix: str, rung: int) -> TreeDecision:
        """May a leaf use ``prefix`` past transition candidate ``rung`` (or branch there)?"""
        at = self.state.probes.get(str(rung), {})
        return self._judge(f"prefix:{rung}", at[prefix], list(at.values()), f"prefix {prefix} probe")

    def leaf(self, trial: int, transition: int, depth: int, signal: float) -> TreeDecision:
        """A leaf ``depth`` epochs after its last phase began at ``transition``, against the leaves that began it
        there."""
        key = f"{transition}:{depth}"
        at = self.state.leaf_scores.setdefault(key, {})
        at[str(trial)] = signal
        return self._judge(f"leaf:{key}", signal, list(at.values()), f"leaf {trial}")

    def diverged(self, result: Mapping[str, Any], metric: str) -> TreeDecision | None:
        """A stop, ungated, where the result's training loss or metric is missing or non-finite; None otherwise. (A
        run that ends early with finite values is not diverged: an AutoDecay last phase ends its trial itself.)"""
        values = {k: result.get(k) for k in ("train_loss", metric)}
        bad = [f"{k} {v}" for k, v in values.items() if v is None or not math.isfinite(v)]
        if not bad:
            return None
        decision = TreeDecision(True, "diverged", None, f"diverged: {', '.join(bad)}")
        self.state.decisions.append(asdict(decision))
        return decision

    def complete(self, prefixes: Mapping[int, str], transition: int, leaf_signals: Mapping[int, float],
                 final: float) -> None:
        """A leaf ran to its last epoch with ``final`` (signed): every rung it passed gets a pair for its gate.
        ``prefixes``: the leaf's prefix at each transition candidate it reached."""
        for rung, prefix in prefixes.items():
            signal = self.probe(prefix, rung)
            if rung <= transition and signal is not None:
                self.state.pairs.setdefault(f"prefix:{rung}", []).append([signal, final])
        for depth, signal in leaf_signals.items():
            self.state.pairs.setdefault(f"leaf:{transition}:{depth}", []).append([signal, final])


# ---- a live leaf ----------------------------------------------------------------------------------------------


@dataclass
class Leaf:
    """One trial of a tree study, as the searcher tracks it: its prefix at each candidate, its decisions."""

    number: int
    trunk: str
    transition: int  # the epoch its last phase begins
    prefixes: dict[int, str]  # transition candidate r (epochs completed) -> its prefix's id there
    decided: set[int] = field(default_factory=set)  # the candidates whose prefix decision was taken
    signals: dict[int, float] = field(default_factory=dict)  # leaf rung depth -> its signal
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def probe_at(self, policy: TreePolicy) -> tuple[int, ...]:
        """The candidates whose prefix nobody has probed yet: this leaf probes them as it trains through."""
        return tuple(r for r, prefix in sorted(self.prefixes.items()) if policy.probe(prefix, r) is None)

    def attrs(self) -> dict[str, Any]:
        return {"trunk": self.trunk, "transition_epoch": self.transition,
                "prefixes": {str(r): p for r, p in sorted(self.prefixes.items())}, "decisions": self.decisions}


class TreeSearch:
    """The tree's side of a live study: a ``TreePolicy`` over the state the study's attrs keep. The searcher, which
    tracks its running ``Leaf``s, asks it at a leaf's start (``start``, ``admit``), at each of its results
    (``on_result``) and at its end (``complete``); ``changed`` says the state must be written back."""

    def __init__(self, options: TreeOptions, epochs: int, metric: str, maximize: bool,
                 state: Mapping[str, Any] | None = None) -> None:
        self.policy = TreePolicy(options, epochs, TreeState.from_dict(state or {}))
        self.metric, self.sign = metric, 1.0 if maximize else -1.0
        self.changed = False

    def state(self) -> dict[str, Any]:
        """What the study's attr keeps (the decisions are each leaf's, in its own attrs)."""
        out = self.policy.state.to_dict()
        out.pop("decisions")
        return out

    def start(self, leaf: Leaf) -> None:
        """A new leaf of ``leaf.trunk``."""
        self.policy.state.trunks.setdefault(leaf.trunk, []).append(leaf.number)
        self.changed = True

    def _take(self, leaf: Leaf, decision: TreeDecision) -> TreeDecision:
        leaf.decisions.append(asdict(decision))
        self.policy.state.decisions.clear()  # kept per leaf, not in the study's state
        if decision.stop:
            kind = decision.rung.split(":")[0]
            self.policy.state.stops[kind] = self.policy.state.stops.get(kind, 0) + 1
            self.changed = True
        return decision

    def admit(self, leaf: Leaf) -> TreeDecision | None:
        """The prefix decisions a new leaf can be given before it trains: at each candidate whose prefix is
        probed, in order, until one stops it (returned) or one is not probed yet (decided as it trains)."""
        for rung, prefix in sorted(leaf.prefixes.items()):
            if self.policy.probe(prefix, rung) is None:
                return None
            leaf.decided.add(rung)
            decision = self._take(leaf, self.policy.prefix(prefix, rung))
            if decision.stop:
                return decision
        return None

    def on_result(self, leaf: Leaf, result: Mapping[str, Any], reused: bool) -> TreeDecision | None:
        """One epoch's ``result``: the probe it carries recorded, then the decision due after it (None: none)."""
        if not reused and (diverged := self.policy.diverged(result, self.metric)) is not None:
            return self._take(leaf, diverged)
        completed = int(result["epoch"]) + 1
        prefix = leaf.prefixes.get(completed)
        if prefix is not None and completed not in leaf.decided:
            probe = result.get(COOLDOWN_PREFIX + self.metric)
            if probe is not None and math.isfinite(probe) and self.policy.probe(prefix, completed) is None:
                self.policy.record_probe(prefix, completed, self.sign * float(probe))
                self.changed = True
            if self.policy.probe(prefix, completed) is None:
                return None  # resumed past it from a checkpoint whose probe was never recorded: no decision
            leaf.decided.add(completed)
            return self._take(leaf, self.policy.prefix(prefix, completed))
        depth = completed - leaf.transition
        value = result.get(self.metric)
        if (depth > 0 and not reused and not result.get("last_epoch") and value is not None
                and depth in leaf_rungs(self.policy.epochs, leaf.transition, self.policy.options)):
            leaf.signals[depth] = self.sign * float(value)
            self.changed = True
            return self._take(leaf, self.policy.leaf(leaf.number, leaf.transition, depth, leaf.signals[depth]))
        return None

    def complete(self, leaf: Leaf, final: float) -> None:
        """The leaf ran to its last epoch with objective ``final``: its rungs' gates get their pairs."""
        if math.isfinite(final):
            self.policy.complete({r: p for r, p in leaf.prefixes.items() if r in leaf.decided}, leaf.transition,
                                 leaf.signals, self.sign * final)
            self.changed = True

    def summary(self) -> dict[str, Any]:
        """The study's ``tree`` in ``GET /studies/{id}``: its trunks and their leaves, the prefixes probed at each
        candidate, stops by kind, and each rung's gate."""
        state = self.policy.state
        rungs = sorted({*state.pairs, *(f"prefix:{r}" for r in state.probes)})
        return {"trunks": {trunk: list(numbers) for trunk, numbers in state.trunks.items()},
                "probed_prefixes": {r: len(state.probes[r]) for r in sorted(state.probes, key=int)},
                "stops": dict(state.stops),
                "gates": {rung: {"pairs": len(state.pairs.get(rung, [])), "agreement": self.policy.agreement(rung)}
                          for rung in rungs}}
