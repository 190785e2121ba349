"""What branching's checkpoints cost a trial on each built-in workload: checkpoint I/O as a share of the trial's time.

Per workload, side by side in this one process, ``--repeats`` times in alternation: a trial of a two-phase schedule
(``--epochs`` epochs, the transition at the last epoch, so every earlier epoch is a checkpoint epoch: the worst
case, a trial of a space whose transition range spans the whole run) trained

- ``plain``: without branching;
- ``writer``: through ``phasetune.workers.branching.TrialBranch`` as the trainable runs it, on a fresh store: the key
  computation, the lookup (a miss) and a checkpoint written at every checkpoint epoch;
- ``child``: the same schedule with another last phase, resuming from the deepest checkpoint ``writer`` left
  (the lookup and load) and training the rest.

Printed per workload: the medians of ``writer``'s I/O seconds (``TrialBranch.io_seconds``) over its wall seconds
(the goal: under 5%; ``TrialBranch`` skips checkpoint epochs while its I/O is over ``IO_BUDGET`` of the trial's
time, so ``written`` says how many of them it left), ``writer``'s wall over ``plain``'s (what the checkpoints
cost, I/O and the state copies included), and the child's load seconds. Workloads that need a dataset path
(npz, image_folder) are left out; fashion_mnist runs on a subset (``--fashion-train``) when its IDX files are
installed.

Run: ``.venv/bin/python bench/checkpoint_io.py [--epochs 10] [--repeats 3] [--fashion-train 10000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from phasetune.search_spaces import SpecError, build_plan
from phasetune.workers.branching import TrialBranch
from phasetune.workers.seeding import Seeds
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload

SEEDS = Seeds(data=0, init=0, batch_order=0)
GOAL_SHARE = 0.05


def schedule(epochs: int, last_lr: float) -> dict[str, Any]:
    return {"family": "phases", "transition_epochs": [epochs - 1],
            "phases": [{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}, {"lr": last_lr, "momentum": 0.9}]}


def one_round(name: str, params: dict[str, Any], epochs: int, root: str) -> dict[str, float]:
    out: dict[str, float] = {}
    workload = build_workload(name, params, SEEDS)
    plan = build_plan(schedule(epochs, 0.01), epochs, workload.steps_per_epoch)
    started = time.perf_counter()
    train(workload, plan, epochs, order_seed=SEEDS.batch_order)
    out["plain_s"] = time.perf_counter() - started

    config = {"root": root, "max_bytes": 1 << 34, "epochs": list(range(epochs - 1))}
    workload = build_workload(name, params, SEEDS)
    started = time.perf_counter()
    writer = TrialBranch.open(config, name, params, SEEDS, plan, trial=0)
    resume = writer.resume()
    train(workload, plan, epochs, order_seed=SEEDS.batch_order, resume=resume, checkpoint_at=writer.checkpoint_at,
          on_checkpoint=writer.save)
    out["writer_s"] = time.perf_counter() - started
    out["writer_io_s"], out["written"], out["bytes"] = writer.io_seconds, writer.written, writer.bytes_written

    child_plan = build_plan(schedule(epochs, 0.02), epochs, workload.steps_per_epoch)
    workload = build_workload(name, params, SEEDS)
    child = TrialBranch.open(config, name, params, SEEDS, child_plan, trial=1)
    before = child.io_seconds
    resume = child.resume()
    out["child_load_s"] = child.io_seconds - before
    out["child_reused"] = child.reused_epochs
    train(workload, child_plan, epochs, order_seed=SEEDS.batch_order, resume=resume)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fashion-train", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workloads = {"quadratic": {}, "ps10": {}, "digits": {},
                 "fashion_mnist": {"n_train": args.fashion_train, "n_val": 2000, "n_test": 1000}}
    print(f"epochs {args.epochs} (a checkpoint at each of the first {args.epochs - 1}), repeats {args.repeats}, "
          f"torch {torch.__version__}, 1 thread")
    print(f"  {'workload':<14} {'steps/ep':>8} {'written':>7} {'ckpt KB':>8} {'plain s':>8} {'writer s':>9} "
          f"{'writer/plain':>12} {'I/O s':>7} {'I/O share':>9} {'child load s':>12}  goal (< {GOAL_SHARE:.0%})")
    for name, params in workloads.items():
        try:
            probe = build_workload(name, params, SEEDS)
        except (SpecError, FileNotFoundError, OSError) as err:
            print(f"  {name:<14} left out: {err}")
            continue
        rounds = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="phasetune-ckpt-bench-") as root:
                rounds.append(one_round(name, params, args.epochs, root))

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        share = statistics.median(r["writer_io_s"] / r["writer_s"] for r in rounds)
        ratio = statistics.median(r["writer_s"] / r["plain_s"] for r in rounds)
        size_kb = med("bytes") / max(med("written"), 1) / 1e3
        print(f"  {name:<14} {probe.steps_per_epoch:>8} {med('written'):>7.0f} {size_kb:>8.1f} {med('plain_s'):>8.2f} "
              f"{med('writer_s'):>9.2f} {ratio:>11.3f}x {med('writer_io_s'):>7.3f} {share:>8.2%} "
              f"{med('child_load_s'):>12.4f}  "
              f"{'yes' if share < GOAL_SHARE else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
