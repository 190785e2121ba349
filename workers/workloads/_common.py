"""Helpers the built-in workloads share: seeded streams, an MLP builder and parameter checks."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces.errors import SpecError


def _stream_seed(seed: int, stream: str) -> int:
    # One independent seed per named stream, so that e.g. changing n_train never changes the initial weights.
    key = zlib.crc32(stream.encode())
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, key]).generate_state(1)[0])


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream ("data", "features", ...) of a trial seed."""
    return torch.Generator().manual_seed(_stream_seed(seed, stream))


@contextmanager
def seeded_init(seed: int, stream: str = "init") -> Iterator[None]:
    """Seed torch's global RNG while modules are built (nn.Linear draws from it), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_stream_seed(seed, stream))
        yield


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
