"""``cyclic``: Smith's cyclical learning rate, triangular / triangular2 / exp_range (torch ``CyclicLR``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.checks import one_of
from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families.base import (
    Field,
    Horizon,
    LRSchedule,
    Point,
    decay_factor,
    duration,
    learning_rate,
    momentum_range,
    register,
)

MODES = ("triangular", "triangular2", "exp_range")


@register
@dataclass(frozen=True)
class Cyclic(LRSchedule):
    """With ``L = up + down`` steps and ``r = up / L``: ``c = floor(1 + t/L)``, ``x = 1 + t/L - c``,
    ``s = x/r`` if ``x <= r`` else ``(x - 1)/(r - 1)``; amplitude ``a = 1`` (triangular), ``2^-(c-1)``
    (triangular2) or ``gamma_step^t`` (exp_range); ``lr = base_lr + (max_lr - base_lr) * s * a``.
    With ``cycle_momentum``: ``momentum = max_momentum - (max_momentum - base_momentum) * s * a``.

    Equals ``CyclicLR`` stepped once per optimizer step with ``step_size_up/down`` converted to steps.
    Deliberate differences: step sizes are in epochs; ``gamma`` is the exp_range factor per *epoch*
    (``gamma_step = gamma ** (1 / steps_per_epoch)``, torch's gamma is per step); ``cycle_momentum`` defaults
    to False (torch's True silently overwrites momentum); past the end the value at ``T`` is held.
    """

    base_lr: float
    max_lr: float
    up_steps: int
    down_steps: int
    mode: str
    gamma_per_step: float
    cycle_momentum: bool
    base_momentum: float
    max_momentum: float
    total_steps: int
    name = "cyclic"
    fields = {
        "base_lr": Field("float", required=True, check=learning_rate),
        "max_lr": Field("float", required=True, check=learning_rate),
        "step_size_up": Field("float", required=True, check=duration),
        "step_size_down": Field("float", None, check=duration),  # None: same as up
        "mode": Field("str", "triangular", check=one_of(*MODES)),
        "gamma": Field("float", 1.0, check=decay_factor),  # exp_range only, per epoch
        "cycle_momentum": Field("bool", False),
        "base_momentum": Field("float", 0.8, check=momentum_range),
        "max_momentum": Field("float", 0.9, check=momentum_range),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Cyclic:
        if params["base_lr"] > params["max_lr"]:
            raise SpecError(("base_lr",), f"must be <= max_lr ({params['max_lr']}), got {params['base_lr']}")
        if params["cycle_momentum"] and params["base_momentum"] > params["max_momentum"]:
            raise SpecError(("base_momentum",), f"must be <= max_momentum ({params['max_momentum']}), "
                                                f"got {params['base_momentum']}")
        up = horizon.steps(params["step_size_up"])
        down_epochs = params["step_size_down"] if params["step_size_down"] is not None else params["step_size_up"]
        down = horizon.steps(down_epochs)
        for key, steps, epochs in (("step_size_up", up, params["step_size_up"]), ("step_size_down", down, down_epochs)):
            if steps < 1:
                raise SpecError((key,), f"{epochs} epochs is shorter than one optimizer step")
        return cls(
            float(params["base_lr"]), float(params["max_lr"]), up, down, params["mode"],
            float(params["gamma"]) ** (1.0 / horizon.steps_per_epoch), bool(params["cycle_momentum"]),
            float(params["base_momentum"]), float(params["max_momentum"]), horizon.total_steps,
        )

    def __call__(self, step: int) -> Point:
        t = min(step, self.total_steps)
        total, ratio = float(self.up_steps + self.down_steps), self.up_steps / (self.up_steps + self.down_steps)
        # Same float expressions as torch, so cycle boundaries fall on the same steps.
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = self.gamma_per_step**t
        lr = self.base_lr + (self.max_lr - self.base_lr) * scale * amplitude
        if not self.cycle_momentum:
            return Point(lr)
        return Point(lr, self.max_momentum - (self.max_momentum - self.base_momentum) * scale * amplitude)
