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

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import generator
from phasetune.workers.workloads.contract import LOSSES, Data, Param, TensorSplit, WorkloadSpec

PARAMS = {
    "dim": Param(20, "dimension of x (A is dim x dim, float64)", low=1, high=4096),
    "eig_min": Param(0.01, "smallest eigenvalue of A (condition number eig_max / eig_min)", low=0.0),
    "eig_max": Param(1.0, "largest eigenvalue of A: plain GD is stable below lr = 2 / eig_max", low=0.0),
    "steps_per_epoch": Param(10, "full-gradient steps per 'epoch' (the data are dummies)", low=1,
                             high=10_000),
}


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
    for key in ("eig_min", "eig_max"):
        if params[key] <= 0:
            raise SpecError((key,), f"must be > 0, got {params[key]}")
    if params["eig_min"] > params["eig_max"]:
        raise SpecError(("eig_min",), f"must be <= eig_max ({params['eig_max']}), got {params['eig_min']}")


def train_size(params: Mapping[str, Any]) -> int:
    return int(params["steps_per_epoch"])  # one dummy example per step, batch size 1


def spectrum(dim: int, eig_min: float, eig_max: float) -> torch.Tensor:
    """Log-spaced eigenvalues, ascending, float64; the last one is always eig_max (also for dim 1)."""
    if dim == 1:
        return torch.tensor([float(eig_max)], dtype=torch.float64)
    return torch.logspace(math.log10(eig_min), math.log10(eig_max), dim, dtype=torch.float64)


def data(params: Mapping[str, Any], seed: int) -> Data:
    dim, steps = params["dim"], params["steps_per_epoch"]
    eigenvalues = spectrum(dim, params["eig_min"], params["eig_max"])
    # Haar-random orthogonal basis: QR of a Gaussian matrix with the signs of R's diagonal folded into Q.
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator(seed, "basis"), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    a = (q * eigenvalues) @ q.T
    sqrt_a = (q * eigenvalues.sqrt()) @ q.T
    # batch_size 1 over `steps` dummy examples: one epoch is `steps` full-gradient steps.
    return Data(train=TensorSplit(torch.zeros(steps, 1), torch.zeros(steps, dim)),
                val=TensorSplit(torch.zeros(1, 1), torch.zeros(1, dim)),
                extra={"A": a.float(), "sqrt_A": sqrt_a.float(), "eigenvalues": eigenvalues.float()})


def model(params: Mapping[str, Any], data: Data) -> nn.Module:
    x0 = torch.randn(params["dim"], dtype=torch.float64)  # the initial point: torch's RNG holds the init seed here
    return Quadratic(x0.float(), data.extra["sqrt_A"])


SPEC = WorkloadSpec(
    name="quadratic", params=PARAMS, data=data, model=model, train_size=train_size, validate=validate,
    loss=LOSSES["half_sum_squares"], loss_kind="half_sum_squares", metrics={}, batch_size=lambda params: 1,
    description="0.5 x^T A x with a known spectrum (the two-regimes paper's convex baseline): lr_crit = 2 / eig_max",
)
