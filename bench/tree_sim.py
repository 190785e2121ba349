"""Simulate search methods over a tabulated schedule tree (``bench/tree_table.py``), after checking the premise
(issue 23, step 1: the pre-checks, with today's methods simulated; the tree itself is step 2).

Each method runs over the table exactly as it runs live, one trial after another: every trial's epoch results
are what a live trial of its configuration reports (``tree_table.trial_history``: the same metrics, and the
cooldown probe exactly where its ``ProbeSchedule`` would run one), fed to the service's own
``workers.early_stopping.EarlyStopper``; epochs and probe steps are charged as ``bench/search_efficiency.py``'s
ledger charges them (an epoch is 1, a probe ``cooldown_steps / steps_per_epoch``), until ``--trials`` x epochs
are spent (the trial running then is cut). A trial counts as a result when it trains to its last epoch with a
finite training loss; the incumbent is the best such final value so far.

- ``full``: every trial to its last epoch; ``median``, ``asha``: the naive policies at their defaults;
  ``schedule_aware``: today's policy (cooldown probes, no judgement inside the large-step phase), a reference
  until the tree retires it; ``top1epoch``: ``search_efficiency.top1_sizes`` one-epoch evaluations, the best
  continued (retraining from scratch is exact, so only epochs past the first are charged).
- Sampler: random search, the same configuration stream for every method (paired): per (data seed, sampler
  seed) a random permutation of the grid, then another, and so on. (``branching`` is left out: it needs TPE's
  top trials and is retired by the tree; TPE over the table is not simulated here.)

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
[--sampler-seeds 5] [--trials 40] [--methods full,median,asha,top1epoch,schedule_aware] [--json OUT]``. The table:
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
import tree_table
from scipy.stats import spearmanr
from search_efficiency import jsonable, ok, percentile, top1_sizes

from phasetune.search_spaces import SpecError
from phasetune.workers.early_stopping import (
    COOLDOWN_PREFIX,
    COOLDOWN_STEPS,
    EarlyStopper,
    EarlyStopping,
    Policy,
    ProbeSchedule,
)
from phasetune.workers.workloads import workloads

METHODS = ("full", "median", "asha", "top1epoch", "schedule_aware")
POLICIES = {"full": Policy.NONE, "median": Policy.MEDIAN, "asha": Policy.ASHA,
            "schedule_aware": Policy.SCHEDULE_AWARE}
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
    """One data seed: each configuration's live histories (without probes, and with schedule_aware's) and finals."""

    seed: int
    histories: list[list[dict[str, Any]]]
    probed: list[list[dict[str, Any]]]
    finals: np.ndarray  # signed (higher is better); a diverged configuration: the seed's worst finite final
    diverged: np.ndarray  # bool per configuration
    target: float  # signed top-5% level
    best: float
    median: float
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
    probed = [tree_table.trial_history(entry, c, probes=ProbeSchedule(EarlyStopping(Policy.SCHEDULE_AWARE), epochs))
              for c in range(n)]
    values = [completed_value(h, epochs, metric) for h in histories]
    finite = [sign * v for v in values if v is not None]
    if not finite:
        raise ValueError(f"seed {seed}: every configuration diverged")
    finals = np.array([sign * v if v is not None else min(finite) for v in values])
    ordered = np.sort(finals)[::-1]
    target = float(ordered[max(1, math.ceil(TOP_SHARE * n)) - 1])
    return SeedGrid(seed, histories, probed, finals, np.array([v is None for v in values]), target,
                    float(ordered[0]), float(np.median(finals)))


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

    def complete(self, signed: float) -> None:
        self.completed += 1
        self.best = max(self.best, signed)
        self.events.append((self.spent, self.best))


def stream(n: int, seed: int, sampler_seed: int) -> Iterator[int]:
    """Random search over the grid: permutations of it, one after another (paired: every method reads it)."""
    rng = np.random.default_rng([seed, sampler_seed])
    while True:
        yield from (int(c) for c in rng.permutation(n))


def run_policy(method: str, grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
    """``full``, ``median``, ``asha``, ``schedule_aware``: trials one after another through the service's stopper."""
    config = EarlyStopping(POLICIES[method])
    stopper = EarlyStopper(config, sim.epochs, sim.metric, sim.sign > 0)
    run = Run(grid.seed, sampler_seed)
    source = grid.probed if config.policy is Policy.SCHEDULE_AWARE else grid.histories
    configs = stream(len(grid.finals), grid.seed, sampler_seed)
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


@dataclass(frozen=True)
class Sim:
    epochs: int
    trials: int
    metric: str
    sign: float
    steps_per_epoch: int

    @property
    def budget(self) -> int:
        return self.trials * self.epochs


def simulate(method: str, grid: SeedGrid, sampler_seed: int, sim: Sim) -> Run:
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
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "full" not in args.methods:
        parser.error(f"--methods: a subset of {','.join(METHODS)} that includes full; unknown: {unknown}")
    args.methods = [m for m in METHODS if m in args.methods]
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
    sim = Sim(args.epochs, args.trials, args.metric, args.sign, int(meta["steps_per_epoch"]))
    grids = [seed_grid(table, s, args.metric, args.sign) for s in seeds]
    n, trunks = len(grids[0].finals), len(meta["space"]["phase1_lr"])
    print(f"table: {path} ({path.stat().st_size / 1e6:.2f} MB): {meta['workload']} {json.dumps(meta['params'])}, "
          f"{meta['epochs']} epochs, grid {json.dumps(meta['space'])} = {n} configurations "
          f"({trunks} trunks); seeds {seeds} of {meta['seeds']}; built at {meta['commit']}"
          f"{' (dirty tree)' if meta['dirty'] else ''} in {meta['seconds']:.0f} s wall with {meta['workers']} "
          f"processes ({sum(meta['seed_seconds'].values()):.0f} s over seeds); rebuild: {meta['command']}")
    print(f"simulation: random search (a permutation of the grid per pass, the same stream for every method), "
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
    print("goals (issue 23): they are the tree's (step 2), not simulated here; these are the references it meets."
          f"\nwall {time.perf_counter() - started:.0f} s")

    document = {"settings": {k: v for k, v in vars(args).items() if k != "grid"}, "table": {"path": str(path),
                **meta}, "naive": naive, "prechecks": prechecks, "summary": summary,
                "median_regret_curves": {m: np.median(curves[m], axis=0).tolist() for m in args.methods}}
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(document), indent=1))
        print(f"wrote {args.json}")
    return document


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
