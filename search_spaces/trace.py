"""``trace``: the per-step lr and momentum an optimizer would use under a schedule (the training loop's code path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phasetune.search_spaces.plan import build_plan


def trace(schedule: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> dict[str, list[Any]]:
    """Per-step ``lr``, ``momentum`` (None where the schedule leaves it alone) and ``phase`` for a concrete schedule."""
    plan = build_plan(schedule, epochs, steps_per_epoch)
    values = [plan(step) for step in range(plan.total_steps)]
    return {
        "lr": [v.lr for v in values],
        "momentum": [v.momentum for v in values],
        "phase": [v.phase for v in values],
    }
