"""``linear``: decay the lr linearly from ``lr`` to ``eta_min`` over the span (REX's linear profile)."""

from __future__ import annotations

from dataclasses import dataclass

from phasetune.search_spaces.families.annealing import Annealing
from phasetune.search_spaces.families.base import register


@register
@dataclass(frozen=True)
class Linear(Annealing):
    """``lr(t) = eta_min + (lr - eta_min) * (1 - min(t, T) / T)``, ``T`` the span in steps.

    torch references: ``PolynomialLR(total_iters=T, power=1)`` when ``eta_min = 0`` and
    ``LinearLR(start_factor=1, end_factor=eta_min / lr, total_iters=T)`` otherwise, both stepped per step.
    Both hold the final value past ``T``, as we do. The last step trained is ``T - 1``, so the lr never
    actually reaches ``eta_min`` during training.
    """

    name = "linear"

    def rho(self, z: float) -> float:
        return 1.0 - z
