"""The training loop: one readable function that trains a workload under a schedule plan.

The phased-optimizer driver (``search_spaces.PhasedOptimizer``, the same one ``attach`` uses in a user's loop) sets
lr and momentum before every optimizer step and begins each phase's optimizer at its boundary. Batches follow the
study's seed policy: epoch e visits ``seeding.batch_order(n, order_seed, e)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from search_spaces.phased import PhasedOptimizer, realised_momentum
from search_spaces.plan import Plan
from workers.seeding import batch_order
from workers.workloads import Workload

EpochCallback = Callable[[dict[str, Any]], None]


@torch.no_grad()
def evaluate(workload: Workload, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy (NaN where the workload has no classes) over ``x``."""
    model = workload.model
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += workload.loss(out, target) * len(target)
        if workload.loss_kind == "cross_entropy":
            correct += (out.argmax(dim=-1) == target).sum()
    n = len(x)
    accuracy = (correct / n).item() if workload.loss_kind == "cross_entropy" else math.nan
    return (loss_sum / n).item(), accuracy


def train(workload: Workload, plan: Plan, epochs: int, *, order_seed: int = 0,
          on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
    """Train ``workload`` for up to ``epochs`` epochs under ``plan``; return (and stream) per-epoch metrics.

    Training ends early when the loss diverges (non-finite) or a loss-driven schedule (AutoDecay) says so.
    """
    model, n, batch_size = workload.model, len(workload.train_x), workload.batch_size
    steps_per_epoch = workload.steps_per_epoch
    driver = PhasedOptimizer(plan, model.parameters())
    history: list[dict[str, Any]] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = batch_order(n, order_seed, epoch).to(workload.train_x.device)
        loss_sum = torch.zeros((), device=workload.train_x.device)  # summed on device: no sync per step
        first_lr = first_momentum = None
        for batch in range(steps_per_epoch):
            driver.prepare()
            if batch == 0:
                first_lr = driver.optimizer.param_groups[0]["lr"]
                first_momentum = realised_momentum(driver.optimizer)
            index = order[batch * batch_size:(batch + 1) * batch_size]
            loss = workload.loss(model(workload.train_x[index]), workload.train_y[index])
            driver.zero_grad()
            loss.backward()
            driver.step()
            loss_sum += loss.detach() * len(index)
        train_loss = (loss_sum / n).item()
        val_loss, val_accuracy = evaluate(workload, workload.val_x, workload.val_y)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": first_lr,
            "momentum": first_momentum,
            "phase": driver.phase,
            "seconds": time.perf_counter() - started,
        }
        if "val_accuracy" in workload.metrics:
            metrics["val_accuracy"] = val_accuracy
        history.append(metrics)
        diverged = not math.isfinite(train_loss)
        keep_going = driver.observe(epoch, train_loss) if not diverged else False
        metrics["done"] = diverged or not keep_going or epoch == epochs - 1
        if on_epoch is not None:
            on_epoch(metrics)
        if metrics["done"]:
            break
    return history
