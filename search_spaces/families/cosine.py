"""``cosine``: cosine annealing from ``lr`` to ``eta_min`` over the span, no restart (``CosineAnnealingLR``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from phasetune.search_spaces.families.annealing import Annealing
from phasetune.search_spaces.families.base import register


@register
@dataclass(frozen=True)
class Cosine(Annealing):
    """``lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2``, ``T`` the span in steps.

    Matches ``CosineAnnealingLR(T_max=T, eta_min)`` stepped per optimizer step for ``t <= T``. Deliberate
    differences: closed form (torch recurses, drifting by ~1e-12 relative), and we hold ``eta_min`` for
    ``t > T`` where torch climbs back up (period ``2T``). Warmup is the generic segment ``warmup`` wrapper.
    """

    name = "cosine"

    def rho(self, z: float) -> float:
        return (1.0 + math.cos(math.pi * z)) / 2.0
