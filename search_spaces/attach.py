"""Drive a user's torch optimizer with a phasetune schedule, outside phasetune: ``attach``.

``attach`` wraps the phased-optimizer driver (``search_spaces.phased``) that the training loop of a study uses, so
the exported best schedule trains in a user's loop as it trained in its trial: the same lr and momentum at every
step, and at each phase boundary the same fresh start (empty state, the phase's weight decay and nesterov).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from phasetune.search_spaces.phased import PhasedOptimizer
from phasetune.search_spaces.plan import build_plan


class ScheduleDriver(LRScheduler):
    """An ``LRScheduler`` over a phasetune schedule: call ``step()`` once per optimizer step.

    Construction applies step 0 (as torch schedulers do). ``get_last_lr()``, ``state_dict()`` and
    ``load_state_dict()`` behave as in torch (the optimizer's own state is saved and loaded by its own
    ``state_dict``); the state holds the step count and the state of loss-driven families (AutoDecay), so resuming
    from a checkpoint gives identical values. ``observe(epoch, mean_train_loss)`` feeds loss-driven families and
    returns False when the schedule asks to stop training.

    Every phase runs on the given optimizer, so a phase that names an optimizer type must name its type (a
    schedule that switches types needs ``search_spaces.PhasedOptimizer``, which makes each phase's optimizer).
    """

    def __init__(self, schedule: Mapping[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 epochs: int) -> None:
        # No super().__init__: torch's base wraps optimizer.step and steps in its constructor; we need neither.
        self.optimizer = optimizer
        self.schedule = copy.deepcopy(dict(schedule))
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.driver = PhasedOptimizer(build_plan(self.schedule, epochs, steps_per_epoch), optimizer=optimizer)
        self.base_lrs = [self.driver.plan(0).lr for _ in optimizer.param_groups]
        self._apply()

    @property
    def last_epoch(self) -> int:
        """torch's name for the number of ``step()`` calls."""
        return self.driver.steps_done

    @last_epoch.setter
    def last_epoch(self, steps: int) -> None:
        self.driver.steps_done = int(steps)

    def _apply(self) -> None:
        self.driver.prepare()
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        if epoch is not None:
            raise TypeError("step(epoch) is not supported: call step() once per optimizer step")
        self.driver.advance()
        self._apply()

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.driver.plan(self.last_epoch).lr for _ in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        return [float(lr) for lr in self._last_lr]

    def observe(self, epoch: int, train_loss: float) -> bool:
        return self.driver.observe(epoch, train_loss)

    def extra_attrs(self) -> dict[str, Any]:
        return self.driver.plan.extra_attrs()

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.driver.state_dict(include_optimizer=False),
            "schedule": copy.deepcopy(self.schedule),
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if "steps_done" not in state_dict:
            raise ValueError("state_dict was saved by another version of phasetune's scheduler (no 'steps_done')")
        if (state_dict["schedule"], state_dict["epochs"], state_dict["steps_per_epoch"]) != (
                self.schedule, self.epochs, self.steps_per_epoch):
            raise ValueError("state_dict was saved for a different schedule, epochs or steps_per_epoch")
        self.driver.load_state_dict(state_dict)
        # Re-apply lr and momentum: the optimizer's own state_dict restores them too, but this also covers an
        # optimizer that was not restored (the driver has just written the phase's stated settings into it).
        self._apply()


def attach(schedule: Mapping[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int,
           epochs: int) -> ScheduleDriver:
    """Drive ``optimizer``'s lr and momentum (or Adam's beta1) with a concrete ``schedule`` for ``epochs`` epochs.

    Example::

        sched = attach({"family": "cosine", "lr": 0.1, "warmup": {"epochs": 1}}, opt, len(loader), 90)
        for epoch in range(90):
            for x, y in loader:
                loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad(); sched.step()
    """
    return ScheduleDriver(schedule, optimizer, steps_per_epoch, epochs)
