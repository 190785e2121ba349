"""The convex baseline of the two-regimes paper: minimise 0.5 x^T A x with a known spectrum.

The model's only parameter is x and its output is f = A^{1/2} x for every example, with zero targets and the
"half_sum_squares" loss. Then the loss is exactly 0.5 x^T A x and the Gauss-Newton matrix J^T J is exactly A, so
the curvature probe must report ``eigenvalues[-1]`` and GD is stable iff lr < 2 / eig_max.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from search_spaces.errors import SpecError
from workers.seeding import Seeds, generator
from workers.workloads._common import check_float, check_int
from workers.workloads.base import Workload, WorkloadSpec, register

DEFAULTS: dict[str, Any] = {
    "dim": 20,
    "eig_min": 0.01,  # condition number eig_max / eig_min = 100
    "eig_max": 1.0,
    "steps_per_epoch": 10,  # full-gradient steps per "epoch" (the data are dummies)
}
METRICS = ("train_loss", "val_loss")


class Quadratic(nn.Module):
    """f(inputs) = A^{1/2} x, broadcast over the batch; the input content is ignored."""

    def __init__(self, x0: torch.Tensor, sqrt_a: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x0.clone())
        self.register_buffer("sqrt_a", sqrt_a)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        f = self.sqrt_a @ self.x
        return f.expand(inputs.shape[0], -1)


def validate(params: Mapping[str, Any]) -> None:
    check_int(params, "dim", 1)
    check_float(params, "eig_min", 0.0, open_low=True)
    check_float(params, "eig_max", 0.0, open_low=True)
    if params["eig_min"] > params["eig_max"]:
        raise SpecError(("eig_min",), f"must be <= eig_max ({params['eig_max']}), got {params['eig_min']}")
    check_int(params, "steps_per_epoch", 1)


def spectrum(dim: int, eig_min: float, eig_max: float) -> torch.Tensor:
    """Log-spaced eigenvalues, ascending, float64; the last one is always eig_max (also for dim 1)."""
    if dim == 1:
        return torch.tensor([float(eig_max)], dtype=torch.float64)
    return torch.logspace(math.log10(eig_min), math.log10(eig_max), dim, dtype=torch.float64)


def steps_per_epoch(params: Mapping[str, Any]) -> int:
    return int(params["steps_per_epoch"])


def build(params: Mapping[str, Any], seeds: Seeds) -> Workload:
    dim = params["dim"]
    eigenvalues = spectrum(dim, params["eig_min"], params["eig_max"])
    # Haar-random orthogonal basis: QR of a Gaussian matrix with the signs of R's diagonal folded into Q.
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator(seeds.data, "basis"), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    a = (q * eigenvalues) @ q.T
    sqrt_a = (q * eigenvalues.sqrt()) @ q.T
    x0 = torch.randn(dim, generator=generator(seeds.init, "init"), dtype=torch.float64)
    model = Quadratic(x0.float(), sqrt_a.float())
    steps = params["steps_per_epoch"]
    # batch_size 1 over `steps` dummy examples: one epoch is `steps` full-gradient steps.
    return Workload(
        name="quadratic", model=model, train_x=torch.zeros(steps, 1), train_y=torch.zeros(steps, dim),
        val_x=torch.zeros(1, 1), val_y=torch.zeros(1, dim), loss_kind="half_sum_squares", batch_size=1,
        metrics=METRICS, extra={"A": a.float(), "eigenvalues": eigenvalues.float()},
    )


SPEC = register(WorkloadSpec("quadratic", DEFAULTS, METRICS, build, validate, steps_per_epoch))
