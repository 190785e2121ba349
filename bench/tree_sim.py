"""Simulate search methods over a tabulated schedule tree (``bench/tree_table.py``), after checking the premise
(issue 23: step 1, the pre-checks with today's methods simulated; step 2, the tree).

Each method runs over the table exactly as it runs live, one trial after another: every trial's epoch results
are what a live trial of its configuration reports (``tree_table.trial_history``: the same metrics), fed to the
service's own
``workers.early_stopping.EarlyStopper``; epochs and probe steps are charged as ``bench/search_efficiency.py``'s
ledger charges them (an epoch is 1, a probe ``cooldown_steps / steps_per_epoch``), until ``--trials`` x epochs
are spent (the trial running then is cut). A trial counts as a result when it trains to its last epoch with a
finite training loss; the incumbent is the best such final value so far.

- ``full``: every trial to its last epoch; ``median``, ``asha``: the naive policies at their defaults
  (``schedule_aware``, a reference in step 1, is retired: the tree replaced it); ``top1epoch``:
  ``search_efficiency.top1_sizes`` one-epoch evaluations, the best continued (retraining from scratch is exact, so
  only epochs past the first are charged).
- ``tree``: the schedule tree (``run_tree``; ``phasetune.workers.tree`` takes every decision, with its defaults on
  every workload): each distinct prefix (a trunk) trained once per run, lazily, probed once at each transition
  candidate it reaches; a trial is a leaf resumed from its trunk's checkpoint. Trunk epochs are charged once per
  run, reused epochs are free, probes are charged. Its goals (issue 23) are printed as met / NOT met, beside a
  reference: an oracle with the tree's sharing that stops, for free, every trial that would not improve the
  incumbent (``run_oracle``).
- Sampler (``--sampler``): random search, the same configuration stream for every method (paired): per (data seed,
  sampler seed) a random permutation of the grid, then another, and so on; or ``tpe``, the service's TPE over the
  grid's axes told each trial's outcome as the live searcher tells Optuna (``TPEStream``: not paired, each method
  follows its own results; ``top1epoch`` and the oracle need random search's stream).

Metrics. Per data seed, from its own grid (every configuration's final value; a diverged one counts as the
seed's worst finite final): the **target** is the top-5% quality level (the ``ceil(5% x n)``-th best final), the
**normalized regret** of a value v is (grid best - v) / (grid best - grid median) (0: the grid's best; 1: its
median; infinite before a method's first result). The median regret curve of a method is the median over its
runs (data seeds x sampler seeds) at every epoch of budget; r* is ``full``'s at the whole budget; a method's
**speed-up** vs ``full`` is the budget ``full``'s median curve needs to reach r* over the budget the method's
needs (0 where it never does; undefined where neither does); vs the better naive policy (``median`` / ``asha``:
the one that needs less, or where neither reaches r*, the one with the lower final regret), the same with that
policy's budget on top. 95% intervals: a block bootstrap over data seeds (each resample draws data
seeds with replacement and keeps all their sampler seeds' runs; r* recomputed). **reach**: the share of runs
whose incumbent reaches the target by the end; **P(stop | top-5%)**: of the trials of a top-5% configuration, the
share a policy stopped (top1epoch: not continued); **probe share**: probe epochs / epochs spent.

Pre-checks, printed from the table before any ratio (a failed one says so, and rules out the figures it names):

- P1, the schedule matters beyond seed noise: the gap (target - grid median, mean over seeds) against the noise
  (the residual SD of finals after a configuration + seed additive fit, over the upper half of the configurations
  by mean final), and the split-half reliability (Spearman of all configurations' mean finals over even vs odd
  seeds). ok: gap >= P1_GAP x noise and reliability >=
  P1_RELIABILITY. A failure rules out every speed-up.
- P2, headroom: the expected number of full trials random search needs to reach the target, (n + 1) / (m + 1)
  for m configurations at or above it out of n (mean over seeds), beside the simulated full runs' median. ok: >=
  P2_TRIALS. A failure rules out every speed-up.
- P3, the naive pruners fail: P(stop | top-5%) of ``median`` and ``asha``, and the Spearman of the raw value after
  the ASHA rungs' epochs with the final (mean over seeds). ok: the better naive policy stops top-5%
  configurations in at least P3_STOP of their trials. A failure turns the tree's goal vs naive into "no worse".
- P4, the signal is valid: per transition candidate t, Spearman over trunks of the trunk's cooldown probe after
  t epochs with the best final among its leaves that branch at t or later (mean over seeds, bootstrap interval),
  beside the raw value's. ok: at the first candidate (the prefix decision that saves the most), mean >= P4_RHO
  with its lower bound > 0. A failure rules out the tree's prefix decisions (step 2).

Run: ``.venv/bin/python bench/tree_sim.py --workload ps10 --params '{"noise": 0.1}' [--epochs 12] [--seeds 10]
[--sampler-seeds 5] [--trials 40] [--methods full,median,asha,top1epoch,tree] [--json OUT]``. The table:
``--table PATH``, or the one under ``bench/tables`` built for that workload, params, space (``--space`` a grid
JSON file, ``tree_table.Grid``) and epochs with at least ``--seeds`` seeds; none: it is built there first
(``--workers`` processes).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import tree_table
from scipy.stats import spearmanr
from search_efficiency import jsonable, ok, percentile, top1_sizes

from phasetune.search_spaces import SpecError
from phasetune.workers.early_stopping import EarlyStopper, EarlyStopping, Policy
from phasetune.workers.optuna_study import sampler_for
from phasetune.workers.spec import SamplerName, SamplerSpec
from phasetune.workers.study_attrs import COOLDOWN_PREFIX, COOLDOWN_STEPS
from phasetune.workers.tree import TreeOptions, TreePolicy, leaf_rungs
from phasetune.workers.workloads import workloads

METHODS = ("full", "median", "asha", "top1epoch", "tree")
POLICIES = {"full": Policy.NONE, "median": Policy.MEDIAN, "asha": Policy.ASHA}
NAIVE = ("median", "asha")
TOP_SHARE = 0.05
RESAMPLES = 1000
BOOTSTRAP_SEED = 0
P1_GAP, P1_RELIABILITY = 2.0, 0.5
P2_TRIALS = 15.0
P3_STOP = 0.2
P4_RHO = 0.5
TABLES = Path(__file__).resolve().parent / "tables"
CURVE_POINTS = (0.1, 0.25, 0.5, 0.75, 1.0)  # budget shares the printed regret curves are read at


# ---- one seed of the table, ready to simulate -------------------------------------------------------------------


@dataclass
class SeedGrid:
    """One data seed: each configuration's live history (without probes) and final."""

    seed: int
    histories: list[list[dict[str, Any]]]
    finals: np.ndarray  # signed (higher is better); a diverged configuration: the seed's worst finite final
    diverged: np.ndarray  # bool per configuration
    target: float  # signed top-5% level
    best: float
    median: float
    entry: Mapping[str, Any] | None = None  # the table's seed (trunks and leaves): what the tree reads
    top: np.ndarray = field(init=False)  # bool: at or above the target

    def __post_init__(self) -> None:
        self.top = self.finals >= self.target

    def regret(self, signed: float) -> float:
        if not math.isfinite(signed):
            return math.inf
        spread = self.best - self.median
        return (self.best - signed) / spread if spread > 0 else float(signed < self.best)


def completed_value(history: Sequence[Mapping[str, Any]], epochs: int, metric: str) -> float | None:
    """The deployable final value: the trial reached its last epoch with a finite training loss and metric."""
    last = history[-1] if history else None
    if last is None or int(last["epoch"]) != epochs - 1 or not math.isfinite(last["train_loss"]):
        return None
    value = last.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def seed_grid(table: Mapping[str, Any], seed: int, metric: str, sign: float) -> SeedGrid:
    entry, epochs = table["seeds"][str(seed)], int(table["meta"]["epochs"])
    n = len(entry["leaves"])
    histories = [tree_table.trial_history(entry, c) for c in range(n)]
    values = [completed_value(h, epochs, metric) for h in histories]
    finite = [sign * v for v in values if v is not None]
    if not finite:
        raise ValueError(f"seed {seed}: every configuration diverged")
    finals = np.array([sign * v if v is not None else min(finite) for v in values])
    ordered = np.sort(finals)[::-1]
    target = float(ordered[max(1, math.ceil(TOP_SHARE * n)) - 1])
    return SeedGrid(seed, histories, finals, np.array([v is None for v in values]), target,
                    float(ordered[0]), float(np.median(finals)), entry)


# ---- the methods --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One method's run on one (data seed, sampler seed): its spending and incumbent, and what it did to each
    trial."""

    seed: int
    sampler_seed: int
    events: list[tuple[float, float]] = field(default_factory=list)  # (epochs spent, incumbent signed)
    spent: float = 0.0
    probe: float = 0.0
    trials: int = 0
    completed: int = 0
    stopped_top: int = 0  # trials of top-5% configurations a decision stopped
    seen_top: int = 0  # trials of top-5% configurations that got a decision (stopped, or went on to the end)
    best: float = -math.inf
    stops: dict[str, int] = field(default_factory=dict)  # the tree's stops by kind (prefix, leaf, diverged)
    first_stop: float = math.inf  # epochs spent when the tree's first gated stop came (its gates' warm-up)
    top_stops: dict[str, int] = field(default_factory=dict)  # the tree's stops of top-5% trials, by kind
    outcomes: list[str | None] = field(default_factory=list)  # the tree: each trial's stop kind (None: completed)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # the tree: every decision, in order

    def complete(self, signed: float) -> None:
        self.completed += 1
        self.best = max(self.best, signed)
        self.events.append((self.spent, self.best))


def stream(n: int, seed: int, sampler_seed: int) -> Iterator[int]:
    """Random search over the grid: permutations of it, one after another (paired: every method reads it)."""
    rng = np.random.default_rng([seed, sampler_seed])
    while True:
        yield from (int(c) for c in rng.permutation(n))


class TPEStream:
    """The service's TPE (``optuna_study.sampler_for``: multivariate, its start-up trials) over the grid's three
    axes as categoricals, told each trial's outcome as the live searcher tells Optuna: a completed trial its signed
    final, a stopped or cut one PRUNED. Not paired: each method's stream follows that method's own results."""

    def __init__(self, dims: tuple[int, int, int], seed: int, sampler_seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per run: no line each
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate, group
        sampler = sampler_for(SamplerSpec(name=SamplerName.TPE), seed * 1000 + sampler_seed)
        self._study = optuna.create_study(direction="maximize", sampler=sampler)
        self._dims = dims
        self._open: optuna.Trial | None = None

    def __iter__(self) -> TPEStream:
        return self

    def __next__(self) -> int:
        trunks, transitions, phase2 = self._dims
        self._open = trial = self._study.ask()
        i = trial.suggest_categorical("trunk", list(range(trunks)))
        k = trial.suggest_categorical("transition", list(range(transitions)))
        p = trial.suggest_categorical("phase2", list(range(phase2)))
        return (i * transitions + k) * phase2 + p  # tree_table.Grid.configs' order

    def tell(self, signed: float | None) -> None:
        if self._open is None:
            return
        if signed is None:
            self._study.tell(self._open, state=optuna.trial.TrialState.PRUNED)
        else:
            self._study.tell(self._open, signed)
        self._open = None


def configs_for(grid: SeedGrid, sampler_seed: int, sim: Sim) -> Iterator[int]:
    """The method's configuration stream: random search's paired permutations, or TPE."""
    if sim.sampler == "tpe":
        return TPEStream(sim.dims, grid.seed, sampler_seed)
    return stream(len(grid.finals), grid.seed, sampler_seed)


def tell(configs: Iterator[int], signed: float | None) -> None:
    """The trial's outcome to a stream that learns from it (TPE); random search reads none."""
    if isinstance(configs, TPEStream):
        configs.tell(signed)


def run_policy(method: str, grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
    """``full``, ``median``, ``asha``: trials one after another through the service's stopper."""
    config = EarlyStopping(POLICIES[method])
    stopper = EarlyStopper(config, sim.epochs, sim.metric, sim.sign > 0)
    run = Run(grid.seed, sampler_seed)
    source = grid.histories
    configs = configs_for(grid, sampler_seed, sim)
    while run.spent < sim.budget - 1e-9:
        c = next(configs)
        number, run.trials = run.trials, run.trials + 1
        stopped = cut = False
        for result in source[c]:
            run.spent += 1.0
            if result.get(COOLDOWN_STEPS):
                run.probe += result[COOLDOWN_STEPS] / sim.steps_per_epoch
                run.spent += result[COOLDOWN_STEPS] / sim.steps_per_epoch
            decision, _ = stopper.decide(number, result)
            stopped = decision is not None and decision.stop
            cut = not stopped and run.spent >= sim.budget - 1e-9 and not result["last_epoch"]
            if stopped or cut or result["last_epoch"]:
                break
        value = None if stopped or cut else completed_value(source[c], sim.epochs, sim.metric)
        tell(configs, None if value is None else sim.sign * value)
        stopper.finish(number, completed=value is not None)
        if grid.top[c] and not cut:
            run.seen_top += 1
            run.stopped_top += stopped
        if value is not None:
            run.complete(sim.sign * value)
    return run


def run_top1epoch(grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
    """One-epoch evaluations, then the best continued (``bench/search_efficiency.py``'s rule and sizes)."""
    n, _ = top1_sizes(sim.trials, sim.epochs)
    run = Run(grid.seed, sampler_seed)
    configs = stream(len(grid.finals), grid.seed, sampler_seed)
    while run.spent < sim.budget - 1e-9:
        firsts: list[tuple[float, int]] = []  # (signed one-epoch value, configuration), in stream order
        while len(firsts) < n and run.spent < sim.budget - 1e-9:
            c = next(configs)
            run.trials += 1
            run.spent += 1.0
            first = grid.histories[c][0]
            value = first.get(sim.metric) if math.isfinite(first["train_loss"]) else None
            firsts.append((sim.sign * value if value is not None and math.isfinite(value) else -math.inf, c))
        ranked = sorted(firsts, key=lambda f: -f[0])
        went_on = 0
        for signed, c in ranked:
            if run.spent >= sim.budget - 1e-9 or signed == -math.inf:
                break
            went_on += 1
            history, cut = grid.histories[c], False
            for result in history[1:]:
                run.spent += 1.0
                cut = run.spent >= sim.budget - 1e-9 and not result["last_epoch"]
                if cut or result["last_epoch"]:
                    break
            value = None if cut else completed_value(history, sim.epochs, sim.metric)
            if grid.top[c] and not cut:
                run.seen_top += 1
            if value is not None:
                run.complete(sim.sign * value)
        for _, c in ranked[went_on:]:  # never continued: stopped after one epoch
            if grid.top[c]:
                run.seen_top += 1
                run.stopped_top += 1
    return run


def run_tree(grid: SeedGrid, sampler_seed: int, sim: Sim, configs: Iterator[int] | None = None) -> Run:
    """The schedule tree (``phasetune.workers.tree`` decides, as live), one trial after another on the paired stream.

    A trial (a configuration: a leaf) needs its trunk's prefix up to its transition t. The trunk grows lazily, only
    as far as a leaf needs it: only epochs it has not trained yet are charged (a prefix is trained once per run,
    however many leaves use it), and it is probed once at each transition candidate it reaches (charged once, the
    table's probe steps). At each candidate r <= t the prefix decision is taken; then the leaf resumes from the
    trunk's checkpoint at t (its own epochs charged) with the leaf decisions at its depths after the decay. A
    diverged trunk stops every leaf that needs it past its divergence, at no further cost. A run ends when its
    budget is spent, or when a whole pass over the grid spent nothing (every configuration is stopped for free), or
    when ``configs`` (the configurations in the order a live study drew them; default: the paired stream) ends."""
    if grid.entry is None:
        raise ValueError("the tree reads the table's trunks and leaves: SeedGrid.entry is missing")
    trunks = [trunk["history"] for trunk in grid.entry["trunks"]]
    leaves = grid.entry["leaves"]
    candidates = sorted({int(leaf["transition_epoch"]) for leaf in leaves})
    policy = TreePolicy(sim.tree, sim.epochs)
    grown = [0] * len(trunks)  # epochs each trunk has trained
    probed: set[tuple[int, int]] = set()
    run = Run(grid.seed, sampler_seed, decisions=policy.state.decisions)
    configs = configs if configs is not None else configs_for(grid, sampler_seed, sim)
    idle = 0  # consecutive trials that spent nothing

    def over() -> bool:
        return run.spent >= sim.budget - 1e-9

    while not over() and idle < len(grid.finals):
        c = next(configs, None)
        if c is None:
            break
        number, run.trials, before = run.trials, run.trials + 1, run.spent
        i, t = int(leaves[c]["trunk"]), int(leaves[c]["transition_epoch"])
        trunk, history = trunks[i], grid.histories[c]
        stop: str | None = None
        cut = False
        for r in (r for r in candidates if r <= t):
            while grown[i] < min(r, len(trunk)) and not over() and not (grown[i] and trunk[grown[i] - 1]["last_epoch"]):
                grown[i] += 1
                run.spent += 1.0
            last = trunk[grown[i] - 1] if grown[i] else None
            if last is not None and grown[i] <= r and policy.diverged(last, sim.metric) is not None:
                stop = "diverged"  # the trunk diverged inside this prefix: every leaf that needs it stops at once
                break
            if grown[i] < r:
                cut = True  # the budget ran out while the trunk grew
                break
            probe = trunk[r - 1].get(COOLDOWN_PREFIX + sim.metric)
            if probe is None or not math.isfinite(probe):
                raise ValueError(f"seed {grid.seed}: trunk {i} has no finite probe after {r} epochs")
            if (i, r) not in probed:
                probed.add((i, r))
                steps = trunk[r - 1][COOLDOWN_STEPS] / sim.steps_per_epoch
                run.probe += steps
                run.spent += steps
                policy.record_probe(str(i), r, sim.sign * probe)
            if policy.prefix(str(i), r).stop:
                stop = "prefix"
                break
        signals: dict[int, float] = {}
        if stop is None and not cut:
            rungs = set(leaf_rungs(sim.epochs, t, sim.tree))
            for result in history[t:]:
                if over():
                    cut = True
                    break
                run.spent += 1.0
                if policy.diverged(result, sim.metric) is not None:
                    stop = "diverged"
                    break
                depth = int(result["epoch"]) + 1 - t
                if depth in rungs and not result["last_epoch"]:
                    signals[depth] = sim.sign * result[sim.metric]
                    if policy.leaf(number, t, depth, signals[depth]).stop:
                        stop = "leaf"
                        break
                if result["last_epoch"]:
                    break
        value = None if stop or cut else completed_value(history, sim.epochs, sim.metric)
        tell(configs, None if value is None else sim.sign * value)
        run.outcomes.append(stop)
        if stop:
            run.stops[stop] = run.stops.get(stop, 0) + 1
            if stop != "diverged":
                run.first_stop = min(run.first_stop, run.spent)
        if grid.top[c] and not cut:
            run.seen_top += 1
            run.stopped_top += stop is not None
            if stop:
                run.top_stops[stop] = run.top_stops.get(stop, 0) + 1
        if value is not None:
            policy.complete({r: str(i) for r in candidates if r <= t}, t, signals, sim.sign * value)
            run.complete(sim.sign * value)
        idle = idle + 1 if run.spent == before else 0
    return run


def run_oracle(grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
    """A reference for the tree's speed-up (not a method): the same stream and the tree's sharing, but every
    configuration that would not improve the incumbent is stopped before it costs anything, and probes are free.
    One pass over the grid suffices: after it the incumbent is the grid's best."""
    if grid.entry is None:
        raise ValueError("the oracle reads the table's trunks and leaves: SeedGrid.entry is missing")
    leaves = grid.entry["leaves"]
    grown = [0] * len(grid.entry["trunks"])
    run = Run(grid.seed, sampler_seed)
    configs = stream(len(grid.finals), grid.seed, sampler_seed)
    for _ in range(len(grid.finals)):
        c = next(configs)
        run.trials += 1
        i, t = int(leaves[c]["trunk"]), int(leaves[c]["transition_epoch"])
        if grid.diverged[c] or grid.finals[c] <= run.best:
            continue
        run.spent += max(0, t - grown[i]) + (sim.epochs - t)
        grown[i] = max(grown[i], t)
        if run.spent > sim.budget + 1e-9:
            break
        run.complete(float(grid.finals[c]))
    return run


@dataclass(frozen=True)
class Sim:
    epochs: int
    trials: int
    metric: str
    sign: float
    steps_per_epoch: int
    tree: TreeOptions = TreeOptions()  # the tree's options: its defaults on every workload
    sampler: str = "random"  # or "tpe" (TPEStream)
    dims: tuple[int, int, int] = (0, 0, 0)  # the grid's axes: phase-1 lrs, transitions, phase-2 settings

    @property
    def budget(self) -> int:
        return self.trials * self.epochs


def simulate(method: str, grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
    if method == "tree":
        return run_tree(grid, sampler_seed, sim)
    if method == "top1epoch":
        return run_top1epoch(grid, sampler_seed, sim)
    return run_policy(method, grid, sampler_seed, sim)


# ---- curves and statistics -------------------------------------------------------------------------------------


def regret_curve(run: Run, grid: SeedGrid, budget: int) -> np.ndarray:
    """Normalized regret of the incumbent after each whole epoch of budget (1 .. budget)."""
    curve = np.full(budget, math.inf)
    for spent, best in run.events:
        curve[min(budget, math.ceil(spent - 1e-9)) - 1:] = grid.regret(best)
    return curve


def budget_to(curve: np.ndarray, level: float) -> float:
    """The first budget (epochs) at which a median curve is at or below ``level``; inf: never."""
    hit = np.nonzero(curve <= level + 1e-12)[0]
    return float(hit[0] + 1) if len(hit) else math.inf


def speedups(curves: Mapping[str, np.ndarray], naive: str | None) -> dict[str, dict[str, float]]:
    """Per method, from the runs' regret curves (runs x budget): its budget to full's final median regret, and
    the speed-ups vs full and vs ``naive``."""
    medians = {m: np.median(c, axis=0) for m, c in curves.items()}
    level = float(medians["full"][-1])
    budgets = {m: budget_to(curve, level) for m, curve in medians.items()}
    # Python's float division: never / never is NaN (undefined), x / never is 0, never / x is inf.
    return {m: {"budget": budgets[m], "vs_full": budgets["full"] / budgets[m],
                "vs_naive": budgets[naive] / budgets[m] if naive is not None else math.nan} for m in curves}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def mean_ci(values: Sequence[float], rng: np.random.Generator) -> dict[str, Any]:
    """Mean over seeds (NaN left out) and its 95% bootstrap interval over seeds."""
    x = np.array([v for v in values if math.isfinite(v)])
    if not len(x):
        return {"mean": None, "ci": [None, None], "seeds": 0}
    boot = x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))].mean(axis=1)
    return {"mean": float(x.mean()), "ci": [percentile(boot, 2.5), percentile(boot, 97.5)], "seeds": int(len(x))}


# ---- the pre-checks -------------------------------------------------------------------------------------------


def precheck_p1(grids: Sequence[SeedGrid]) -> dict[str, Any]:
    finals = np.stack([g.finals for g in grids])  # seeds x configurations
    s = finals.shape[0]
    # The noise of the schedules worth picking: the upper half by mean final. Over every configuration, those that
    # diverge on some seeds only (a seed's lr_crit moves the grid's absolute lrs) would swamp it.
    upper = finals[:, finals.mean(0) >= np.median(finals.mean(0))]
    fitted = upper.mean(1, keepdims=True) + upper.mean(0, keepdims=True) - upper.mean()
    noise = float(math.sqrt(((upper - fitted) ** 2).sum() / max(1, (s - 1) * (upper.shape[1] - 1))))
    fitted_all = finals.mean(1, keepdims=True) + finals.mean(0, keepdims=True) - finals.mean()
    noise_all = float(math.sqrt(((finals - fitted_all) ** 2).sum() / max(1, (s - 1) * (finals.shape[1] - 1))))
    gap = float(np.mean([g.target - g.median for g in grids]))
    reliability = spearman(finals[0::2].mean(0).tolist(), finals[1::2].mean(0).tolist()) if s >= 2 else math.nan
    # One seed has no seed noise to measure (and no halves): not judged, so not ok.
    holds = s >= 2 and gap >= P1_GAP * noise and math.isfinite(reliability) and reliability >= P1_RELIABILITY
    return {"ok": bool(holds), "gap": gap, "noise_sd": noise if s >= 2 else math.nan,
            "noise_sd_all_configurations": noise_all if s >= 2 else math.nan,
            "gap_over_noise": gap / noise if s >= 2 and noise > 0 else math.nan, "split_half_spearman": reliability}


def precheck_p2(grids: Sequence[SeedGrid], full_runs: Sequence[Run], epochs: int) -> dict[str, Any]:
    expected = float(np.mean([(len(g.finals) + 1) / (int(g.top.sum()) + 1) for g in grids]))
    by_seed = {g.seed: g for g in grids}
    needed = []
    for run in full_runs:  # completed full trials until the incumbent reaches the target (inf: never)
        reach = [i + 1 for i, (_, best) in enumerate(run.events) if best >= by_seed[run.seed].target]
        needed.append(reach[0] if reach else math.inf)
    return {"ok": bool(expected >= P2_TRIALS), "expected_full_trials": expected,
            "simulated_full_trials_median": float(np.median(needed)) if needed else None,
            "top_configurations_per_seed": float(np.mean([g.top.sum() for g in grids])),
            "configurations": len(grids[0].finals)}


def precheck_p3(grids: Sequence[SeedGrid], runs: Mapping[str, Sequence[Run]], naive: str | None,
                epochs: int, metric: str, sign: float, rng: np.random.Generator) -> dict[str, Any]:
    p_stop = {m: p_stop_top5(runs[m]) for m in NAIVE if m in runs}
    rungs = EarlyStopping(Policy.ASHA).rungs(epochs)
    raw = {}
    for rung in rungs:
        per_seed = []
        for g in grids:
            at = [(sign * h[rung - 1][metric], f) for h, f in zip(g.histories, g.finals, strict=True)
                  if len(h) >= rung and math.isfinite(h[rung - 1][metric])]
            per_seed.append(spearman([a for a, _ in at], [f for _, f in at]))
        raw[str(rung)] = mean_ci(per_seed, rng)
    stop = p_stop.get(naive) if naive is not None else None
    return {"ok": bool(stop is not None and stop >= P3_STOP), "naive": naive, "p_stop_top5": p_stop,
            "raw_spearman_at_epochs": raw}


def precheck_p4(table: Mapping[str, Any], grids: Sequence[SeedGrid], metric: str, sign: float,
                rng: np.random.Generator) -> dict[str, Any]:
    transitions = table["meta"]["space"]["transitions"]
    at: dict[str, Any] = {}
    for t in transitions:
        probe_rho, raw_rho = [], []
        for g in grids:
            entry = table["seeds"][str(g.seed)]
            rows = []
            for i, trunk in enumerate(entry["trunks"]):
                history = trunk["history"]
                if len(history) < t:
                    continue
                subtree = [c for c, leaf in enumerate(entry["leaves"])
                           if leaf["trunk"] == i and leaf["transition_epoch"] >= t]
                probe = history[t - 1].get(COOLDOWN_PREFIX + metric)
                raw = history[t - 1].get(metric)
                if subtree and probe is not None and math.isfinite(probe) and math.isfinite(raw):
                    rows.append((sign * probe, sign * raw, float(g.finals[subtree].max())))
            probe_rho.append(spearman([r[0] for r in rows], [r[2] for r in rows]))
            raw_rho.append(spearman([r[1] for r in rows], [r[2] for r in rows]))
        at[str(t)] = {"probe": mean_ci(probe_rho, rng), "raw": mean_ci(raw_rho, rng)}
    first = at[str(transitions[0])]["probe"]
    holds = first["mean"] is not None and first["mean"] >= P4_RHO and first["ci"][0] is not None \
        and first["ci"][0] > 0
    return {"ok": bool(holds), "at_transition": at}


def p_stop_top5(runs: Sequence[Run]) -> float | None:
    seen = sum(r.seen_top for r in runs)
    return sum(r.stopped_top for r in runs) / seen if seen else None


# ---- the table: reuse or build ----------------------------------------------------------------------------------


def find_or_build(args: argparse.Namespace, grid: tree_table.Grid) -> tuple[Path, dict[str, Any]]:
    wanted = {"workload": args.workload, "params": args.params, "space": asdict(grid), "epochs": args.epochs}
    if args.table:
        path = Path(args.table)
        if path.exists():
            return path, tree_table.load(path)
    else:
        for path in sorted(TABLES.glob("*.json.gz")):
            table = tree_table.load(path)
            meta = table["meta"]
            if {k: meta[k] for k in wanted} == json.loads(json.dumps(wanted)) and len(meta["seeds"]) >= args.seeds:
                return path, table
        digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:8]
        path = TABLES / f"{args.workload}-{digest}.json.gz"
    print(f"no table for {json.dumps(wanted)} with {args.seeds} seeds: building {path}", flush=True)
    setup = tree_table.make_setup(args.workload, args.params, grid, args.epochs)
    return path, tree_table.build(setup, range(args.seeds), path, args.workers, log=sys.stdout)


# ---- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="ps10")
    parser.add_argument("--params", default="{}", help="the workload's params as JSON")
    parser.add_argument("--space", help="a grid as a JSON file (tree_table.Grid's keys; default: Grid.default)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=10, help="data seeds (the table's first)")
    parser.add_argument("--sampler-seeds", type=int, default=5, help="random-search streams per data seed")
    parser.add_argument("--trials", type=int, default=40, help="budget = trials x epochs per run")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--metric", default="val_accuracy")
    parser.add_argument("--table", help="the table to use (built there if missing)")
    parser.add_argument("--workers", type=int, default=2, help="processes, if a table is built")
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="random search (paired streams) or the service's TPE (each method its own stream)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "full" not in args.methods:
        parser.error(f"--methods: a subset of {','.join(METHODS)} that includes full; unknown: {unknown}")
    args.methods = [m for m in METHODS if m in args.methods]
    if args.sampler == "tpe" and "top1epoch" in args.methods:
        parser.error("--methods: top1epoch reads a batch of configurations ahead of any result: random search only")
    if args.epochs < 3 or min(args.seeds, args.sampler_seeds, args.trials, args.workers) < 1:
        parser.error("--epochs must be >= 3; --seeds, --sampler-seeds, --trials, --workers >= 1")
    reported = workloads().get(args.workload)
    if reported is None:
        parser.error(f"--workload: unknown {args.workload!r}; installed: {sorted(workloads())}")
    if args.metric not in reported.epoch_metrics():
        parser.error(f"--metric: {args.workload} reports {sorted(reported.epoch_metrics())} every epoch")
    args.sign = 1.0 if reported.epoch_metrics()[args.metric] else -1.0
    try:
        args.params = json.loads(args.params)
        args.grid = tree_table.Grid.parse(json.loads(Path(args.space).read_text()) if args.space else {},
                                          args.epochs)
    except (OSError, ValueError, SpecError) as err:
        parser.error(f"--params / --space: {err}")
    return args


def fmt(x: float | None, spec: str = ".2f", infinite: str = "never") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return infinite if math.isinf(x) else format(x, spec)


def fmt_ratio(stats: Mapping[str, Any] | None) -> str:
    """A speed-up: inf where only the method reaches r*, 0 where only the reference does."""
    if stats is None:
        return "ruled out"
    lo, hi = stats["ci"]
    point = "undefined" if math.isnan(stats["median"]) else f"{fmt(stats['median'], infinite='inf')}x"
    return f"{point} [{fmt(lo, infinite='inf')}, {fmt(hi, infinite='inf')}]"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    path, table = find_or_build(args, args.grid)
    meta = table["meta"]
    seeds = sorted(int(s) for s in table["seeds"])[:args.seeds]  # a build cut short holds the seeds it finished
    if len(seeds) < args.seeds:
        raise SystemExit(f"{path}: {len(seeds)} seeds ({seeds}), fewer than --seeds {args.seeds}; rebuild it with "
                         f"more, or ask for fewer")
    space = tree_table.Grid.parse(meta["space"], args.epochs)
    sim = Sim(args.epochs, args.trials, args.metric, args.sign, int(meta["steps_per_epoch"]), sampler=args.sampler,
              dims=(len(space.phase1_lr), len(space.transitions), len(space.phase2)))
    grids = [seed_grid(table, s, args.metric, args.sign) for s in seeds]
    n, trunks = len(grids[0].finals), len(meta["space"]["phase1_lr"])
    print(f"table: {path} ({path.stat().st_size / 1e6:.2f} MB): {meta['workload']} {json.dumps(meta['params'])}, "
          f"{meta['epochs']} epochs, grid {json.dumps(meta['space'])} = {n} configurations "
          f"({trunks} trunks); seeds {seeds} of {meta['seeds']}; built at {meta['commit']}"
          f"{' (dirty tree)' if meta['dirty'] else ''} in {meta['seconds']:.0f} s wall with {meta['workers']} "
          f"processes ({sum(meta['seed_seconds'].values()):.0f} s over seeds); rebuild: {meta['command']}")
    sampled = ("random search (a permutation of the grid per pass, the same stream for every method)"
               if args.sampler == "random" else "the service's TPE (each method's own stream, told its outcomes: not "
                                                "paired)")
    print(f"simulation: {sampled}, "
          f"{args.sampler_seeds} sampler seeds x {len(seeds)} data seeds = {args.sampler_seeds * len(seeds)} runs "
          f"per method; budget {args.trials} trials x {args.epochs} epochs = {sim.budget} epochs per run; metric "
          f"{args.metric} ({'max' if args.sign > 0 else 'min'}); methods {','.join(args.methods)}", flush=True)

    runs: dict[str, list[Run]] = {m: [] for m in args.methods}
    for m, g, k in itertools.product(args.methods, grids, range(args.sampler_seeds)):
        runs[m].append(simulate(m, g, k, sim))
    by_seed = {g.seed: g for g in grids}
    curves = {m: np.stack([regret_curve(r, by_seed[r.seed], sim.budget) for r in runs[m]]) for m in args.methods}
    point = speedups(curves, None)
    naive_present = [m for m in NAIVE if m in args.methods]
    # The better naive policy: the one that reaches r* sooner; where neither does, the lower final regret.
    naive = min(naive_present, key=lambda m: (point[m]["budget"], float(np.median(curves[m][:, -1])))) \
        if naive_present else None
    point = speedups(curves, naive)

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    prechecks = {
        "P1": precheck_p1(grids),
        "P2": precheck_p2(grids, runs["full"], args.epochs),
        "P3": precheck_p3(grids, runs, naive, args.epochs, args.metric, args.sign, rng) if naive else
        {"ok": False, "note": "median/asha not run"},
        "P4": precheck_p4(table, grids, args.metric, args.sign, rng),
    }
    ruled_out = [p for p in ("P1", "P2") if not prechecks[p]["ok"]]

    # Block bootstrap over data seeds: each resample keeps every sampler seed's runs of the seeds it draws.
    index = {s: [i for i, r in enumerate(runs["full"]) if r.seed == s] for s in seeds}
    boot: dict[str, dict[str, list[float]]] = {m: {"vs_full": [], "vs_naive": []} for m in args.methods}
    for draw in rng.integers(0, len(seeds), size=(RESAMPLES, len(seeds))):
        rows = [i for d in draw for i in index[seeds[d]]]
        for m, figures in speedups({m: c[rows] for m, c in curves.items()}, naive).items():
            boot[m]["vs_full"].append(figures["vs_full"])
            boot[m]["vs_naive"].append(figures["vs_naive"])

    def stats(m: str, key: str) -> dict[str, Any] | None:
        if ruled_out or (key == "vs_naive" and naive is None):
            return None
        values = np.array([v for v in boot[m][key] if not math.isnan(v)])
        ci = [percentile(values, 2.5), percentile(values, 97.5)] if len(values) else [None, None]
        return {"median": point[m][key], "ci": ci, "undefined_resamples": int(RESAMPLES - len(values))}

    summary: dict[str, dict[str, Any]] = {}
    for m in args.methods:
        finals = curves[m][:, -1]
        spent = sum(r.spent for r in runs[m])
        summary[m] = {
            "speedup_vs_full": stats(m, "vs_full"),
            "speedup_vs_naive": stats(m, "vs_naive"),
            "final_regret": float(np.median(finals)),
            "reach": float(np.mean([r.best >= by_seed[r.seed].target for r in runs[m]])),
            "p_stop_top5": p_stop_top5(runs[m]) if m != "full" else 0.0,
            "probe_share": sum(r.probe for r in runs[m]) / spent if spent else 0.0,
            "budget_to_full_final_regret": point[m]["budget"],
            "trials_per_run": float(np.mean([r.trials for r in runs[m]])),
            "completed_per_run": float(np.mean([r.completed for r in runs[m]])),
        }

    print_prechecks(prechecks)
    print(f"\nsummary over {len(runs['full'])} runs per method (speed-up: the budget full's median regret curve needs "
          f"to reach its own final median regret r* = {fmt(float(np.median(curves['full'][:, -1])), '.3f')}, over "
          f"the method's; 95% block bootstrap over data seeds; naive = the better of median/asha: {naive}):")
    if ruled_out:
        print(f"  no speed-ups: pre-check {' and '.join(ruled_out)} failed (the premise does not hold here)")
    print(f"  {'method':<15}{'vs full':>24}{'vs naive':>24}{'budget→r*':>11}{'regret':>8}{'reach':>7}"
          f"{'P(stop|top5%)':>14}{'probes':>8}{'trials/run':>11}")
    for m in args.methods:
        row = summary[m]
        print(f"  {m:<15}{fmt_ratio(row['speedup_vs_full']):>24}{fmt_ratio(row['speedup_vs_naive']):>24}"
              f"{fmt(row['budget_to_full_final_regret'], '.0f'):>11}{row['final_regret']:>8.3f}{row['reach']:>7.2f}"
              f"{fmt(row['p_stop_top5']):>14}{100 * row['probe_share']:>7.1f}%{row['trials_per_run']:>11.1f}")
    shares = "  ".join(f"{int(100 * q)}%" for q in CURVE_POINTS)
    print(f"median normalized regret at {shares} of the budget:")
    for m in args.methods:
        median = np.median(curves[m], axis=0)
        print(f"  {m:<15}" + "  ".join(fmt(float(median[max(0, round(q * sim.budget) - 1)]), '.3f')
                                       for q in CURVE_POINTS))
    reference: dict[str, Any] | None = None
    if "tree" in args.methods:
        tree_runs = runs["tree"]
        stops = {k: sum(r.stops.get(k, 0) for r in tree_runs) / len(tree_runs) for k in ("prefix", "leaf", "diverged")}
        top = {k: sum(r.top_stops.get(k, 0) for r in tree_runs) / len(tree_runs) for k in ("prefix", "leaf")}
        oracle_budget = math.nan  # the oracle reads random search's paired stream
        if args.sampler == "random":
            oracle = np.stack([regret_curve(run_oracle(by_seed[r.seed], r.sampler_seed, sim), by_seed[r.seed],
                                            sim.budget) for r in runs["full"]])
            oracle_budget = budget_to(np.median(oracle, axis=0), float(np.median(curves["full"][:, -1])))
        first_stop = float(np.median([r.first_stop for r in tree_runs]))
        reference = {"stops_per_run": stops, "top5_stops_per_run": top,
                     "completed_per_run": summary["tree"]["completed_per_run"],
                     "first_gated_stop_median_epochs": first_stop,
                     "oracle_budget": oracle_budget, "oracle_vs_full": point["full"]["budget"] / oracle_budget}
        print(f"tree: per run {stops['prefix']:.1f} trials stopped by a prefix decision, {stops['leaf']:.1f} by a "
              f"leaf decision ({top['prefix']:.1f} and {top['leaf']:.1f} of them top-5%), {stops['diverged']:.1f} "
              f"diverged, {reference['completed_per_run']:.1f} completed; the "
              f"first gated stop after a median {fmt(first_stop, '.0f')} epochs (the gates' warm-up: no stop before "
              f"{sim.tree.gate_min_pairs} completed leaves agree); reference, not a ceiling on every policy (an "
              f"oracle with the tree's sharing that stops, for free, every trial that would not improve the "
              f"incumbent): " + (f"budget to r* {fmt(oracle_budget, '.0f')}, "
                                 f"{fmt(reference['oracle_vs_full'], infinite='inf')}x vs full"
                                 if args.sampler == "random" else "random search only"))
        goals_met = tree_goals(summary, prechecks, naive, ruled_out)
        print("goals (issue 23), the tree with its defaults " + json.dumps(asdict(sim.tree)) + ":")
        for goal in goals_met:
            print(f"  {goal['goal']}: {goal['figures']}: "
                  f"{'ruled out' if goal['met'] is None else 'met' if goal['met'] else 'NOT met'}")
        reference["goals"] = goals_met
    print(f"wall {time.perf_counter() - started:.0f} s")

    document = {"settings": {k: v for k, v in vars(args).items() if k != "grid"}, "table": {"path": str(path),
                **meta}, "naive": naive, "prechecks": prechecks, "summary": summary, "tree": reference,
                "median_regret_curves": {m: np.median(curves[m], axis=0).tolist() for m in args.methods}}
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(document), indent=1))
        print(f"wrote {args.json}")
    return document


def tree_goals(summary: Mapping[str, Mapping[str, Any]], prechecks: Mapping[str, Any], naive: str | None,
               ruled_out: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's goals for the tree, each met (True/False) or ruled out (None) with the figures it read."""
    tree, full = summary["tree"], summary["full"]
    out: list[dict[str, Any]] = []

    def ratio(stats: Mapping[str, Any]) -> tuple[float, float | None]:
        return stats["median"], stats["ci"][0]

    if ruled_out:
        out.append({"goal": "tree vs full >= 3x, lower bound > 1", "met": None,
                    "figures": f"pre-check {' and '.join(ruled_out)} failed"})
    else:
        x, lo = ratio(tree["speedup_vs_full"])
        out.append({"goal": "tree vs full >= 3x, lower bound > 1", "met": bool(x >= 3 and lo is not None and lo > 1),
                    "figures": f"{fmt(x, infinite='inf')}x, lower bound {fmt(lo, infinite='inf')}"})
    if ruled_out or naive is None:
        out.append({"goal": "tree vs the better naive policy", "met": None,
                    "figures": f"pre-check {' and '.join(ruled_out)} failed" if ruled_out else "median/asha not run"})
    else:
        x, lo = ratio(tree["speedup_vs_naive"])
        if prechecks["P3"]["ok"]:
            out.append({"goal": f"tree vs {naive} >= 1.5x, lower bound > 1 (P3 holds: the naive pruners fail)",
                        "met": bool(x >= 1.5 and lo is not None and lo > 1),
                        "figures": f"{fmt(x, infinite='inf')}x, lower bound {fmt(lo, infinite='inf')}"})
        else:  # the reverse ratio's upper bound is 1 / the lower bound
            upper = math.inf if not lo else 1 / lo
            out.append({"goal": f"tree no worse than {naive} (P3 fails): the reverse ratio's upper bound < 1.1",
                        "met": bool(upper < 1.1), "figures": f"upper bound {fmt(upper, infinite='inf')}"})
    out.append({"goal": "final regret within 0.02 of full's", "met": bool(tree["final_regret"] <= full["final_regret"]
                                                                          + 0.02),
                "figures": f"{tree['final_regret']:.3f} vs full {full['final_regret']:.3f}"})
    out.append({"goal": "reach >= full's - 0.05", "met": bool(tree["reach"] >= full["reach"] - 0.05),
                "figures": f"{tree['reach']:.2f} vs full {full['reach']:.2f}"})
    naive_stops = {m: summary[m]["p_stop_top5"] for m in NAIVE
                   if m in summary and summary[m]["p_stop_top5"] is not None}
    if naive_stops and tree["p_stop_top5"] is not None:
        others = ", ".join(f"{m} {p:.2f}" for m, p in naive_stops.items())
        out.append({"goal": "P(stop | top-5%) at most half the naive policies'",
                    "met": bool(tree["p_stop_top5"] <= 0.5 * min(naive_stops.values())),
                    "figures": f"{tree['p_stop_top5']:.2f} vs {others}"})
    else:
        out.append({"goal": "P(stop | top-5%) at most half the naive policies'", "met": None,
                    "figures": "median/asha not run"})
    out.append({"goal": "probes <= 5% of the epochs", "met": bool(tree["probe_share"] <= 0.05),
                "figures": f"{100 * tree['probe_share']:.1f}%"})
    return out


def print_prechecks(prechecks: Mapping[str, Any]) -> None:
    print("\npre-checks (from the table, before any ratio):")
    p1, p2, p3, p4 = (prechecks[k] for k in ("P1", "P2", "P3", "P4"))
    print(f"  P1 the schedule matters beyond seed noise: gap (target - grid median) {p1['gap']:.4f} = "
          f"{fmt(p1['gap_over_noise'], '.1f')} x noise SD {fmt(p1['noise_sd'], '.4f')} of the upper half (needs >= "
          f"{P1_GAP:g}; over all configurations {fmt(p1['noise_sd_all_configurations'], '.4f')}), "
          f"split-half Spearman "
          f"{fmt(p1['split_half_spearman'])} (needs >= {P1_RELIABILITY:g}): ok {ok(p1['ok'])}")
    print(f"  P2 headroom: random search needs {p2['expected_full_trials']:.1f} full trials on average to reach the "
          f"target ({p2['top_configurations_per_seed']:.1f} of {p2['configurations']} configurations per seed at or "
          f"above it; simulated full runs: median {fmt(p2['simulated_full_trials_median'], '.0f')} completed trials) "
          f"(needs >= {P2_TRIALS:g}): ok {ok(p2['ok'])}")
    if "p_stop_top5" in p3:
        stops = ", ".join(f"{m} {fmt(v)}" for m, v in p3["p_stop_top5"].items())
        raw = ", ".join(f"after {e}: {fmt(v['mean'])} [{fmt(v['ci'][0])}, {fmt(v['ci'][1])}]"
                        for e, v in p3["raw_spearman_at_epochs"].items())
        print(f"  P3 the naive pruners fail: P(stop | top-5%) {stops} (the better, {p3['naive']}, needs >= "
              f"{P3_STOP:g}); Spearman of the raw value with the final {raw}: ok {ok(p3['ok'])}")
    else:
        print(f"  P3 the naive pruners fail: {p3['note']}: ok NO")
    rows = "; ".join(f"t={t}: probe {fmt(v['probe']['mean'])} [{fmt(v['probe']['ci'][0])}, "
                     f"{fmt(v['probe']['ci'][1])}], raw {fmt(v['raw']['mean'])}"
                     for t, v in p4["at_transition"].items())
    print(f"  P4 the signal is valid (Spearman over trunks of the value after t epochs with the best final of their "
          f"leaves from t on): {rows} (the first needs >= {P4_RHO:g}, lower bound > 0): ok {ok(p4['ok'])}")


if __name__ == "__main__":
    main()
