"""The training loop: one readable function that trains a workload under a schedule plan.

The phased-optimizer driver (``search_spaces.PhasedOptimizer``, the same one ``attach`` uses in a user's loop) sets
lr and momentum before every optimizer step and begins each phase's optimizer at its boundary. Batches follow the
study's seed policy: epoch e visits ``seeding.batch_order(n, order_seed, e)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from phasetune.search_spaces.phased import PhasedOptimizer, realised_momentum
from phasetune.search_spaces.plan import Plan
from phasetune.workers.cooldown import cooldown_probe
from phasetune.workers.seeding import batch_order, stream_seed
from phasetune.workers.study_attrs import INITIAL_LOSS, LARGE_STEP, LAST_EPOCH
from phasetune.workers.workloads import Workload

EpochCallback = Callable[[dict[str, Any]], bool | None]  # True: stop training here (an early stop)


class Probes(Protocol):
    """When to run a cooldown probe (the tree's ``FixedProbes``)."""

    fraction: float

    def due(self, completed: int, large_step: bool) -> bool: ...


@dataclass(frozen=True)
class Checkpoint:
    """All that training depends on at the end of epoch ``epoch``: the weights, the phased-optimizer driver (its
    position, the optimizer's state, loss-driven families' state), the RNG, and the curve so far. ``train`` resumed
    from it under any plan that agrees with the one that took it up to there trains exactly as a run from scratch
    under that plan would (bit-identical on CPU): the start of branching a trial from another's prefix."""

    epoch: int
    model: dict[str, Any]
    driver: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    initial_loss: float | None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(workload: Workload, plan: Plan, epochs: int, *, order_seed: int = 0,
          on_epoch: EpochCallback | None = None, probes: Probes | None = None,
          checkpoint_at: Container[int] = (), on_checkpoint: Callable[[Checkpoint], None] | None = None,
          resume: Checkpoint | None = None) -> list[dict[str, Any]]:
    """Train ``workload`` for up to ``epochs`` epochs under ``plan``; return (and stream) per-epoch metrics.

    Each epoch reports ``train_loss`` (the mean over its steps), ``val_loss`` and ``val_<metric>`` for the
    workload's metrics, the lr and momentum its first step used, its phase and seconds; the last epoch also
    ``test_loss`` and ``test_<metric>`` where the workload has a test split. Training ends early when the loss
    diverges (non-finite) or a loss-driven schedule (AutoDecay) says so, or ``on_epoch`` returns True. Epoch 0 also
    reports ``initial_loss`` (its first batch's, before any step); every epoch ``large_step_phase``; an epoch that
    ``probes`` marks, the cooldown probe's ``cooldown_*`` metrics (``phasetune.workers.cooldown``).

    At the end of each epoch in ``checkpoint_at`` that training goes on from, ``on_checkpoint`` gets a
    ``Checkpoint``; ``resume`` starts after the checkpoint's epoch instead of at 0 (``on_epoch`` is called for the
    epochs trained here only; the returned history holds the checkpoint's epochs too).
    """
    model, train_split = workload.model, workload.data.train
    # What draws from torch's global RNG while training (dropout, augmentation) draws the same in every process,
    # fresh or a warm worker's n-th trial.
    torch.manual_seed(stream_seed(order_seed, "train"))
    driver = PhasedOptimizer(plan, workload.optimizer_params())
    history: list[dict[str, Any]] = []
    initial_loss: float | None = None
    first_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        driver.load_state_dict(resume.driver)
        _set_rng_state(resume.rng)
        history, initial_loss, first_epoch = copy.deepcopy(resume.history), resume.initial_loss, resume.epoch + 1
    for epoch in range(first_epoch, epochs):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=workload.device)  # summed on device: no sync per step
        first_lr = first_momentum = None
        for batch, (x, y) in enumerate(workload.batches(train_split, batch_order(len(train_split), order_seed, epoch))):
            values = driver.prepare()
            if batch == 0:  # what the optimizer really uses (group 0's lr, less its group scale)
                group, scale = driver.optimizer.param_groups[0], driver.optimizer.param_groups[0].get("lr_scale", 1.0)
                first_lr = group["lr"] / scale if scale else values.lr
                first_momentum = realised_momentum(driver.optimizer)
            loss = workload.loss(workload.forward(x), y)
            if epoch == 0 and batch == 0:
                initial_loss = loss.item()  # the one sync it costs
            driver.zero_grad()
            loss.backward()
            driver.step()
            loss_sum += loss.detach() * len(y)
        train_loss = (loss_sum / len(train_split)).item()
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            **workload.evaluate(workload.data.val, "val"),
            "lr": first_lr,
            "momentum": first_momentum,
            "phase": driver.phase,
            "seconds": time.perf_counter() - started,
        }
        if epoch == 0:
            metrics[INITIAL_LOSS] = initial_loss
        history.append(metrics)
        diverged = not math.isfinite(train_loss)
        keep_going = driver.observe(epoch, train_loss) if not diverged else False
        metrics[LARGE_STEP] = plan.in_large_step_phase(driver.steps_done - 1)  # as the observed schedule now says
        metrics[LAST_EPOCH] = diverged or not keep_going or epoch == epochs - 1
        if metrics[LAST_EPOCH] and workload.data.test is not None:
            metrics.update(workload.evaluate(workload.data.test, "test"))
        if not metrics[LAST_EPOCH] and probes is not None and probes.due(epoch + 1, metrics[LARGE_STEP]):
            metrics.update(cooldown_probe(workload, driver, probes.fraction, order_seed, epoch))
        stop = on_epoch(metrics) if on_epoch is not None else None
        if metrics[LAST_EPOCH] or stop:
            break
        if epoch in checkpoint_at and on_checkpoint is not None:
            on_checkpoint(Checkpoint(epoch, copy.deepcopy(model.state_dict()), copy.deepcopy(driver.state_dict()),
                                     _rng_state(), copy.deepcopy(history), initial_loss))
    return history
