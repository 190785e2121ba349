"""``linear``: decay the lr linearly from ``lr`` to ``eta_min`` over the span (REX's linear profile)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.errors import SpecError
from search_spaces.families.base import Field, Horizon, LRSchedule, Point, non_negative, positive, register


@register
@dataclass(frozen=True)
class Linear(LRSchedule):
    """``lr(t) = eta_min + (lr - eta_min) * (1 - min(t, T) / T)``, ``T`` the span in steps.

    torch references: ``PolynomialLR(total_iters=T, power=1)`` when ``eta_min = 0`` and
    ``LinearLR(start_factor=1, end_factor=eta_min / lr, total_iters=T)`` otherwise, both stepped per step.
    Both hold the final value past ``T``, as we do. The last step trained is ``T - 1``, so the lr never
    actually reaches ``eta_min`` during training.
    """

    lr: float
    eta_min: float
    total_steps: int
    name = "linear"
    fields = {
        "lr": Field("float", required=True, check=positive),
        "eta_min": Field("float", 0.0, check=non_negative),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Linear:
        if params["eta_min"] > params["lr"]:
            raise SpecError(("eta_min",), f"must be <= lr ({params['lr']}), got {params['eta_min']}")
        return cls(float(params["lr"]), float(params["eta_min"]), horizon.total_steps)

    def __call__(self, step: int) -> Point:
        z = min(step, self.total_steps) / self.total_steps
        return Point(self.eta_min + (self.lr - self.eta_min) * (1.0 - z))
