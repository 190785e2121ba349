"""The schedule tree's decisions (issue 23, step 2): the one owner of when the tree stops a prefix or a leaf.

Pure Python, no Ray, no training: the simulation (``bench/tree_sim.py``) drives it over a table, and the service's
driver will drive it live (step 3). Everything a decision reads is in ``TreeState`` (plain dicts of floats, JSON
round-trip with ``to_dict``/``from_dict``), so a restarted driver that reloads the state takes the same decisions.

- **Prefix decisions** (a trunk: one phase-1 setting). At each transition candidate r, a trunk that reached r has
  one cooldown probe (its ``signal``, signed: higher is better). A leaf that needs the trunk's prefix up to r (it
  branches at r or later) goes on only if the trunk's probe is at or above the ``1 - 1/reduction_factor`` quantile
  of every trunk's probe at r (Ray Tune's asynchronous rule, as ``workers.early_stopping`` applies it), once
  ``min_peers`` trunks have one. Only trunks at the same epoch are compared, and each by one probe, not per leaf.
- **Leaf decisions**. A leaf branching at t is judged at depths d (epochs after its own decay) on
  ``EarlyStopping(asha).rungs(epochs - t)``, on its raw value, against the leaves that branched at the same t at
  the same depth (so at the same epoch and schedule position): the same quantile rule.
- **The gate**. Every rung (a prefix rung r, a leaf rung (t, d)) keeps the pairs (its signal, the final value) of
  the completed leaves that passed it. A rung stops nothing until it holds ``gate_min_pairs`` pairs whose Spearman
  rank correlation is at least ``gate_threshold``; below it, the rung records and lets the leaf go on (the decision
  says what it would have done).
- A diverged result (a non-finite training loss or metric) stops at once, anywhere, ungated.

Defaults, from first principles and not fitted to any benchmark: ``reduction_factor`` 3 and ``min_peers`` 4 are
the service's ASHA defaults (what users already know); ``gate_threshold`` 0.5 is the rank agreement the bench's P4
asks of a signal; ``gate_min_pairs`` 10 because below ~10 pairs a Spearman's sampling SD under no association
(1/sqrt(n-1) = 0.33) is too wide to tell 0.5 from 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from phasetune.workers.early_stopping import EarlyStopping, Policy


@dataclass(frozen=True)
class TreeOptions:
    """The tree strategy's options (the spec's ``strategy`` will take these names)."""

    reduction_factor: float = 3.0
    min_peers: int = 4
    gate_threshold: float = 0.5
    gate_min_pairs: int = 10

    def __post_init__(self) -> None:
        if not self.reduction_factor > 1:
            raise ValueError(f"reduction_factor: must be > 1, got {self.reduction_factor}")
        if self.min_peers < 1 or self.gate_min_pairs < 3:
            raise ValueError(f"min_peers must be >= 1 and gate_min_pairs >= 3, got {self.min_peers}, "
                             f"{self.gate_min_pairs}")
        if not -1 <= self.gate_threshold <= 1.5:  # above 1: a gate that never opens (records only)
            raise ValueError(f"gate_threshold: must be in [-1, 1.5], got {self.gate_threshold}")


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

    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # prefix rung r -> trunk -> signal
    leaf_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # "t:d" -> trial -> signal
    pairs: dict[str, list[list[float]]] = field(default_factory=dict)  # rung key -> [[signal, final], ...]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # every decision, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TreeState:
        return cls(**{k: raw[k] for k in ("probes", "leaf_scores", "pairs", "decisions") if k in raw})


def leaf_rungs(epochs: int, transition: int, options: TreeOptions) -> tuple[int, ...]:
    """Depths (epochs after the decay at ``transition``) at which a leaf is judged: ASHA's rungs over its own
    remaining epochs (``workers.early_stopping`` owns the rung rule)."""
    return EarlyStopping(Policy.ASHA, reduction_factor=options.reduction_factor).rungs(epochs - transition)


class TreePolicy:
    """Takes the tree's decisions and records them in ``state``."""

    def __init__(self, options: TreeOptions, epochs: int, state: TreeState | None = None) -> None:
        self.options = options
        self.epochs = epochs
        self.state = state if state is not None else TreeState()

    # ---- the gate ---------------------------------------------------------------------------------------------

    def agreement(self, rung: str) -> float | None:
        """Spearman of the rung's signal with the final value over the completed leaves that passed it; None
        with fewer than ``gate_min_pairs`` pairs or no spread."""
        pairs = self.state.pairs.get(rung, [])
        if len(pairs) < self.options.gate_min_pairs:
            return None
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(set(a)) < 2 or len(set(b)) < 2:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(spearmanr(a, b).statistic)
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

    # ---- decisions --------------------------------------------------------------------------------------------

    def record_probe(self, trunk: int, rung: int, signal: float) -> None:
        """A trunk's cooldown probe after ``rung`` epochs (once per trunk and rung)."""
        self.state.probes.setdefault(str(rung), {})[str(trunk)] = signal

    def prefix(self, trunk: int, rung: int) -> TreeDecision:
        """May a leaf use trunk ``trunk``'s prefix past transition candidate ``rung`` (or branch there)?"""
        at = self.state.probes.get(str(rung), {})
        return self._judge(f"prefix:{rung}", at[str(trunk)], list(at.values()), f"trunk {trunk} probe")

    def leaf(self, trial: int, transition: int, depth: int, signal: float) -> TreeDecision:
        """A leaf ``depth`` epochs after its decay at ``transition``, against the leaves that decayed there."""
        key = f"{transition}:{depth}"
        at = self.state.leaf_scores.setdefault(key, {})
        at[str(trial)] = signal
        return self._judge(f"leaf:{key}", signal, list(at.values()), f"leaf {trial}")

    def diverged(self, result: Mapping[str, Any], metric: str) -> TreeDecision | None:
        """A stop, ungated, where the result is non-finite or training ended before the last epoch (the trainer
        stops a diverged run); None otherwise."""
        values = {k: result.get(k) for k in ("train_loss", metric)}
        bad = [f"{k} {v}" for k, v in values.items() if v is None or not math.isfinite(v)]
        if result.get("last_epoch") and int(result["epoch"]) < self.epochs - 1:
            bad.append(f"training ended after epoch {result['epoch']}")
        if not bad:
            return None
        decision = TreeDecision(True, "diverged", None, f"diverged: {', '.join(bad)}")
        self.state.decisions.append(asdict(decision))
        return decision

    def complete(self, trunk: int, transition: int, leaf_signals: Mapping[int, float], final: float) -> None:
        """A leaf ran to its last epoch with ``final`` (signed): every rung it passed gets a pair for its gate."""
        for rung, at in self.state.probes.items():
            if int(rung) <= transition and str(trunk) in at:
                self.state.pairs.setdefault(f"prefix:{rung}", []).append([at[str(trunk)], final])
        for depth, signal in leaf_signals.items():
            self.state.pairs.setdefault(f"leaf:{transition}:{depth}", []).append([signal, final])
