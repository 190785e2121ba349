"""Schedules, their search spaces and probes. Pure Python + torch: no Ray, no FastAPI."""

from phasetune.search_spaces.attach import ScheduleDriver, attach
from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families import FAMILIES
from phasetune.search_spaces.phased import PhasedOptimizer, apply_to_optimizer
from phasetune.search_spaces.plan import Plan, build_plan
from phasetune.search_spaces.space import sample as sample_schedule
from phasetune.search_spaces.space import validate as validate_schedule
from phasetune.search_spaces.trace import trace

__all__ = [
    "FAMILIES",
    "PhasedOptimizer",
    "Plan",
    "ScheduleDriver",
    "SpecError",
    "apply_to_optimizer",
    "attach",
    "build_plan",
    "sample_schedule",
    "trace",
    "validate_schedule",
]
