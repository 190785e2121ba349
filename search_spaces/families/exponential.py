"""``exponential``: decay the lr smoothly by ``gamma`` per epoch (torch ``ExponentialLR``, stepped per step)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.families.base import (
    Field,
    Horizon,
    LRSchedule,
    Point,
    decay_factor,
    learning_rate,
    register,
)


@register
@dataclass(frozen=True)
class Exponential(LRSchedule):
    """``lr(t) = lr * gamma ** (t / steps_per_epoch)``: ``gamma`` is the factor per *epoch*.

    Equals ``ExponentialLR(gamma=gamma ** (1 / steps_per_epoch))`` stepped once per optimizer step (torch's
    gamma is per ``scheduler.step()`` call). Past the end of the span the value at ``T`` is held.
    """

    lr: float
    gamma_per_step: float
    total_steps: int
    name = "exponential"
    fields = {
        "lr": Field("float", required=True, check=learning_rate),
        "gamma": Field("float", required=True, check=decay_factor),  # per epoch
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Exponential:
        gamma_per_step = float(params["gamma"]) ** (1.0 / horizon.steps_per_epoch)
        return cls(float(params["lr"]), gamma_per_step, horizon.total_steps)

    def __call__(self, step: int) -> Point:
        return Point(self.lr * self.gamma_per_step ** min(step, self.total_steps))
