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

from workers.seeding import Seeds, generator, seeded_init
from workers.workloads._common import check_float, check_int, mlp
from workers.workloads.base import Workload, WorkloadSpec, register

N_CLASSES = 10
PATTERNS_PER_CLASS = {"simple": 10, "complex": 100}

DEFAULTS: dict[str, Any] = {
    "n_train": 4000,
    "n_val": 1000,
    "noise": 0.0,  # fraction of training examples with a random pattern and label; the paper uses 0.1
    "batch_size": 128,
    "features": 512,  # random Fourier features
    "bandwidth": 4.0,  # sigma of the feature frequencies, in units of 1/pattern coordinate
    "hidden": 512,
    "jitter": 0.01,  # std of the Gaussian added to every input coordinate that holds a pattern
}
METRICS = ("train_loss", "val_loss", "val_accuracy")


class FourierFeatures(nn.Module):
    """sqrt(2) cos(sigma W x + b), W ~ N(0, I), b ~ U[0, 2 pi): unit-variance features of an RBF kernel."""

    def __init__(self, in_dim: int, n_features: int, bandwidth: float, gen: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("weight", bandwidth * torch.randn(n_features, in_dim, generator=gen))
        self.register_buffer("phase", 2 * math.pi * torch.rand(n_features, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0) * torch.cos(x @ self.weight.T + self.phase)


def validate(params: Mapping[str, Any]) -> None:
    for name in ("n_train", "n_val", "batch_size", "features", "hidden"):
        check_int(params, name, 1)
    check_float(params, "noise", 0.0, 1.0, open_high=True)
    check_float(params, "bandwidth", 0.0, open_low=True)
    check_float(params, "jitter", 0.0)


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


def steps_per_epoch(params: Mapping[str, Any]) -> int:
    return math.ceil(params["n_train"] / params["batch_size"])


def build(params: Mapping[str, Any], seeds: Seeds) -> Workload:
    gen = generator(seeds.data, "data")
    prototypes = {name: torch.rand(N_CLASSES, k, 3, generator=gen) for name, k in PATTERNS_PER_CLASS.items()}
    n_noise = round(params["noise"] * params["n_train"])
    train_x, train_y, train_subsets = _sample(prototypes, params["n_train"], n_noise, params["jitter"], gen)
    val_x, val_y, val_subsets = _sample(prototypes, params["n_val"], 0, params["jitter"], gen)
    features = FourierFeatures(6, params["features"], params["bandwidth"], generator(seeds.data, "features"))
    with seeded_init(seeds.init):
        model = nn.Sequential(features, mlp([params["features"], params["hidden"], N_CLASSES]))
    return Workload(
        name="ps10", model=model, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
        loss_kind="cross_entropy", batch_size=params["batch_size"], metrics=METRICS,
        extra={"subsets": train_subsets, "val_subsets": val_subsets, "prototypes": prototypes},
    )


SPEC = register(WorkloadSpec("ps10", DEFAULTS, METRICS, build, validate, steps_per_epoch))
