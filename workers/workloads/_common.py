"""Helpers the built-in workloads share: an MLP builder and parameter checks (seeds: ``workers.seeding``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from search_spaces.errors import SpecError


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last); call inside ``seeded_init``."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def check_int(params: Mapping[str, Any], name: str, low: int) -> None:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SpecError((name,), f"must be an integer, got {value!r}")
    if value < low:
        raise SpecError((name,), f"must be >= {low}, got {value}")


def check_float(
    params: Mapping[str, Any], name: str, low: float, high: float = math.inf, *, open_low: bool = False,
    open_high: bool = False,
) -> None:
    """A finite number in [low, high]; ``open_*`` excludes that end."""
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SpecError((name,), f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SpecError((name,), f"must be finite, got {value}")
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if too_low or too_high:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise SpecError((name,), f"must lie in {left}{low}, {high}{right}, got {value}")
