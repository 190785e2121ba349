"""Regime probes (issue 5): the curvature probe (lr_crit = 2/λ0) and the LR range test (lr_div).

Their outputs are the units of regime-aware ranges: a range ``{"low", "high", "unit": "lr_crit"}`` is
scaled by ``units = probe_units(curvature, range_test)`` in ``phasetune.search_spaces.params.suggest``.
Pure torch; the REST layer stores ``result_to_dict(result)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from phasetune.search_spaces.jsonsafe import json_safe
from phasetune.search_spaces.probes.curvature import (
    LOSS_KINDS,
    CurvatureResult,
    estimate_curvature,
    exact_curvature,
    probe_batch,
)
from phasetune.search_spaces.probes.lr_range import LRRangeResult, lr_range_test
from phasetune.search_spaces.probes.options import PROBE_BATCH, CurvatureOptions, LRRangeOptions

__all__ = [
    "LOSS_KINDS",
    "PROBE_BATCH",
    "CurvatureOptions",
    "CurvatureResult",
    "LRRangeOptions",
    "LRRangeResult",
    "estimate_curvature",
    "exact_curvature",
    "lr_range_test",
    "probe_batch",
    "probe_units",
    "result_to_dict",
]


def result_to_dict(result: CurvatureResult | LRRangeResult) -> dict[str, Any]:
    """A JSON-ready dict with a ``"kind"`` tag; non-finite floats (a NaN loss, lr_crit = inf) become None.

    JSON has no NaN/Infinity, and a diverged range test ends on a NaN or huge loss by design.
    """
    if isinstance(result, CurvatureResult):
        kind = "curvature"
    elif isinstance(result, LRRangeResult):
        kind = "lr_range"
    else:
        raise TypeError(f"not a probe result: {type(result).__name__}")
    return json_safe({"kind": kind, **asdict(result)})  # type: ignore[no-any-return]


def probe_units(
    curvature: CurvatureResult | None = None, lr_range: LRRangeResult | None = None
) -> dict[str, float]:
    """The ``units`` mapping for ``phasetune.search_spaces.params.suggest``: {"lr_crit": 2/λ0, "lr_div": η_div}.

    A unit is left out when its probe was not run or gave no finite value, so a range that needs it fails
    with a located SpecError instead of silently scaling by garbage.
    """
    units: dict[str, float] = {}
    if curvature is not None and math.isfinite(curvature.lr_crit):
        units["lr_crit"] = curvature.lr_crit
    if lr_range is not None and math.isfinite(lr_range.lr_div):
        units["lr_div"] = lr_range.lr_div
    return units


