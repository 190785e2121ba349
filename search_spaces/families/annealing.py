"""What ``cosine``, ``linear`` and ``rex`` share: anneal from ``lr`` to ``eta_min`` over the span along a profile."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families.base import (
    Field,
    Horizon,
    LRSchedule,
    Point,
    learning_rate,
    lr_floor,
)


@dataclass(frozen=True)
class Annealing(LRSchedule):
    """``lr(t) = eta_min + (lr - eta_min) * rho(z)``, ``z = min(t, T) / T``, ``T`` the span in steps.

    A subclass gives the profile ``rho`` (``rho(0) = 1``, ``rho(1) = 0``) and any fields of its own beyond
    ``lr`` and ``eta_min``, which ``from_params`` passes through as floats. Past the end ``eta_min`` is held.
    """

    lr: float
    eta_min: float
    total_steps: int
    fields: ClassVar[Mapping[str, Field]] = {
        "lr": Field("float", required=True, check=learning_rate),
        "eta_min": Field("float", 0.0, check=lr_floor),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Annealing:
        if params["eta_min"] > params["lr"]:
            raise SpecError(("eta_min",), f"must be <= lr ({params['lr']}), got {params['eta_min']}")
        own = {key: float(params[key]) for key in cls.fields if key not in ("lr", "eta_min")}
        return cls(lr=float(params["lr"]), eta_min=float(params["eta_min"]), total_steps=horizon.total_steps, **own)

    @abstractmethod
    def rho(self, z: float) -> float:
        """The profile at normalised progress ``z`` in [0, 1]."""

    def __call__(self, step: int) -> Point:
        z = min(step, self.total_steps) / self.total_steps
        return Point(self.eta_min + (self.lr - self.eta_min) * self.rho(z))
