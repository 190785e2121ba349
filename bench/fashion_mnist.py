"""fashion_mnist: phasetune's epoch against a bare torch loop on the same model and data, and what a 2-phase
schedule reaches at the workload's defaults.

1. Epoch time. Epochs (training plus the validation pass) of ``phasetune.workers.train.train`` (the phased-optimizer
   driver, the workload's batching and evaluation) and of a bare loop written as a torch user would (index
   slicing, one SGD, ``model(x)``, a validation pass in batches of 1024), on copies of the same model and the same
   tensors, interleaved epoch by epoch for ``--rounds`` epochs after one warm-up epoch each. Printed: the median
   epoch seconds of each and the median of the per-epoch ratios bare / phasetune (1.0: phasetune costs nothing;
   the goal is >= 0.95).
2. Accuracy. The 2-phase schedule below, trained ``--epochs`` epochs at the workload's defaults: validation accuracy
   per epoch and the test accuracy at the end. The schedule is fixed here, not tuned: lr 0.2 (Nesterov momentum
   0.9) for 60% of the run, then a cosine from 0.05 down, weight decay 5e-4 throughout (none on biases and norms).

Run: ``.venv/bin/python bench/fashion_mnist.py [--rounds 9] [--epochs 10] [--device cpu|cuda] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import time
from statistics import median

import torch

from phasetune.search_spaces import build_plan
from phasetune.workers.seeding import batch_order
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload


def schedule(epochs: int) -> dict:
    return {"family": "phases", "transition_epochs": [round(0.6 * epochs)], "phases": [
        {"optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"optimizer": "sgd", "family": "cosine", "lr": 0.05, "eta_min": 0.0, "momentum": 0.9, "weight_decay": 5e-4},
    ]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, w, epoch: int, device: str) -> float:
    """What a torch user writes: slices of a shuffled index, a plain SGD step, then the validation pass."""
    sync(device)
    started = time.perf_counter()
    x, y, n, bs = w.train_x, w.train_y, len(w.train_x), w.batch_size
    model.train()
    order = batch_order(n, 0, epoch).to(x.device)
    for start in range(0, n, bs):
        index = order[start:start + bs]
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(w.val_x[i:i + 1024]).argmax(-1) == w.val_y[i:i + 1024]).sum() for i in
                      range(0, len(w.val_x), 1024))
        float(correct)
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved epochs timed (after a warm-up)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets its cpus' worth)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the schedule has two phases)")
    torch.set_num_threads(args.threads)

    w = build_workload("fashion_mnist", {}, 0).to(args.device)
    bare_model = copy.deepcopy(w.model)
    groups = {id(p): g for g in w.param_groups for p in g["params"]}  # the same decay-free biases and norms
    bare_opt = torch.optim.SGD(
        [{"params": [q for p, q in zip(w.model.parameters(), bare_model.parameters()) if groups[id(p)] is g],
          "weight_decay": 5e-4 * g.get("weight_decay_scale", 1.0)} for g in w.param_groups],
        lr=0.2, momentum=0.9, nesterov=True)
    one_epoch = {"family": "constant", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    print(f"fashion_mnist at its defaults: {len(w.train_x)} train / {len(w.val_x)} val images, batch {w.batch_size}, "
          f"{w.steps_per_epoch} steps per epoch, width {w.params['width']}, device {args.device}, "
          f"{args.threads} thread(s)")

    # One phasetune run of rounds + 1 epochs; after each of its epochs (inside its epoch callback) one bare epoch.
    # Epoch 0 of each is the warm-up. phasetune's own `seconds` cover the training epoch and the validation pass,
    # as the bare epoch does (the test split, evaluated once at the very end, is in neither).
    bare_s: list[float] = []
    history = train(w, build_plan(one_epoch, args.rounds + 1, w.steps_per_epoch), args.rounds + 1,
                    on_epoch=lambda m: bare_s.append(bare_epoch(bare_model, bare_opt, w, m["epoch"], args.device)))
    ours_s = [h["seconds"] for h in history[1:]]
    ratios = [b / a for a, b in zip(ours_s, bare_s[1:])]
    print(f"epoch seconds: phasetune {median(ours_s):.3f}, bare torch {median(bare_s[1:]):.3f}; "
          f"median ratio bare/phasetune over {args.rounds} interleaved epochs: {median(ratios):.3f} "
          f"(per epoch: {', '.join(f'{r:.3f}' for r in ratios)})")

    fresh = build_workload("fashion_mnist", {}, 0).to(args.device)
    started = time.perf_counter()
    history = train(fresh, build_plan(schedule(args.epochs), args.epochs, fresh.steps_per_epoch), args.epochs)
    print(f"2-phase schedule, {args.epochs} epochs ({time.perf_counter() - started:.1f} s): val accuracy per epoch "
          f"{[round(h['val_accuracy'], 4) for h in history]}; final val {history[-1]['val_accuracy']:.4f}, "
          f"test {history[-1]['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
