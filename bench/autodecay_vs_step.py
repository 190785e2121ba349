"""AutoDecay vs a tuned step schedule on ps10 with 10% label noise (claim C15 of docs/schedules-spec.md).

The issue's bar: AutoDecay ends within 0.5 points of val accuracy of a tuned step schedule while using fewer epochs.

- Step decay (the baseline "lrDecay"): ``multistep`` with gamma 0.1 at 50% and 75% of the budget, momentum 0.9;
  "tuned" = the best median final val accuracy over a small lr grid (``--lrs``).
- AutoDecay: the family's default constants (beta 0.9, window 5, tolerance 0.1, zeta 0.9, gamma 0.3) at the tuned
  step schedule's lr, same momentum and budget; it may end the run early.

Both run through ``phasetune.workers.train.train`` (the study's own loop), seeds 0..N-1, and print the median final val
accuracy and epochs used side by side.

Run: ``.venv/bin/python bench/autodecay_vs_step.py [--epochs 40] [--seeds 3] [--lrs 0.02 0.05 0.1] [--threads 1]
[--autodecay '{"tolerance": 0.05}']`` (``--autodecay`` overrides AutoDecay's constants, JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from phasetune.search_spaces.plan import build_plan
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload

MOMENTUM = 0.9


def run(schedule: dict[str, Any], epochs: int, seeds: range, noise: float) -> dict[str, Any]:
    """Median final val accuracy and epochs used of ``schedule`` over ``seeds``."""
    accuracies, used, decays = [], [], []
    for seed in seeds:
        workload = build_workload("ps10", {"noise": noise}, seed)
        plan = build_plan(schedule, epochs, workload.steps_per_epoch)
        history = train(workload, plan, epochs, order_seed=seed)
        accuracies.append(100 * history[-1]["val_accuracy"])
        used.append(len(history))
        decays.append(plan.extra_attrs().get("autodecay_decay_epochs"))
    return {"acc": statistics.median(accuracies), "epochs": statistics.median(used), "accs": accuracies,
            "used": used, "decays": decays}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--autodecay", type=json.loads, default={}, help="AutoDecay constants to override (JSON)")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    milestones = [0.5 * args.epochs, 0.75 * args.epochs]
    step_results = {}
    for lr in args.lrs:
        schedule = {"family": "multistep", "lr": lr, "milestones": milestones, "gamma": 0.1, "momentum": MOMENTUM}
        step_results[lr] = run(schedule, args.epochs, seeds, args.noise)
        r = step_results[lr]
        print(f"step lr={lr:<6g} median acc {r['acc']:6.2f}  (seeds {[round(a, 2) for a in r['accs']]})")
    best_lr = max(step_results, key=lambda lr: step_results[lr]["acc"])
    step = step_results[best_lr]
    auto_schedule = {"family": "autodecay", "lr": best_lr, "momentum": MOMENTUM, **args.autodecay}
    auto = run(auto_schedule, args.epochs, seeds, args.noise)

    print(f"\nps10, noise {args.noise}, budget {args.epochs} epochs, {args.seeds} seeds, lr {best_lr} (tuned on step)")
    print(f"{'schedule':<12}{'median val acc (%)':>20}{'median epochs':>16}")
    print(f"{'step':<12}{step['acc']:>20.2f}{step['epochs']:>16g}")
    print(f"{'autodecay':<12}{auto['acc']:>20.2f}{auto['epochs']:>16g}   {args.autodecay or 'defaults'}")
    print(f"autodecay decay epochs per seed: {auto['decays']}, epochs used: {auto['used']}")
    gap, fewer = step["acc"] - auto["acc"], auto["epochs"] < step["epochs"]
    verdict = "PASS" if gap <= 0.5 and fewer else "MISS"
    print(f"{verdict}: autodecay is {gap:+.2f} points below step and uses {'fewer' if fewer else 'no fewer'} epochs "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
