"""``rex``: the REX profile (Chen, Wolfe, Kyrillidis 2022), from ``lr`` to ``eta_min`` over the span."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.errors import SpecError
from search_spaces.families.base import Field, Horizon, LRSchedule, Point, non_negative, positive, register


def _alpha(v: Any) -> str | None:
    return None if 0 <= v < 1 else f"must be in [0, 1) (0.5 as published, 0.9 as in the authors' code), got {v}"


@register
@dataclass(frozen=True)
class Rex(LRSchedule):
    """``lr(t) = eta_min + (lr - eta_min) * rho(z)``, ``rho(z) = (1 - z) / (1 - alpha * z)``, ``z = min(t, T) / T``.

    ``alpha = 0.5`` is the published profile ``(1 - z) / (1/2 + (1 - z)/2)``; ``alpha = 0.9`` is the variant in the
    authors' code (much flatter); ``alpha = 0`` is linear. Sampled every step. torch has no REX class: the
    reference is ``LambdaLR`` with the same lambda. Past the end the value at ``T`` (``eta_min``) is held.
    """

    lr: float
    eta_min: float
    alpha: float
    total_steps: int
    name = "rex"
    fields = {
        "lr": Field("float", required=True, check=positive),
        "eta_min": Field("float", 0.0, check=non_negative),
        "alpha": Field("float", 0.5, check=_alpha),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Rex:
        if params["eta_min"] > params["lr"]:
            raise SpecError(("eta_min",), f"must be <= lr ({params['lr']}), got {params['eta_min']}")
        return cls(float(params["lr"]), float(params["eta_min"]), float(params["alpha"]), horizon.total_steps)

    @staticmethod
    def profile(z: float, alpha: float) -> float:
        return (1.0 - z) / (1.0 - alpha * z)

    def __call__(self, step: int) -> Point:
        z = min(step, self.total_steps) / self.total_steps
        return Point(self.eta_min + (self.lr - self.eta_min) * self.profile(z, self.alpha))
