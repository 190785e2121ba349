"""Units of learning-rate ranges: a range may be stated in the model's own LRs, which the probes measure.

``{"low": 1.0, "high": 6.0, "log": true, "unit": "lr_crit"}`` is searched in its own units and scaled by the
study's probe results when sampled (``params.suggest``). Only learning rates take a unit.
"""

from __future__ import annotations

from phasetune.search_spaces import params
from phasetune.search_spaces.errors import Loc, SpecError

UNITS = ("lr_crit", "lr_div")  # lr_crit = 2/λ0 (curvature probe), lr_div = the range test's divergence LR
LR_FIELDS = frozenset({"lr", "effective_lr", "eta_min", "base_lr", "max_lr"})


def check(param: params.Param, field: str, loc: Loc) -> None:
    """Refuse an unknown unit, or a unit on ``field`` when it is not a learning rate; ``loc`` locates ``param``."""
    if not isinstance(param, params.Range) or param.unit is None:
        return
    if param.unit not in UNITS:
        raise SpecError((*loc, "unit"), f"unknown unit {param.unit!r}; one of {list(UNITS)}")
    if field not in LR_FIELDS:
        raise SpecError((*loc, "unit"), f"only learning rates take a unit ({sorted(LR_FIELDS)}), not {field!r}")
