"""``constant``: one learning rate for the whole span."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.families.base import Field, Horizon, LRSchedule, Point, learning_rate, register


@register
@dataclass(frozen=True)
class Constant(LRSchedule):
    """``lr(t) = lr``."""

    lr: float
    name = "constant"
    fields = {"lr": Field("float", required=True, check=learning_rate)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> Constant:
        return cls(lr=float(params["lr"]))

    def __call__(self, step: int) -> Point:
        return Point(self.lr)
