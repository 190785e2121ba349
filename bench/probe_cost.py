"""What the regime probes cost next to one trial, per built-in workload (target: curvature probe < 5%).

For each workload and seed (``--seeds``: workload seed = probe seed = 0, 1, ...) this times, in one process:
- one trial: ``phasetune.workers.train.train`` for ``--epochs`` epochs of constant-LR SGD at 0.5·lr_crit;
- the curvature probe on the fixed probe batch (``probe_batch``, ``--probe-batch`` examples);
- the LR range test (defaults: 100 steps at the workload's batch size), once per workload.
Trial and probe are timed side by side, alternating, ``--rounds`` times; each round gives one ratio
probe/trial, and the table prints the median ratio over all rounds and seeds and the worst seed's median
(this machine's timings drift by ±20% from one second to the next, so a ratio of two separate medians
would not be). It also prints λ0 on probe batches of several sizes, to show the default batch is large enough.

Run: ``.venv/bin/python bench/probe_cost.py [--epochs 10] [--seeds 3] [--rounds 5] [--probe-batch 256]``.
The first torch.func jvp in a process loads forward-AD decompositions (about 1-2 s); it is paid once by a
warm-up and reported on its own line, since a long-lived service pays it once per process.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from statistics import median
from typing import TypeVar

import torch

from phasetune.search_spaces.plan import build_plan
from phasetune.search_spaces.probes import (
    PROBE_BATCH,
    CurvatureResult,
    estimate_curvature,
    lr_range_test,
    probe_batch,
)
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload

WORKLOADS = ("ps10", "digits", "quadratic")
T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(result, wall time in seconds) of one call; syncs CUDA so GPU time is counted."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def warm_up(device: torch.device) -> float:
    """Pay both probes' one-time start-up (autograd, torch.func) once, outside the per-workload timings."""
    model = torch.nn.Linear(2, 2).to(device)
    x, y = torch.zeros(4, 2, device=device), torch.zeros(4, 2, device=device)

    def both() -> object:
        estimate_curvature(model, x, y, "mse", iters=2)
        return lr_range_test(model, x, y, "mse", steps=5)

    return timed(both, device)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--probe-batch", type=int, default=PROBE_BATCH)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a trial gets 1 CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, epochs/trial {args.epochs}, "
          f"probe batch {args.probe_batch}, seeds {args.seeds}, rounds {args.rounds}")
    print(f"one-time torch.func warm-up: {warm_up(device):.2f} s")

    print()
    print(f"{'workload':<10} {'seed':>4} {'method':>13} {'iters':>5} {'lambda0':>9} {'lr_crit':>9} {'trial_s':>8} "
          f"{'probe_s':>8} {'probe/trial':>11} {'probe_epochs':>12}")
    summary, lams, ranges = [], {}, {}
    for name in WORKLOADS:
        per_seed = []
        for seed in range(args.seeds):
            w = build_workload(name, None, seed=seed).to(device)
            px, py = probe_batch(w.train_x, w.train_y, max_examples=args.probe_batch, seed=seed)

            init = copy.deepcopy(w.model.state_dict())  # training moves the weights: every run starts here

            def probe() -> CurvatureResult:
                return estimate_curvature(w.model, px, py, w.loss_kind, seed=seed)  # noqa: B023

            curv = probe()
            plan = build_plan({"family": "constant", "lr": 0.5 * curv.lr_crit}, args.epochs, w.steps_per_epoch)
            ratios, trials, probes = [], [], []
            for _ in range(args.rounds):  # alternate, so that both see the same machine
                w.model.load_state_dict(init)
                _, trial_s = timed(lambda: train(w, plan, args.epochs, order_seed=seed), device)  # noqa: B023
                w.model.load_state_dict(init)
                _, probe_s = timed(probe, device)
                trials.append(trial_s)
                probes.append(probe_s)
                ratios.append(probe_s / trial_s)
            epoch_s = median(trials) / args.epochs
            print(f"{name:<10} {seed:>4} {curv.method:>13} {curv.iterations:>5} "
                  f"{curv.lambda0:9.4g} {curv.lr_crit:9.4g} {median(trials):8.3f} {median(probes):8.4f} "
                  f"{median(ratios):10.2%} {median(probes) / epoch_s:12.2f}")
            per_seed.append(ratios)
            if seed == 0:
                # λ0 at init on nested-size batches and the whole training set: is the default big enough?
                sizes = sorted({s for s in (64, 128, 256, 512, 1024) if s < len(w.train_x)} | {len(w.train_x)})
                lams[name] = {s: estimate_curvature(w.model, *probe_batch(w.train_x, w.train_y, s, seed=0),
                                                    w.loss_kind).lambda0 for s in sizes}
                rng, range_s = timed(lambda w=w: lr_range_test(w.model, w.train_x, w.train_y, w.loss_kind,
                                                               batch_size=w.batch_size), device)
                ranges[name] = (rng, range_s / median(trials))
        summary.append((name, median([r for rs in per_seed for r in rs]), max(median(rs) for rs in per_seed)))

    print()
    print(f"{'workload':<10} {'probe/trial (median)':>20} {'worst seed (median)':>20} {'range/trial':>11} "
          f"{'lr_div':>9} {'diverged':>8}")
    for name, med, worst in summary:
        rng, range_ratio = ranges[name]
        print(f"{name:<10} {med:20.2%} {worst:20.2%} {range_ratio:10.1%} {rng.lr_div:9.3g} {str(rng.diverged):>8}")
    print()
    print("lambda0 at init by probe batch size (seed 0; last entry: the whole training set):")
    for name, by_size in lams.items():
        print(f"  {name:<10} " + "  ".join(f"{s}: {lam:.4g}" for s, lam in by_size.items()))
    print()
    print(f"trial = {args.epochs} epochs of workers.train.train at 0.5*lr_crit; "
          f"probe/trial = median over {args.rounds} alternating rounds of one trial and one probe;")
    print("method: lanczos_chain = closed-form Linear/ReLU products, lanczos = autograd double-vjp, "
          "dense = G formed whole; iters = G-vector products;")
    print("probe_epochs = probe time in epochs of training. Both probes run once per study, not per trial.")

if __name__ == "__main__":
    main()
