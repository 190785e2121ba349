"""The training loop: one readable function that trains a workload under a schedule plan.

The plan is asked for (phase, lr, momentum) at every optimizer step and the loop writes those into the optimizer's
param groups (``apply_to_optimizer``). At a phase boundary the optimizer starts fresh (a new algorithm, as in the
two-regimes paper: the momentum buffer is reset) unless the phase asks to keep its state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from search_spaces.attach import apply_to_optimizer
from search_spaces.plan import Plan
from search_spaces.segment import OptimizerSettings
from workers.workloads import Workload

EpochCallback = Callable[[dict[str, Any]], None]


def make_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter], lr: float,
                   momentum: float | None) -> torch.optim.Optimizer:
    """A fresh optimizer for one phase; lr and momentum are rewritten every step anyway."""
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, nesterov=settings.nesterov,
                               weight_decay=settings.weight_decay)
    optimizer_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[settings.name]
    beta1 = 0.9 if momentum is None else momentum
    return optimizer_cls(params, lr=lr, betas=(beta1, 0.999), weight_decay=settings.weight_decay)


def realised_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    """The momentum the optimizer actually uses: SGD's ``momentum`` or Adam's beta1."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None


def _carry_over(optimizer: torch.optim.Optimizer, settings: OptimizerSettings) -> torch.optim.Optimizer:
    """Keep the optimizer (and its buffers) across a boundary, adopting the new phase's static settings."""
    for group in optimizer.param_groups:
        group["weight_decay"] = settings.weight_decay
        if "nesterov" in group:
            group["nesterov"] = settings.nesterov
    return optimizer


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


def train(workload: Workload, plan: Plan, epochs: int, *, seed: int = 0,
          on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
    """Train ``workload`` for up to ``epochs`` epochs under ``plan``; return (and stream) per-epoch metrics.

    Training ends early when the loss diverges (non-finite) or a loss-driven schedule (AutoDecay) says so.
    """
    model, n, batch_size = workload.model, len(workload.train_x), workload.batch_size
    steps_per_epoch = workload.steps_per_epoch
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer: torch.optim.Optimizer | None = None
    current_phase = -1
    history: list[dict[str, Any]] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(workload.train_x.device)
        loss_sum = torch.zeros((), device=workload.train_x.device)  # summed on device: no sync per step
        first_lr = first_momentum = None
        for batch in range(steps_per_epoch):
            values = plan(epoch * steps_per_epoch + batch)
            if values.phase != current_phase:
                settings = plan.phases[values.phase].optimizer
                same_kind = optimizer is not None and settings.name == plan.phases[current_phase].optimizer.name
                if same_kind and settings.keep_state:
                    optimizer = _carry_over(optimizer, settings)
                else:
                    optimizer = make_optimizer(settings, model.parameters(), values.lr, values.momentum)
                current_phase = values.phase
            assert optimizer is not None
            apply_to_optimizer(optimizer, values.lr, values.momentum)
            if batch == 0:
                first_lr = optimizer.param_groups[0]["lr"]
                first_momentum = realised_momentum(optimizer)
            index = order[batch * batch_size:(batch + 1) * batch_size]
            loss = workload.loss(model(workload.train_x[index]), workload.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
        train_loss = (loss_sum / n).item()
        val_loss, val_accuracy = evaluate(workload, workload.val_x, workload.val_y)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": first_lr,
            "momentum": first_momentum,
            "phase": current_phase,
            "seconds": time.perf_counter() - started,
        }
        if "val_accuracy" in workload.metrics:
            metrics["val_accuracy"] = val_accuracy
        history.append(metrics)
        diverged = not math.isfinite(train_loss)
        keep_going = plan.observe(epoch, train_loss) if not diverged else False
        metrics["done"] = diverged or not keep_going or epoch == epochs - 1
        if on_epoch is not None:
            on_epoch(metrics)
        if metrics["done"]:
            break
    return history
