"""Search efficiency of early stopping: how many training epochs (and wall seconds) each way of searching a schedule
space needs before its best deployable trial is as good as exhaustive TPE's typical result, and what it ends with.

Methods, run side by side in one invocation on the same search space, budget and study seeds:

- ``full``: TPE, every trial to its last epoch (phasetune without early stopping);
- ``median`` and ``asha``: TPE with the naive policies (``workers/early_stopping.py``, at their defaults);
- ``top1epoch``: train configurations for one epoch, keep the top k by that value and train those to the end (the
  cheap baseline Egele et al. 2023, arXiv 2307.15422, report to match multi-fidelity HPO);
- ``schedulefree``: what a user might pick instead of tuning a schedule: ``schedulefree.SGDScheduleFree`` at its
  defaults (momentum 0.9, no warmup, no weight decay) except lr, swept over learning rates for the same budget.

``schedule_aware`` and ``branching`` were retired (replaced by the schedule tree, simulated by ``bench/tree_sim.py``).

How a study runs. Per (method, study seed) one in-memory ``optuna.create_study`` with the service's TPE settings
(``TPESampler(seed=study seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5)``); trials run
one after another in the job's process through the service's own code: ``sample_schedule`` on the space with the
seed's units, ``build_plan``, ``build_workload`` with ``trial_seeds(study seed, SeedPolicy(), number)`` (every trial
of a study shares data, initial weights and batch order) and a ``WorkloadCache`` per job, ``workers.train.train``
(no cooldown probes), and after every epoch ``EarlyStopper.decide`` of the method's policy (then ``finish`` at the
trial's end). Optuna is told what the service tells it: every epoch's finite objective as ``trial.report(value,
epoch)``; its end is ``workers.optuna_study.trial_end`` of its last result, as in the service (stopped: PRUNED;
diverged, its training loss non-finite: FAIL however it stopped); an invalid sample FAIL. The service path
(Ray Tune, the searcher) is tested separately; this bench measures the search, not the orchestration.

Units. The regime probes (``workers.probing.run_probes``, curvature and LR range test) run once per study seed (the
seed changes data and initial weights), as the service's driver does once per study; every method of that seed
uses their ``lr_crit`` / ``lr_div``. The probes' seconds are printed, and counted in no method's figures (every
method pays them alike). ``--space`` is a schedule space as a study's ``schedule`` (a JSON file), by default
``default_space(epochs)`` (two phases: phase 1 lr in [0.1, 1] x lr_crit without momentum, phase 2 effective lr in
[0.001, 0.1] x lr_crit with momentum 0.9-0.99, the transition epoch in [0.2, 0.8] x epochs).

Budget. Total training epochs = ``--trials`` x ``--epochs`` (what ``full`` spends when no trial diverges). Every
method trains until the budget is spent, so a method that stops trials early runs more of them; a trial that
diverges (and so ends early) leaves budget for more, for every method alike. Validation passes are not counted as
epochs, but are in the wall seconds. The budget is checked after every epoch: the trial running when it is spent is
cut there (that trial is not completed), so a method never overshoots it.

Incumbent and target. A trial counts as a result only if it trained to its last epoch with a finite training loss:
its final objective value is then something a user could deploy (a pruned trial's partial value, a cut trial's or a
diverged trial's is not). At every such completion the job records (cumulative epochs, cumulative wall seconds, the
incumbent: the best of these values so far). Wall seconds run from the job's start, after the data and initial
model are built (once, in every job alike), and include sampling, training and evaluation. Target = the
median over study seeds of ``full``'s final best (a seed without a completed trial counts as the worst value); for an
even number of seeds the lower median (the worse of the two middle values): with the mean of the two, ``full``
itself would reach the target on exactly half the seeds and its median epochs-to-target would be infinite.
Per method and seed: ``epochs_to_target`` / ``seconds_to_target`` = the cumulative epochs / seconds at the first
completion whose incumbent reaches the target (>= for a maximized metric, <= for a minimized one); never reached:
``null`` in the JSON, infinity in the medians and ratios (the output says "never"). ``final_best``: the incumbent
after the whole budget (``null``: no completed trial).

Statistics over the study seeds (``--seeds``, at least 10 for the figures to mean anything):

- ratio vs a reference = median(reference's epochs_to_target) / median(the method's) ("how many times fewer";
  infinite when only the method reaches the target, 0 when only the reference does, undefined when neither
  does). References: ``full``, and the better (lower median epochs_to_target) of ``median`` / ``asha``. 95%
  interval: a paired percentile bootstrap over seeds (the same 2000 resamples of seed indices for every method and
  reference, from a fixed RNG seed); resamples in which the ratio is undefined are left out and counted.
- final regret = median over seeds of (the best final value any method found on that seed - the method's final
  best), signed so that a regret is >= 0 (infinite where the method completed no trial).
- mis-prune rate (``median``, ``asha``, ``top1epoch``; ``full`` is 0 by definition, ``schedulefree`` has none):
  per seed, the concrete schedule of ``full``'s best trial is trained once more, keeping every epoch's result.
  For each policy, those results are replayed into a deep copy of that method's ``EarlyStopper`` **as it stood at
  the end of the method's run** (its peers then, a fresh trial number): mis-pruned if a decision stops it after an
  epoch that ends at or before its first decay (``plan.decay_start_step()``; a plan without an LR drop decays at its
  end). For ``top1epoch``: mis-pruned if its
  1-epoch value falls outside that run's top k (k strictly better one-epoch values among the run's n). Rate =
  share of seeds (with a ``full`` result) where it would have been stopped.

``top1epoch``'s sizes, one rule for every workload: n = min(2 x trials, budget - (epochs - 1)) one-epoch
evaluations (TPE asks, as the other methods; each is told PRUNED after reporting its one epoch, so TPE learns from
the one-epoch values), then the configurations are continued in the order of their one-epoch values until the
budget is spent: k = floor((budget - n) / (epochs - 1)) of them complete, the next one is cut (where continued
trials diverge and leave budget, another round of n one-epoch evaluations follows; the mis-prune check ranks
against the first round's). A continued
configuration is retrained from scratch (exact: training is deterministic under the shared seed policy) and only
its epochs beyond the first are counted (epochs and wall seconds: the repeated first epoch's own seconds are
subtracted).

``schedulefree``'s sweep: learning rates drawn log-uniformly (``numpy`` seeded by the study seed's
``schedulefree`` stream) between the smallest and the largest absolute lr the space can give with the seed's units
(every searched parameter at either end, every choice, every phase: for the default space, 1e-4 x lr_crit to lr_crit),
trained ``--epochs`` each until the budget is spent (``--trials`` of them when none diverges). Same data, model,
initial weights and batch order as the other methods (``build_workload`` the same way, ``batch_order``); a small
training loop written here: ``optimizer.train()`` with ``model.train()`` for training, ``optimizer.eval()`` before
evaluating ``workload.evaluate(workload.data.val, "val")``; for a model with BatchNorm, the package README's caveat:
its running statistics recomputed at the evaluation point from up to 50 training batches (forward only, not
counted as epochs) before evaluating.

Parallelism: ``--workers`` processes (spawn; ``torch.set_num_threads(1)`` in each); jobs are the probes per seed,
then (method, seed), then the mis-prune replay per seed. ``--workers 1`` runs every job in this process.

Run: ``.venv/bin/python bench/search_efficiency.py [--workload digits] [--params JSON] [--space SPEC.json]
[--epochs 30] [--trials 80] [--seeds 10] [--methods full,median,asha,top1epoch,schedulefree]
[--metric val_accuracy] [--workers 2] [--json OUT]``. Needs the ``bench`` extra (``schedulefree``) for
``schedulefree``. Smoke: ``--epochs 4 --trials 4 --seeds 2 --methods full,asha,top1epoch --workers 1``.
fashion_mnist (a subset): ``--workload fashion_mnist --params '{"n_train": 2000, "n_val": 1000, "n_test": 500}'``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from phasetune.search_spaces import SpecError, build_plan, sample_schedule, validate_schedule
from phasetune.search_spaces.space import check_expandable
from phasetune.workers.early_stopping import EarlyStopper, EarlyStopping
from phasetune.workers.optuna_study import TrialOutcome, sampler_for, trial_end
from phasetune.workers.seeding import SeedPolicy, batch_order, stream_seed, trial_seeds
from phasetune.workers.spec import SamplerSpec
from phasetune.workers.study_attrs import LAST_EPOCH
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload, steps_per_epoch, workloads
from phasetune.workers.workloads.cache import WorkloadCache

METHODS = ("full", "median", "asha", "top1epoch", "schedulefree")
POLICIES = {"full": "none", "median": "median", "asha": "asha"}
NAIVE = ("median", "asha")
MISPRUNE_METHODS = ("median", "asha", "top1epoch")


def default_space(epochs: int) -> dict[str, Any]:
    """Two regimes, both below the stability edge: phase 1 SGD without momentum at [0.1, 1] x lr_crit, phase 2
    at an effective lr of [0.001, 0.1] x lr_crit with a high momentum, the transition in [0.2, 0.8] x epochs.

    Not the ``regimes`` preset: its phase 1 starts at lr_crit (the full-batch edge), where minibatch SGD on
    digits diverges in nearly every trial, which would leave every method nothing to compare."""
    return {
        "family": "phases",
        "phases": [
            {"optimizer": "sgd", "lr": {"low": 0.1, "high": 1.0, "log": True, "unit": "lr_crit"}, "momentum": 0.0},
            {"optimizer": "sgd", "effective_lr": {"low": 0.001, "high": 0.1, "log": True, "unit": "lr_crit"},
             "momentum": {"choices": [0.9, 0.95, 0.98, 0.99]}},
        ],
        "transition_epochs": [{"low": max(1, round(0.2 * epochs)), "high": max(1, round(0.8 * epochs))}],
    }


RESAMPLES = 2000
BOOTSTRAP_SEED = 0
FRESH_TRIAL = 10**9  # the trial number the mis-prune replay asks about: one no run has
BN_BATCHES = 50  # schedule-free's BatchNorm recompute (its README's caveat)
MAX_FAILED_IN_A_ROW = 100  # invalid samples in a row before a job gives up (a space that cannot be sampled)
MAX_CORNERS = 4096


def ok(holds: bool) -> str:
    return "yes" if holds else "NO"


@dataclass(frozen=True)
class Setup:
    """What every job needs (picklable: it goes to the worker processes)."""

    workload: str
    params: Mapping[str, Any]
    space: Mapping[str, Any]
    epochs: int
    trials: int
    metric: str
    maximize: bool
    steps_per_epoch: int

    @property
    def budget(self) -> int:
        return self.trials * self.epochs

    def signed(self, value: float | None) -> float:
        """Higher is better; a missing or non-finite value is the worst."""
        if value is None or not math.isfinite(value):
            return -math.inf
        return value if self.maximize else -value

    def reaches(self, value: float | None, target: float) -> bool:
        return self.signed(value) >= self.signed(target)


# ---- the jobs' shared bookkeeping ------------------------------------------------------------------------------


class Ledger:
    """One job's spending (epochs, wall seconds) and its incumbent at every completion."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.spent = 0.0
        self.started = time.perf_counter()
        self.replayed_s = 0.0  # top1epoch's repeated first epochs: not counted
        self.best: float | None = None
        self.best_schedule: dict[str, Any] | None = None
        self.events: list[tuple[float, float, float]] = []  # (epochs, seconds, incumbent) at each completion
        self.counts = dict.fromkeys(("trials", "completed", "stopped", "cut", "diverged", "failed"), 0)
        self.failed_in_a_row = 0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.setup.budget - 1e-9

    def seconds(self) -> float:
        return time.perf_counter() - self.started - self.replayed_s

    def charge(self, result: Mapping[str, Any]) -> None:
        """One epoch."""
        self.spent += 1.0

    def failed(self) -> None:
        self.counts["failed"] += 1
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise RuntimeError(f"{MAX_FAILED_IN_A_ROW} invalid samples in a row: the space cannot be sampled")

    def ended(self, history: list[dict[str, Any]], schedule: dict[str, Any], stopped: bool, cut: bool) -> None:
        """A trial's end: a completion (a deployable result) moves the incumbent."""
        self.failed_in_a_row = 0
        self.counts["trials"] += 1
        last = history[-1]
        loss_ok = math.isfinite(last["train_loss"])
        if not loss_ok:
            self.counts["diverged"] += 1
        if stopped:
            self.counts["stopped"] += 1
        elif cut:
            self.counts["cut"] += 1
        elif (int(last["epoch"]) == self.setup.epochs - 1 and loss_ok
              and self.setup.signed(last.get(self.setup.metric)) > -math.inf):
            value = float(last[self.setup.metric])
            self.counts["completed"] += 1
            if self.setup.signed(value) > self.setup.signed(self.best):
                self.best, self.best_schedule = value, schedule
            self.events.append((self.spent, self.seconds(), self.best))

    def out(self, **extra: Any) -> dict[str, Any]:
        return {"final_best": self.best, "best_schedule": self.best_schedule, "events": self.events,
                "epochs_spent": self.spent, "wall_s": self.seconds(),
                **self.counts, **extra}


def make_study(setup: Setup, seed: int) -> optuna.Study:
    """The service's default sampler (TPE, ``phasetune.workers.optuna_study.sampler_for``), in memory."""
    return optuna.create_study(direction="maximize" if setup.maximize else "minimize",
                               sampler=sampler_for(SamplerSpec(), seed))


def warm_cache(setup: Setup, seed: int) -> WorkloadCache:
    """The data and initial model built once, before a job's clock starts (as a warm trial worker has them)."""
    cache = WorkloadCache()
    build_workload(setup.workload, dict(setup.params), trial_seeds(seed, SeedPolicy(), 0), cache=cache)
    return cache


def workload_for(setup: Setup, seed: int, number: int, cache: WorkloadCache) -> tuple[Any, int]:
    seeds = trial_seeds(seed, SeedPolicy(), number)
    return build_workload(setup.workload, dict(setup.params), seeds, cache=cache).to("cpu"), seeds.batch_order


def report(trial: optuna.Trial, setup: Setup, result: Mapping[str, Any]) -> None:
    value = result.get(setup.metric)
    if value is not None and math.isfinite(value):
        trial.report(float(value), int(result["epoch"]))


def ask(study: optuna.Study, setup: Setup, units: Mapping[str, float],
        ledger: Ledger) -> tuple[optuna.Trial, dict[str, Any], Any] | None:
    """A trial and its concrete schedule and plan; an invalid sample is told FAIL (as the searcher does): None."""
    trial = study.ask()
    try:
        schedule = sample_schedule(trial, setup.space, setup.epochs, units)
        plan = build_plan(schedule, setup.epochs, setup.steps_per_epoch)
    except SpecError:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        ledger.failed()
        return None
    return trial, schedule, plan


# ---- the methods -----------------------------------------------------------------------------------------------


def run_tpe(setup: Setup, method: str, seed: int, units: Mapping[str, float]) -> dict[str, Any]:
    """``full``, ``median``, ``asha``: TPE trials with the policy's stopper until the budget."""
    config = EarlyStopping.parse({"policy": POLICIES[method]})
    stopper = EarlyStopper(config, setup.epochs, setup.metric, setup.maximize)
    study = make_study(setup, seed)
    cache = warm_cache(setup, seed)
    ledger = Ledger(setup)
    while not ledger.exhausted:
        asked = ask(study, setup, units, ledger)
        if asked is None:
            continue
        trial, schedule, plan = asked
        workload, order_seed = workload_for(setup, seed, trial.number, cache)
        state: dict[str, Any] = {"stopped": False, "cut": False}

        def on_epoch(result: dict[str, Any], trial: optuna.Trial = trial, state: dict[str, Any] = state) -> bool:
            ledger.charge(result)
            report(trial, setup, result)
            decision, _ = stopper.decide(trial.number, result)
            if decision is not None and decision.stop:
                state["stopped"], state["reason"] = True, decision.reason
            elif ledger.exhausted and not result[LAST_EPOCH]:
                state["cut"] = True
            return state["stopped"] or state["cut"]

        history = train(workload, plan, setup.epochs, order_seed=order_seed, on_epoch=on_epoch)
        end = trial_end(history[-1], lost=False, stop_requested=state["cut"], metric=setup.metric,
                        stopped_by=state.get("reason"))
        study.tell(trial, end.value, state=end.outcome.value)
        stopper.finish(trial.number, completed=end.outcome is TrialOutcome.COMPLETE)
        ledger.ended(history, schedule, state["stopped"], state["cut"])
    return ledger.out(stopper=stopper)


def top1_sizes(trials: int, epochs: int) -> tuple[int, int]:
    """n one-epoch evaluations and k configurations the rest of the budget trains to the end."""
    budget = trials * epochs
    n = max(1, min(2 * trials, budget - (epochs - 1)))
    return n, (budget - n) // (epochs - 1)


def run_top1epoch(setup: Setup, seed: int, units: Mapping[str, float]) -> dict[str, Any]:
    n, k = top1_sizes(setup.trials, setup.epochs)
    study = make_study(setup, seed)
    cache = warm_cache(setup, seed)
    ledger = Ledger(setup)
    first_round: list[float | None] | None = None  # the one-epoch values the mis-prune check ranks against
    rounds = 0
    while not ledger.exhausted:  # a second round only where trials diverged and left budget
        rounds += 1
        firsts: list[tuple[float, int, dict[str, Any], Any]] = []  # (signed 1-epoch value, number, schedule, plan)
        values: list[float | None] = []
        while len(firsts) < n and not ledger.exhausted:
            asked = ask(study, setup, units, ledger)
            if asked is None:
                continue
            trial, schedule, plan = asked
            workload, order_seed = workload_for(setup, seed, trial.number, cache)

            def first_epoch(result: dict[str, Any], trial: optuna.Trial = trial) -> bool:
                ledger.charge(result)
                report(trial, setup, result)
                return True

            history = train(workload, plan, setup.epochs, order_seed=order_seed, on_epoch=first_epoch)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            first = history[0]
            value = first.get(setup.metric) if math.isfinite(first["train_loss"]) else None
            values.append(value)
            firsts.append((setup.signed(value), trial.number, schedule, plan))
            ledger.ended(history, schedule, stopped=True, cut=False)
        first_round = values if first_round is None else first_round
        for signed, number, schedule, plan in sorted(firsts, key=lambda f: -f[0]):
            if ledger.exhausted or signed == -math.inf:
                break
            workload, order_seed = workload_for(setup, seed, number, cache)
            state = {"cut": False}

            def go_on(result: dict[str, Any], state: dict[str, bool] = state) -> bool:
                if result["epoch"] == 0:  # paid in the first round: retrained only as train() starts at epoch 0
                    ledger.replayed_s += result["seconds"]
                    return False
                ledger.charge(result)
                state["cut"] = ledger.exhausted and not result[LAST_EPOCH]
                return state["cut"]

            history = train(workload, plan, setup.epochs, order_seed=order_seed, on_epoch=go_on)
            ledger.counts["stopped"] -= 1  # counted as stopped after its first epoch: it went on
            ledger.counts["trials"] -= 1  # the same configuration, not another trial
            ledger.ended(history, schedule, stopped=False, cut=state["cut"])
    return ledger.out(top1={"values": first_round or [], "n": n, "k": k}, rounds=rounds)


class Corner:
    """A TrialLike that takes every searched parameter at one end (every choice in turn), as ``path`` says."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.widths = path, []

    def _pick(self, options: list[Any]) -> Any:
        at = len(self.widths)
        self.widths.append(len(options))
        return options[self.path[at] if at < len(self.path) else 0]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._pick([low, high])

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._pick([low, high])

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._pick(list(choices))


def lrs_in(schedule: Any) -> Iterator[float]:
    if isinstance(schedule, Mapping):
        for key, value in schedule.items():
            if key == "lr" and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield float(value)
            else:
                yield from lrs_in(value)
    elif isinstance(schedule, list):
        for value in schedule:
            yield from lrs_in(value)


def lr_bounds(space: Mapping[str, Any], epochs: int, units: Mapping[str, float]) -> tuple[float, float]:
    """The smallest and largest absolute lr the space gives: every corner of it (a depth-first walk of the
    define-by-run parameters, each at either end, each choice)."""
    found: list[float] = []
    stack: list[list[int]] = [[]]
    visited = 0
    while stack and visited < MAX_CORNERS:
        path = stack.pop()
        visited += 1
        trial = Corner(path)
        with contextlib.suppress(SpecError):
            found += [lr for lr in lrs_in(sample_schedule(trial, space, epochs, units)) if lr > 0]
        for at in range(len(path), len(trial.widths)):
            stack += [path + [0] * (at - len(path)) + [j] for j in range(1, trial.widths[at])]
    if not found:
        raise SpecError(("space",), "no positive lr found in the space for the schedule-free sweep")
    return min(found), max(found)


def run_schedulefree(setup: Setup, seed: int, units: Mapping[str, float]) -> dict[str, Any]:
    import schedulefree

    low, high = lr_bounds(setup.space, setup.epochs, units)
    rng = np.random.default_rng(stream_seed(seed, "schedulefree"))
    cache = warm_cache(setup, seed)
    ledger = Ledger(setup)
    lrs: list[float] = []
    for number in itertools.count():
        if ledger.exhausted:
            break
        lr = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        lrs.append(lr)
        workload, order_seed = workload_for(setup, seed, number, cache)
        optimizer = schedulefree.SGDScheduleFree(workload.optimizer_params(), lr=lr)
        state = {"cut": False}

        def on_epoch(result: dict[str, Any], state: dict[str, bool] = state) -> bool:
            ledger.charge(result)
            state["cut"] = ledger.exhausted and not result[LAST_EPOCH]
            return state["cut"]

        history = train_schedule_free(workload, optimizer, setup.epochs, order_seed, on_epoch)
        ledger.ended(history, {"optimizer": "SGDScheduleFree", "lr": lr}, stopped=False, cut=state["cut"])
    return ledger.out(lr_range=[low, high], lrs=lrs)


def train_schedule_free(workload: Any, optimizer: torch.optim.Optimizer, epochs: int, order_seed: int,
                        on_epoch: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The schedule-free training loop: the workload's batches and loss, ``optimizer.train()`` / ``.eval()``."""
    model, split = workload.model, workload.data.train
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.manual_seed(stream_seed(order_seed, "train"))
    history: list[dict[str, Any]] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        optimizer.train()
        loss_sum = torch.zeros(())
        for x, y in workload.batches(split, batch_order(len(split), order_seed, epoch)):
            loss = workload.loss(workload.forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
        train_loss = (loss_sum / len(split)).item()
        optimizer.eval()
        if has_bn:  # the README's caveat: BatchNorm statistics at the evaluation point
            model.train()
            with torch.no_grad():
                batches = workload.batches(split, batch_order(len(split), order_seed, epoch))
                for x, _ in itertools.islice(batches, BN_BATCHES):
                    workload.forward(x)
        metrics = {"epoch": epoch, "train_loss": train_loss, **workload.evaluate(workload.data.val, "val"),
                   "seconds": time.perf_counter() - started}
        metrics[LAST_EPOCH] = not math.isfinite(train_loss) or epoch == epochs - 1
        history.append(metrics)
        if on_epoch(metrics) or metrics[LAST_EPOCH]:
            break
    return history


# ---- the jobs --------------------------------------------------------------------------------------------------


def init_worker() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group=True
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def probe_job(setup: Setup, seed: int) -> dict[str, Any]:
    from phasetune.workers.probe_names import ProbeKind
    from phasetune.workers.probing import run_probes  # imports Ray: only where the probes run

    started = time.perf_counter()
    probes = run_probes({"name": setup.workload, "params": dict(setup.params)}, seed,
                        kinds=[ProbeKind.CURVATURE, ProbeKind.LR_RANGE], device="cpu")
    return {"units": probes["units"], "seconds": time.perf_counter() - started}


def method_job(setup: Setup, method: str, seed: int, units: Mapping[str, float]) -> dict[str, Any]:
    if method == "top1epoch":
        return run_top1epoch(setup, seed, units)
    if method == "schedulefree":
        return run_schedulefree(setup, seed, units)
    return run_tpe(setup, method, seed, units)


def misprune_job(setup: Setup, seed: int, schedule: dict[str, Any], stoppers: Mapping[str, EarlyStopper],
                 top1: Mapping[str, Any] | None) -> dict[str, Any]:
    """Would each policy have stopped ``full``'s best configuration before its first decay?"""
    cache = WorkloadCache()
    workload, order_seed = workload_for(setup, seed, 0, cache)
    plan = build_plan(schedule, setup.epochs, setup.steps_per_epoch)
    decay_step = plan.decay_start_step() or setup.epochs * setup.steps_per_epoch
    history = train(workload, plan, setup.epochs, order_seed=order_seed)
    out: dict[str, Any] = {"decay_epoch": decay_step / setup.steps_per_epoch}
    for method, stopper in stoppers.items():
        replay = copy.deepcopy(stopper)
        stopped_after = None
        for result in history:
            decision, _ = replay.decide(FRESH_TRIAL, result)
            if decision is not None and decision.stop:
                stopped_after = decision.epoch
                break
        out[method] = {"stopped_after_epoch": stopped_after,
                       "misprune": stopped_after is not None
                       and (stopped_after + 1) * setup.steps_per_epoch <= decay_step}
    if top1 is not None:
        value = history[0].get(setup.metric)
        better = sum(setup.signed(v) > setup.signed(value) for v in top1["values"])
        out["top1epoch"] = {"one_epoch_value": value, "strictly_better": better, "k": top1["k"],
                            "misprune": better >= top1["k"]}
    return out


class Inline(Executor):
    """``--workers 1``: every job in this process, at submission."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001  (handed over as a pool would)
            future.set_exception(err)
        return future


# ---- statistics ------------------------------------------------------------------------------------------------


def epochs_seconds_to_target(setup: Setup, events: list, target: float | None) -> tuple[float | None, float | None]:
    if target is None:
        return None, None
    for epochs, seconds, incumbent in events:
        if setup.reaches(incumbent, target):
            return epochs, seconds
    return None, None


def median_of(x: np.ndarray) -> np.ndarray:
    """The median along the last axis, infinities allowed (numpy's gives NaN for the middle of inf and inf)."""
    ordered = np.sort(x, axis=-1)
    n = ordered.shape[-1]
    low, high = ordered[..., (n - 1) // 2], ordered[..., n // 2]
    with np.errstate(invalid="ignore"):
        return np.where(low == high, low, (low + high) / 2)


def ratio_of(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """median(ref) / median(ours) along the last axis; NaN where both are infinite."""
    a, b = median_of(ref), median_of(ours)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    return np.where(np.isinf(a) & np.isinf(b), np.nan, out)


def percentile(values: np.ndarray, q: float) -> float:
    """numpy's linear percentile, infinities allowed (its interpolation between inf and inf gives NaN)."""
    ordered = np.sort(values)
    at = q / 100 * (len(ordered) - 1)
    low, high = ordered[math.floor(at)], ordered[math.ceil(at)]
    return float(low if low == high else low + (at - math.floor(at)) * (high - low))


def ratio_stats(ref: np.ndarray, ours: np.ndarray, resamples: np.ndarray) -> dict[str, Any]:
    point = float(ratio_of(ref, ours))
    boot = ratio_of(ref[resamples], ours[resamples])
    defined = boot[~np.isnan(boot)]
    ci = [percentile(defined, 2.5), percentile(defined, 97.5)] if len(defined) else [None, None]
    return {"median": point, "ci": ci, "undefined_resamples": int(len(boot) - len(defined))}


def jsonable(value: Any) -> Any:
    """Non-finite numbers as null (JSON has none); the printed summary shows them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def fmt_ratio(stats: Mapping[str, Any] | None) -> str:
    if stats is None:
        return "-"

    def one(x: float | None) -> str:
        if x is None or math.isnan(x):
            return "undef"
        return "inf" if math.isinf(x) else f"{x:.2f}"

    lo, hi = stats["ci"]
    point = one(stats["median"])
    return f"{point}{'' if point == 'undef' else 'x'} [{one(lo)}, {one(hi)}]"


def fmt(x: float | None, spec: str = ".1f", never: str = "never") -> str:
    if x is None or (isinstance(x, float) and math.isinf(x)):
        return never
    if isinstance(x, float) and math.isnan(x):
        return "-"
    return format(x, spec)


# ---- main ------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--params", default="{}", help="the workload's params, JSON")
    parser.add_argument("--space", default=None, help="a schedule space, JSON file (default: default_space(epochs))")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of a trial")
    parser.add_argument("--trials", type=int, default=80, help="budget = trials x epochs training epochs per study")
    parser.add_argument("--seeds", type=int, default=10, help="study seeds 0..N-1 (>= 10 for the statistics)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--metric", default="val_accuracy", help="the objective (an epoch metric of the workload)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (1: all in this process)")
    parser.add_argument("--json", default=None, help="write runs and summary here")
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "full" not in args.methods:
        parser.error(f"--methods: a subset of {','.join(METHODS)} that includes full (the reference); "
                     f"unknown: {unknown}")
    args.methods = [m for m in METHODS if m in args.methods]
    if args.epochs < 2 or args.trials < 1 or args.seeds < 1 or args.workers < 1:
        parser.error("--epochs must be >= 2, --trials, --seeds and --workers >= 1")
    try:
        args.params = json.loads(args.params)
        args.space = json.loads(Path(args.space).read_text()) if args.space else default_space(args.epochs)
    except (OSError, ValueError) as err:
        parser.error(f"--params / --space: {err}")
    reported = workloads().get(args.workload)
    if reported is None:
        parser.error(f"unknown workload {args.workload!r}; installed: {sorted(workloads())}")
    if args.metric not in reported.epoch_metrics():
        parser.error(f"--metric: {args.workload} reports {sorted(reported.epoch_metrics())} every epoch")
    args.maximize = reported.epoch_metrics()[args.metric]
    try:
        args.steps_per_epoch = steps_per_epoch(args.workload, args.params)
        validate_schedule(args.space, args.epochs, args.steps_per_epoch)
    except SpecError as err:
        parser.error(f"--params / --space: {err}")
    return args


def main() -> None:
    args = parse_args()
    init_worker()
    setup = Setup(args.workload, args.params, args.space, args.epochs, args.trials, args.metric, args.maximize,
                  args.steps_per_epoch)
    seeds = list(range(args.seeds))
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"settings: workload {args.workload} {json.dumps(args.params)} ({args.steps_per_epoch} steps per epoch), "
          f"space {json.dumps(args.space)}, epochs {args.epochs}, trials {args.trials} (budget {setup.budget} epochs "
          f"per method and seed), seeds {args.seeds}, methods {','.join(args.methods)}, metric {args.metric} "
          f"({'max' if args.maximize else 'min'}), workers {args.workers}; optuna {optuna.__version__}, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs")
    if "top1epoch" in args.methods:
        n, k = top1_sizes(args.trials, args.epochs)
        print(f"top1epoch: {n} one-epoch evaluations, then the top {k} trained to the end")
    if args.seeds < 10:
        print(f"note: {args.seeds} seeds; the issue asks for at least 10 (intervals over fewer mean little)")
    started = time.perf_counter()

    def elapsed() -> str:
        return f"[{time.perf_counter() - started:6.0f} s]"

    if args.workers == 1:
        pool: Executor = Inline()
    else:
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker)
    runs: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in args.methods}
    misprunes: dict[int, dict[str, Any]] = {}
    with pool:
        probe_futures = {seed: pool.submit(probe_job, setup, seed) for seed in seeds}
        probes = {seed: future.result() for seed, future in probe_futures.items()}
        for seed in seeds:
            units = probes[seed]["units"]
            check_expandable(args.space, args.epochs, units)
            print(f"{elapsed()} probes seed {seed}: {probes[seed]['seconds']:.1f} s, "
                  + ", ".join(f"{k} {v:.4g}" for k, v in units.items()), flush=True)
        print(f"probes: {sum(p['seconds'] for p in probes.values()):.1f} s in all (not in any method's figures)")
        pending: dict[Future, tuple[str, int]] = {}
        for seed in seeds:
            for method in args.methods:
                pending[pool.submit(method_job, setup, method, seed, probes[seed]["units"])] = (method, seed)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                method, seed = pending.pop(future)
                if method == "misprune":
                    misprunes[seed] = future.result()
                    continue
                runs[method][seed] = run = future.result()
                print(f"{elapsed()} {method} seed {seed}: {run['trials']} trials, final best "
                      f"{fmt(run['final_best'], '.4f', 'none')}, {run['wall_s']:.1f} s", flush=True)
                if all(seed in runs[m] for m in args.methods) and runs["full"][seed]["best_schedule"] is not None:
                    stoppers = {m: runs[m][seed]["stopper"] for m in args.methods if m in MISPRUNE_METHODS
                                and m != "top1epoch"}
                    top1 = runs["top1epoch"][seed]["top1"] if "top1epoch" in args.methods else None
                    if stoppers or top1 is not None:
                        pending[pool.submit(misprune_job, setup, seed, runs["full"][seed]["best_schedule"],
                                            stoppers, top1)] = ("misprune", seed)
    summarize(args, setup, seeds, probes, runs, misprunes, time.perf_counter() - started)


def summarize(args: argparse.Namespace, setup: Setup, seeds: list[int], probes: Mapping[int, Any],
              runs: Mapping[str, Mapping[int, dict[str, Any]]], misprunes: Mapping[int, Any], wall: float) -> None:
    methods = args.methods
    fulls = [setup.signed(runs["full"][s]["final_best"]) for s in seeds]
    signed_target = sorted(fulls)[(len(fulls) - 1) // 2]  # the lower median: see the module docstring
    target = None if math.isinf(signed_target) else (signed_target if setup.maximize else -signed_target)
    to_target: dict[str, dict[int, tuple[float | None, float | None]]] = {
        m: {s: epochs_seconds_to_target(setup, runs[m][s]["events"], target) for s in seeds} for m in methods}
    e2t = {m: np.array([math.inf if to_target[m][s][0] is None else to_target[m][s][0] for s in seeds])
           for m in methods}
    resamples = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(seeds), size=(RESAMPLES, len(seeds)))
    naive_present = [m for m in NAIVE if m in methods]
    naive = min(naive_present, key=lambda m: float(median_of(e2t[m]))) if naive_present else None
    best_any = {s: max(setup.signed(runs[m][s]["final_best"]) for m in methods) for s in seeds}

    summary: dict[str, dict[str, Any]] = {}
    for m in methods:
        ours = [setup.signed(runs[m][s]["final_best"]) for s in seeds]
        regrets = [best_any[s] - v if v > -math.inf else math.inf for s, v in zip(seeds, ours)]
        if m == "full":
            rate: float | None = 0.0
        elif m in MISPRUNE_METHODS:
            flags = [misprunes[s][m]["misprune"] for s in seeds if s in misprunes and m in misprunes[s]]
            rate = sum(flags) / len(flags) if flags else None
        else:
            rate = None
        seconds = [math.inf if to_target[m][s][1] is None else to_target[m][s][1] for s in seeds]
        spent = sum(runs[m][s]["epochs_spent"] for s in seeds)
        summary[m] = {
            "median_epochs_to_target": float(median_of(e2t[m])),
            "ratio_vs_full": ratio_stats(e2t["full"], e2t[m], resamples),
            "ratio_vs_naive": ratio_stats(e2t[naive], e2t[m], resamples) if naive else None,
            "final_regret": float(median_of(np.array(regrets))),
            "misprune_rate": rate,
            "median_seconds_to_target": float(median_of(np.array(seconds))),
            "epochs_spent": spent,
            "trials": sum(runs[m][s]["trials"] for s in seeds),
            "completed": sum(runs[m][s]["completed"] for s in seeds),
            "diverged": sum(runs[m][s]["diverged"] for s in seeds),
        }

    print(f"\ntarget: (lower) median over {len(seeds)} seeds of full's final best {args.metric} = "
          f"{fmt(target, '.4f', 'none')}"
          f"{'' if target is not None else ' (full completed no trial on most seeds: nothing to reach)'}")
    print("per method and seed (never: the incumbent never reached it, infinity in the statistics; diverged: ended "
          "with a non-finite training loss):")
    for m in methods:
        for s in seeds:
            run, (epochs, seconds) = runs[m][s], to_target[m][s]
            mis = misprunes.get(s, {}).get(m)
            extra = f", mis-pruned {'yes' if mis['misprune'] else 'no'}" if mis else ""
            print(f"  {m:<14} seed {s:>2}: to target {fmt(epochs)} epochs / {fmt(seconds)} s, final best "
                  f"{fmt(run['final_best'], '.4f', 'none')}; {run['trials']} trials ({run['completed']} completed, "
                  f"{run['stopped']} stopped, {run['cut']} cut, {run['diverged']} diverged, {run['failed']} invalid), "
                  f"{run['epochs_spent']:.1f} epochs{extra}")
    print(f"\nsummary over {len(seeds)} seeds (ratio: median epochs-to-target of the reference / the method's, 95% "
          f"paired bootstrap interval; naive = the better of median/asha: {naive or 'not run'}):")
    header = (f"  {'method':<14} {'epochs→target':>13} {'vs full':>22} {'vs naive':>22} {'regret':>8} "
              f"{'mis-prune':>9} {'s→target':>9} {'epochs spent':>12} {'trials':>7} {'diverged':>8}")
    print(header)
    for m in methods:
        row = summary[m]
        rate = "n/a" if row["misprune_rate"] is None else f"{row['misprune_rate']:.2f}"
        print(f"  {m:<14} {fmt(row['median_epochs_to_target']):>13} {fmt_ratio(row['ratio_vs_full']):>22} "
              f"{fmt_ratio(row['ratio_vs_naive']):>22} {fmt(row['final_regret'], '.4f', 'inf'):>8} {rate:>9} "
              f"{fmt(row['median_seconds_to_target']):>9} "
              f"{row['epochs_spent']:>12.0f} {row['trials']:>7} {row['diverged']:>8}")
    undefined = {m: (summary[m]["ratio_vs_full"]["undefined_resamples"]) for m in methods
                 if summary[m]["ratio_vs_full"]["undefined_resamples"]}
    if undefined:
        print(f"  (resamples left out of the vs-full interval, neither reaching the target: {undefined})")
    print(f"probes: {sum(p['seconds'] for p in probes.values()):.1f} s in all, outside every method's figures; "
          f"wall {wall:.0f} s in all")

    if args.json:
        out_runs = {m: {str(s): {
            "epochs_to_target": to_target[m][s][0], "seconds_to_target": to_target[m][s][1],
            "final_best": runs[m][s]["final_best"],
            **{k: v for k, v in runs[m][s].items() if k not in ("stopper", "final_best", "events")},
            "incumbent": [list(e) for e in runs[m][s]["events"]],
            "misprune": misprunes.get(s, {}).get(m),
        } for s in seeds} for m in methods}
        document = {"settings": {k: v for k, v in vars(args).items()}, "target": target, "naive": naive,
                    "probes": {str(s): p for s, p in probes.items()}, "runs": out_runs, "summary": summary,
                    "wall_s": wall}
        Path(args.json).write_text(json.dumps(jsonable(document), indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
