"""``onecycle``: Smith's 1cycle policy, two- or three-phase, cos or linear (torch ``OneCycleLR``)."""

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
    learning_rate,
    momentum_range,
    open_unit_interval,
    positive,
    register,
)


@dataclass(frozen=True)
class _Phase:
    end: float  # step index at which the phase ends (torch's ``end_step``)
    lr: tuple[float, float]
    momentum: tuple[float, float]


@register
@dataclass(frozen=True)
class OneCycle(LRSchedule):
    """torch's phases over ``T`` steps, ``p = pct_start``, ``init = max_lr / div_factor``,
    ``min = init / final_div_factor``, momentum ``hi = max_momentum``, ``lo = base_momentum``:

    * two-phase: until step ``pT - 1`` lr ``init -> max_lr`` and momentum ``hi -> lo``; until ``T - 1``
      lr ``max_lr -> min`` and momentum ``lo -> hi``;
    * three-phase: ``init -> max_lr`` until ``pT - 1``, ``max_lr -> init`` until ``2pT - 2``, ``init -> min``
      until ``T - 1``; momentum ``hi -> lo -> hi``, then stays at ``hi``.

    Within a phase from ``s`` to ``e``, ``pi = (t - s) / (e - s)`` and the value anneals by ``cos``
    (``b + (a - b)(1 + cos(pi * pi))/2``) or ``linear`` (``a + (b - a) pi``).

    Equals ``OneCycleLR(total_steps=T, ...)`` for ``t <= T - 1``. Deliberate differences: we hold the final value
    for ``t >= T - 1`` (torch extrapolates one extra step, below ``min`` and possibly negative with ``linear``,
    then raises); ``pct_start`` must lie in (0, 1) with every phase at least one step long, and ``three_phase``
    needs ``pct_start <= 0.5`` (torch divides by zero or runs phases backwards instead).
    """

    phases: tuple[_Phase, ...]
    anneal: str
    cycle_momentum: bool
    total_steps: int
    name = "onecycle"
    fields = {
        "max_lr": Field("float", required=True, check=learning_rate),
        "pct_start": Field("float", 0.3, check=open_unit_interval),
        "div_factor": Field("float", 25.0, check=positive),
        "final_div_factor": Field("float", 1e4, check=positive),
        "anneal_strategy": Field("str", "cos", check=one_of("cos", "linear")),
        "three_phase": Field("bool", False),
        "cycle_momentum": Field("bool", True),
        "base_momentum": Field("float", 0.85, check=momentum_range),
        "max_momentum": Field("float", 0.95, check=momentum_range),
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> OneCycle:
        total, pct = horizon.total_steps, float(params["pct_start"])
        if not 0 < pct < 1:
            raise SpecError(("pct_start",), f"must be in (0, 1), got {pct}")
        if params["three_phase"] and pct > 0.5:
            raise SpecError(("pct_start",), f"three_phase needs pct_start <= 0.5, got {pct}")
        if pct * total - 1 <= 0:
            raise SpecError(("pct_start",), f"pct_start * span ({pct} * {total} steps) must exceed one step")
        if (1 - pct) * total <= 1:
            raise SpecError(("pct_start",), f"(1 - pct_start) * span ({1 - pct} * {total} steps) must exceed one step")
        if params["cycle_momentum"] and params["base_momentum"] > params["max_momentum"]:
            raise SpecError(("base_momentum",), f"must be <= max_momentum ({params['max_momentum']}), "
                                                f"got {params['base_momentum']}")
        peak = float(params["max_lr"])
        init = peak / float(params["div_factor"])
        low = init / float(params["final_div_factor"])
        hi, lo = float(params["max_momentum"]), float(params["base_momentum"])
        phases: tuple[_Phase, ...]
        if params["three_phase"]:
            phases = (
                _Phase(float(pct * total) - 1, (init, peak), (hi, lo)),
                _Phase(float(2 * pct * total) - 2, (peak, init), (lo, hi)),
                _Phase(total - 1, (init, low), (hi, hi)),
            )
        else:
            phases = (
                _Phase(float(pct * total) - 1, (init, peak), (hi, lo)),
                _Phase(total - 1, (peak, low), (lo, hi)),
            )
        return cls(phases, params["anneal_strategy"], bool(params["cycle_momentum"]), total)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def __call__(self, step: int) -> Point:
        t = min(step, self.total_steps - 1)
        start = 0.0
        for i, phase in enumerate(self.phases):
            if t <= phase.end or i == len(self.phases) - 1:
                pct = (t - start) / (phase.end - start)
                lr = self._anneal(*phase.lr, pct)
                momentum = self._anneal(*phase.momentum, pct) if self.cycle_momentum else None
                return Point(lr, momentum)
            start = phase.end
        raise AssertionError("unreachable: the last phase always matches")
