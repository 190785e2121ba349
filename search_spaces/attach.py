"""Drive any torch optimizer with a phasetune schedule, outside phasetune: ``attach`` and ``apply_to_optimizer``.

``apply_to_optimizer`` is the one place that writes lr and momentum into param groups; the training loop
(``workers/train.py``) and ``attach`` both use it, so a schedule behaves the same in a study and in a user's loop.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from search_spaces.plan import Plan, build_plan


def apply_to_optimizer(optimizer: torch.optim.Optimizer, lr: float, momentum: float | None) -> None:
    """Write ``lr`` and, unless None, ``momentum`` into every param group.

    Momentum goes to ``momentum`` (SGD, RMSprop) or to ``betas[0]`` (Adam, AdamW: beta1 plays momentum's role,
    as in torch's ``OneCycleLR``). A group with neither key cannot take a momentum: that is a ValueError, not a
    silent no-op.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, *tuple(group["betas"])[1:])
        elif "momentum" in group:
            group["momentum"] = momentum
        else:
            raise ValueError(f"{type(optimizer).__name__} has no momentum or betas to set momentum {momentum} on")


class ScheduleDriver(LRScheduler):
    """An ``LRScheduler`` over a phasetune schedule: call ``step()`` once per optimizer step.

    Construction applies step 0 (as torch schedulers do). ``get_last_lr()``, ``state_dict()`` and
    ``load_state_dict()`` behave as in torch; the state holds the step count and the state of loss-driven families
    (AutoDecay), so resuming from a checkpoint gives identical values. ``observe(epoch, mean_train_loss)`` feeds
    loss-driven families and returns False when the schedule asks to stop training.

    At a phase boundary whose new phase does not set ``keep_optimizer_state``, the optimizer's state (momentum
    buffers, Adam moments) is cleared, which is what a fresh optimizer per phase means; pass
    ``reset_state_at_phases=False`` to keep it. Per-phase optimizer type, weight decay and nesterov are not
    applied: only lr and momentum are driven.
    """

    def __init__(self, schedule: Mapping[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 epochs: int, *, reset_state_at_phases: bool = True) -> None:
        # No super().__init__: torch's base wraps optimizer.step and steps in its constructor; we need neither.
        self.optimizer = optimizer
        self.schedule = copy.deepcopy(dict(schedule))
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.reset_state_at_phases = reset_state_at_phases
        self.plan: Plan = build_plan(self.schedule, epochs, steps_per_epoch)
        self.last_epoch = 0  # torch's name for the number of step() calls
        self.base_lrs = [self.plan(0).lr for _ in optimizer.param_groups]
        self._phase = 0
        self._apply()

    def _apply(self) -> None:
        values = self.plan(self.last_epoch)
        if values.phase != self._phase:
            if self.reset_state_at_phases and not self.plan.phases[values.phase].optimizer.keep_state:
                self.optimizer.state.clear()
            self._phase = values.phase
        apply_to_optimizer(self.optimizer, values.lr, values.momentum)
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        if epoch is not None:
            raise TypeError("step(epoch) is not supported: call step() once per optimizer step")
        self.last_epoch += 1
        self._apply()

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.plan(self.last_epoch).lr for _ in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        return list(self._last_lr)

    def observe(self, epoch: int, train_loss: float) -> bool:
        return self.plan.observe(epoch, train_loss)

    def extra_attrs(self) -> dict[str, Any]:
        return self.plan.extra_attrs()

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "phase": self._phase,
            "schedule": copy.deepcopy(self.schedule),
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "family_states": [
                phase.schedule.state_dict() if hasattr(phase.schedule, "state_dict") else None
                for phase in self.plan.phases
            ],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if (state_dict["schedule"], state_dict["epochs"], state_dict["steps_per_epoch"]) != (
                self.schedule, self.epochs, self.steps_per_epoch):
            raise ValueError("state_dict was saved for a different schedule, epochs or steps_per_epoch")
        for phase, state in zip(self.plan.phases, state_dict["family_states"]):
            if state is not None and hasattr(phase.schedule, "load_state_dict"):
                phase.schedule.load_state_dict(state)
        self.last_epoch = int(state_dict["last_epoch"])
        self._phase = int(state_dict["phase"])
        # Re-apply: the optimizer's own state_dict restores lr too, but this also covers a fresh optimizer.
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
