"""``rex``: the REX profile (Chen, Wolfe, Kyrillidis 2022), from ``lr`` to ``eta_min`` over the span."""

from __future__ import annotations

from dataclasses import dataclass

from phasetune.search_spaces.checks import Interval
from phasetune.search_spaces.families.annealing import Annealing
from phasetune.search_spaces.families.base import Field, register


@register
@dataclass(frozen=True)
class Rex(Annealing):
    """``lr(t) = eta_min + (lr - eta_min) * rho(z)``, ``rho(z) = (1 - z) / (1 - alpha * z)``, ``z = min(t, T) / T``.

    ``alpha = 0.5`` is the published profile ``(1 - z) / (1/2 + (1 - z)/2)``; ``alpha = 0.9`` is the variant in the
    authors' code (much flatter); ``alpha = 0`` is linear. Sampled every step. torch has no REX class: the
    reference is ``LambdaLR`` with the same lambda. Past the end the value at ``T`` (``eta_min``) is held.
    """

    alpha: float
    name = "rex"
    fields = {**Annealing.fields,
              "alpha": Field("float", 0.5, check=Interval(0, 1, open_high=True,
                                                          note="0.5 as published, 0.9 as in the authors' code"))}

    def rho(self, z: float) -> float:
        return (1.0 - z) / (1.0 - self.alpha * z)
