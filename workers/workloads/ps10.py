"""Pattern Separation 10 (You et al., "How does learning rate decay help modern neural networks?", §5), CPU variant.

Why: its simple (10 patterns/class) and complex (100 patterns/class) sub-datasets have known complexity, so per-subset
training accuracy shows *what* each LR stage learns (claim C13 of docs/schedules-spec.md §5).

Data: patterns are 3-vectors drawn from U[0,1]^3 by the seed. An input is a 6-vector: channels 0-2 hold a simple
pattern and 3-5 a complex one, the absent half zero; half of the examples are simple, half complex. A fraction
``noise`` of the *training* examples instead get a fresh U[0,1]^3 pattern (in their half's channels) and a uniform
random label, so they can only be memorised. Validation is clean. Every input gets Gaussian ``jitter`` so that
validation examples are not copies of training ones.

Model (the spec's CPU variant): fixed random Fourier features of bandwidth ``bandwidth`` (a seeded buffer, not
trained), then one hidden ReLU layer and a linear head. A lower bandwidth makes the complex patterns harder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import generator
from phasetune.workers.workloads.contract import Data, Param, TensorSplit, WorkloadSpec
from phasetune.workers.workloads.models import mlp

N_CLASSES = 10
PATTERNS_PER_CLASS = {"simple": 10, "complex": 100}

PARAMS = {
    "n_train": Param(4000, "training examples", low=1, high=100_000),
    "n_val": Param(1000, "validation examples (always clean)", low=1, high=100_000),
    "noise": Param(0.0, "fraction of training examples with a random pattern and label (the paper: 0.1)",
                   low=0.0, high=1.0),
    "batch_size": Param(128, "examples per step", low=1),
    "features": Param(512, "random Fourier features", low=1, high=4096),
    "bandwidth": Param(4.0, "sigma of the feature frequencies, in units of 1/pattern coordinate", low=0.0),
    "hidden": Param(512, "width of the hidden layer", low=1, high=4096),
    "jitter": Param(0.01, "std of the Gaussian added to every input coordinate that holds a pattern", low=0.0),
}


class FourierFeatures(nn.Module):
    """sqrt(2) cos(sigma W x + b), W ~ N(0, I), b ~ U[0, 2 pi): unit-variance features of an RBF kernel."""

    def __init__(self, weight: torch.Tensor, phase: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("phase", phase.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0) * torch.cos(x @ self.weight.T + self.phase)


def validate(params: Mapping[str, Any]) -> None:
    if params["noise"] >= 1.0:
        raise SpecError(("noise",), f"must be < 1 (some clean examples), got {params['noise']}")
    if params["bandwidth"] <= 0:
        raise SpecError(("bandwidth",), f"must be > 0, got {params['bandwidth']}")


def train_size(params: Mapping[str, Any]) -> int:
    return int(params["n_train"])


def _sample(
    prototypes: dict[str, torch.Tensor], n: int, n_noise: int, jitter: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """n examples, half simple and half complex, the first n_noise of a random order made noisy."""
    kind = torch.arange(n) % 2  # 0 = simple, 1 = complex
    y = torch.randint(N_CLASSES, (n,), generator=gen)
    x = torch.zeros(n, 6)
    for k, name in enumerate(("simple", "complex")):
        rows = kind == k
        table = prototypes[name]  # (classes, patterns per class, 3)
        idx = torch.randint(table.shape[1], (int(rows.sum()),), generator=gen)
        x[rows, 3 * k : 3 * k + 3] = table[y[rows], idx]
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[torch.randperm(n, generator=gen)[:n_noise]] = True
    fresh = torch.rand(n, 3, generator=gen)
    for k in (0, 1):
        rows = noisy & (kind == k)
        x[rows, 3 * k : 3 * k + 3] = fresh[rows]
    y[noisy] = torch.randint(N_CLASSES, (n_noise,), generator=gen)
    present = torch.zeros(n, 6, dtype=torch.bool)
    present[:, :3], present[:, 3:] = (kind == 0)[:, None], (kind == 1)[:, None]
    x = x + jitter * torch.randn(n, 6, generator=gen) * present
    subsets = {"simple": (kind == 0) & ~noisy, "complex": (kind == 1) & ~noisy, "noise": noisy}
    return x, y, subsets


def data(params: Mapping[str, Any], seed: int) -> Data:
    gen = generator(seed, "data")
    prototypes = {name: torch.rand(N_CLASSES, k, 3, generator=gen) for name, k in PATTERNS_PER_CLASS.items()}
    n_noise = round(params["noise"] * params["n_train"])
    train_x, train_y, train_subsets = _sample(prototypes, params["n_train"], n_noise, params["jitter"], gen)
    val_x, val_y, val_subsets = _sample(prototypes, params["n_val"], 0, params["jitter"], gen)
    # The fixed random features are part of the problem, not of the trained weights: drawn from the data seed.
    features = generator(seed, "features")
    weight = params["bandwidth"] * torch.randn(params["features"], 6, generator=features)
    phase = 2 * math.pi * torch.rand(params["features"], generator=features)
    return Data(train=TensorSplit(train_x, train_y), val=TensorSplit(val_x, val_y),
                extra={"subsets": train_subsets, "val_subsets": val_subsets, "prototypes": prototypes,
                       "features": (weight, phase)})


def model(params: Mapping[str, Any], data: Data) -> nn.Module:
    weight, phase = data.extra["features"]
    return nn.Sequential(FourierFeatures(weight, phase), mlp([params["features"], params["hidden"], N_CLASSES]))


SPEC = WorkloadSpec(
    name="ps10", params=PARAMS, data=data, model=model, train_size=train_size, validate=validate,
    description="Pattern Separation 10 (You et al.): simple and complex synthetic patterns, optional label noise, "
                "random Fourier features and an MLP",
)
