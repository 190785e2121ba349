"""``sgdr``: cosine annealing with warm restarts (Loshchilov & Hutter; ``CosineAnnealingWarmRestarts``)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.checks import Interval
from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families.base import (
    Field,
    Horizon,
    LRSchedule,
    Point,
    duration,
    learning_rate,
    lr_floor,
    register,
)


@register
@dataclass(frozen=True)
class SGDR(LRSchedule):
    """Cycle ``i`` lasts ``T_i = round(T_0 * t_mult ** i)`` steps (``T_0 = round(t_0 * steps_per_epoch)``).

    Within cycle ``i``, started at ``S_i``: ``lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * (t - S_i) / T_i)) / 2``.
    The cycle index is found with integer arithmetic (precomputed cycle starts), never a float ``log``.

    Equals ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` stepped once per optimizer step (no ``epoch``
    argument) when ``T_0`` and ``t_mult`` are integers. Deliberate differences: ``t_0`` is in (fractional) epochs
    and ``t_mult`` may be any real >= 1 (torch needs integers); past the end the value at ``T`` is held.
    """

    lr: float
    eta_min: float
    starts: tuple[int, ...]  # cycle starts, the last one past the span's end
    total_steps: int
    name = "sgdr"
    fields = {
        "lr": Field("float", required=True, check=learning_rate),
        "t_0": Field("float", required=True, check=duration),
        "t_mult": Field("float", 1.0, check=Interval(1, note="cycles cannot shrink")),
        "eta_min": Field("float", 0.0, check=lr_floor),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> SGDR:
        if params["eta_min"] > params["lr"]:
            raise SpecError(("eta_min",), f"must be <= lr ({params['lr']}), got {params['eta_min']}")
        if params["t_mult"] < 1:
            raise SpecError(("t_mult",), f"must be >= 1, got {params['t_mult']}")
        t0 = horizon.steps(params["t_0"])
        if t0 < 1:
            raise SpecError(("t_0",), f"{params['t_0']} epochs is shorter than one optimizer step")
        starts, i = [0], 0
        while starts[-1] <= horizon.total_steps:
            try:  # a cycle beyond 2**62 steps is as flat over any span as an infinite one (and stays an int)
                length = min(t0 * float(params["t_mult"]) ** i, 2.0**62)
            except OverflowError:  # t_mult ** i beyond any float
                length = 2.0**62
            starts.append(starts[-1] + max(1, round(length)))
            i += 1
        return cls(float(params["lr"]), float(params["eta_min"]), tuple(starts), horizon.total_steps)

    def __call__(self, step: int) -> Point:
        t = min(step, self.total_steps)
        i = bisect.bisect_right(self.starts, t) - 1
        start, length = self.starts[i], self.starts[i + 1] - self.starts[i]
        return Point(self.eta_min + (self.lr - self.eta_min) * (1.0 + math.cos(math.pi * (t - start) / length)) / 2.0)
