"""``multistep``: multiply the lr by ``gamma`` at each milestone epoch (torch ``MultiStepLR``, stepped per step)."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families.base import (
    Field,
    Horizon,
    LRSchedule,
    Point,
    duration,
    learning_rate,
    positive,
    register,
)


@register
@dataclass(frozen=True)
class MultiStep(LRSchedule):
    """``lr(t) = lr * gamma ** #{m in milestones : m <= t}``, milestones in epochs converted to steps.

    Equals ``MultiStepLR(milestones=[round(m * steps_per_epoch)], gamma)`` stepped once per optimizer step.
    Milestones must be strictly increasing (torch counts repeated milestones twice; we refuse them instead).
    A milestone past the end of the span never fires. Past the end the value at ``T`` is held.
    """

    lr: float
    milestone_steps: tuple[int, ...]
    gamma: float
    total_steps: int
    name = "multistep"
    fields = {
        "lr": Field("float", required=True, check=learning_rate),
        "milestones": Field("list", required=True, check=duration),
        "gamma": Field("float", 0.1, check=positive),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> MultiStep:
        milestones = list(params["milestones"])
        if not milestones:
            raise SpecError(("milestones",), "must list at least one epoch")
        if (msg := positive(milestones)) is not None:
            raise SpecError(("milestones",), msg)
        steps = [horizon.steps(m) for m in milestones]
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                raise SpecError(("milestones", i), f"milestones must be strictly increasing, got {milestones}")
        if steps[0] < 1:
            raise SpecError(("milestones", 0), f"{milestones[0]} epochs is shorter than one optimizer step")
        return cls(float(params["lr"]), tuple(steps), float(params["gamma"]), horizon.total_steps)

    def __call__(self, step: int) -> Point:
        t = min(step, self.total_steps)
        return Point(self.lr * self.gamma ** bisect.bisect_right(self.milestone_steps, t))
