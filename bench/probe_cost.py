"""What the regime probes cost next to one trial, per built-in workload (target: curvature probe < 5%).

For each workload at its defaults (seed 0) this times, in one process and side by side:
- one trial: ``workers.train.train`` for ``--epochs`` epochs of constant-LR SGD at 0.5·lr_crit;
- the curvature probe on the fixed probe batch (``probe_batch``, ``--probe-batch`` examples; best of 3);
- the LR range test (defaults: 100 steps at the workload's batch size).
It also prints λ0 on probe batches of several sizes, to show the default batch is large enough.

Run: ``.venv/bin/python bench/probe_cost.py [--epochs 10] [--probe-batch 256] [--device cpu] [--threads 1]``.
The first torch.func jvp in a process loads forward-AD decompositions (about 1-2 s); it is paid once by a
warm-up and reported on its own line, since a long-lived service pays it once per process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from search_spaces.plan import build_plan  # noqa: E402
from search_spaces.probes import PROBE_BATCH, estimate_curvature, lr_range_test, probe_batch  # noqa: E402
from workers.train import train  # noqa: E402
from workers.workloads import build_workload  # noqa: E402

WORKLOADS = ("ps10", "digits", "quadratic")
T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device, repeats: int = 1) -> tuple[T, float]:
    """(result of the last call, best wall time in seconds); syncs CUDA so GPU time is counted."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return out, best


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
    parser.add_argument("--probe-batch", type=int, default=PROBE_BATCH)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a trial gets 1 CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, epochs/trial {args.epochs}, "
          f"probe batch {args.probe_batch}")
    print(f"one-time torch.func warm-up: {warm_up(device):.2f} s")

    rows = []
    for name in WORKLOADS:
        w = build_workload(name, None, seed=0).to(device)
        px, py = probe_batch(w.train_x, w.train_y, max_examples=args.probe_batch, seed=0)
        curv, probe_s = timed(lambda: estimate_curvature(w.model, px, py, w.loss_kind), device, repeats=3)
        # λ0 at init on nested-size batches (seed 0) and the whole training set: is the default big enough?
        sizes = sorted({s for s in (64, 128, 256, 512, 1024) if s < len(w.train_x)} | {len(w.train_x)})
        lams = {s: estimate_curvature(w.model, *probe_batch(w.train_x, w.train_y, s, seed=0), w.loss_kind).lambda0
                for s in sizes}
        rng, range_s = timed(lambda: lr_range_test(w.model, w.train_x, w.train_y, w.loss_kind,
                                                   batch_size=w.batch_size), device)
        plan = build_plan({"family": "constant", "lr": 0.5 * curv.lr_crit}, args.epochs, w.steps_per_epoch)
        history, trial_s = timed(lambda: train(w, plan, args.epochs, seed=0), device)
        rows.append((name, w, curv, probe_s, rng, range_s, trial_s, len(history), lams))

    print()
    print(f"{'workload':<10} {'trial_s':>8} {'probe_s':>8} {'probe/trial':>11} {'iters':>5} {'lambda0':>9} "
          f"{'lr_crit':>9} {'probe_epochs':>12} {'range_s':>8} {'range/trial':>11} {'lr_div':>9} {'diverged':>8}")
    for name, w, curv, probe_s, rng, range_s, trial_s, epochs, _ in rows:
        print(f"{name:<10} {trial_s:8.3f} {probe_s:8.4f} {probe_s / trial_s:10.2%} {curv.iterations:5d} "
              f"{curv.lambda0:9.4g} {curv.lr_crit:9.4g} {probe_s / (trial_s / epochs):12.2f} "
              f"{range_s:8.3f} {range_s / trial_s:10.1%} {rng.lr_div:9.3g} {str(rng.diverged):>8}")
    print()
    print("lambda0 at init by probe batch size (last entry: the whole training set):")
    for name, *_, lams in rows:
        print(f"  {name:<10} " + "  ".join(f"{s}: {lam:.4g}" for s, lam in lams.items()))
    print()
    print(f"trial = {args.epochs} epochs of workers.train.train at 0.5*lr_crit; probe = best of 3; range test = 100 "
          "steps at the workload's batch size;\nprobe_epochs = probe time in epochs of training. "
          "Both probes run once per study, not per trial.")


if __name__ == "__main__":
    main()
