"""Schedule families, one module each; importing this package registers them all in ``FAMILIES``."""

from phasetune.search_spaces.families import (  # noqa: F401  (registers)
    autodecay,
    constant,
    cosine,
    cyclic,
    exponential,
    linear,
    multistep,
    onecycle,
    rex,
    sgdr,
    step,
)
from phasetune.search_spaces.families.base import FAMILIES, Field, Horizon, LRSchedule, Point, register
from phasetune.search_spaces.families.warmup import Warmup

__all__ = ["FAMILIES", "Field", "Horizon", "LRSchedule", "Point", "Warmup", "register"]
