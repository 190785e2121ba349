"""``cosine``: cosine annealing from ``lr`` to ``eta_min`` over the span, no restart (``CosineAnnealingLR``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.errors import SpecError
from search_spaces.families.base import Field, Horizon, LRSchedule, Point, non_negative, positive, register


@register
@dataclass(frozen=True)
class Cosine(LRSchedule):
    """``lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2``, ``T`` the span in steps.

    Matches ``CosineAnnealingLR(T_max=T, eta_min)`` stepped per optimizer step for ``t <= T``. Deliberate
    differences: closed form (torch recurses, drifting by ~1e-12 relative), and we hold ``eta_min`` for
    ``t > T`` where torch climbs back up (period ``2T``). Warmup is the generic segment ``warmup`` wrapper.
    """

    lr: float
    eta_min: float
    total_steps: int
    name = "cosine"
    fields = {
        "lr": Field("float", required=True, check=positive),
        "eta_min": Field("float", 0.0, check=non_negative),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Cosine:
        if params["eta_min"] > params["lr"]:
            raise SpecError(("eta_min",), f"must be <= lr ({params['lr']}), got {params['eta_min']}")
        return cls(float(params["lr"]), float(params["eta_min"]), horizon.total_steps)

    def __call__(self, step: int) -> Point:
        z = min(step, self.total_steps) / self.total_steps
        return Point(self.eta_min + (self.lr - self.eta_min) * (1.0 + math.cos(math.pi * z)) / 2.0)
