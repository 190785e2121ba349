"""``step``: divide the lr by ``1/gamma`` every ``step_size`` epochs (torch ``StepLR``, stepped per optimizer step)."""

from __future__ import annotations

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
class Step(LRSchedule):
    """``lr(t) = lr * gamma ** floor(t / s)`` with ``s = round(step_size * steps_per_epoch)`` steps.

    Equals ``StepLR(step_size=s, gamma=gamma)`` stepped once per optimizer step. Past the end of its span
    (``t > T``) the value at ``T`` is held.
    """

    lr: float
    step_steps: int
    gamma: float
    total_steps: int
    name = "step"
    fields = {
        "lr": Field("float", required=True, check=learning_rate),
        "step_size": Field("float", required=True, check=duration),
        "gamma": Field("float", 0.1, check=positive),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Step:
        steps = horizon.steps(params["step_size"])
        if steps < 1:
            raise SpecError(("step_size",), f"{params['step_size']} epochs is shorter than one optimizer step")
        return cls(float(params["lr"]), steps, float(params["gamma"]), horizon.total_steps)

    def __call__(self, step: int) -> Point:
        t = min(step, self.total_steps)
        return Point(self.lr * self.gamma ** (t // self.step_steps))
