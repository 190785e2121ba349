"""What a workload is: a model, its data (as tensors) and its loss, built from a name, params and seeds.

Data are plain tensors so the training loop can keep them on the device and slice batches itself (airbench style):
no DataLoader worker processes on a 2-core machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces.errors import SpecError
from workers.seeding import Seeds

# How the loss reads the model output; the curvature probe derives the output Hessian from it.
#   "cross_entropy": mean softmax cross-entropy over the batch, targets are class indices.
#   "mse": torch MSELoss(reduction="mean") over all output entries.
#   "half_sum_squares": 0.5 * ||f - y||^2 summed over outputs, mean over examples (the quadratic's loss).
LOSS_KINDS = ("cross_entropy", "mse", "half_sum_squares")


@dataclass
class Workload:
    name: str
    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    loss_kind: str
    batch_size: int
    # The per-epoch metrics this workload reports (the study objective must be one of them).
    metrics: tuple[str, ...] = ("train_loss", "val_loss", "val_accuracy")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_x) / self.batch_size)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(self.loss_kind)(output, target)

    def to(self, device: torch.device | str) -> Workload:
        self.model.to(device)
        for name in ("train_x", "train_y", "val_x", "val_y"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "cross_entropy":
        return nn.functional.cross_entropy
    if kind == "mse":
        return nn.functional.mse_loss
    if kind == "half_sum_squares":
        return lambda out, y: 0.5 * ((out - y) ** 2).sum(dim=-1).mean()
    raise ValueError(f"unknown loss kind {kind!r}")


@dataclass(frozen=True)
class WorkloadSpec:
    """A registered workload: its parameter defaults, a validator, a builder and its steps per epoch.

    ``build`` draws the data (split, synthetic draws, fixed features) from ``seeds.data`` and the trained weights
    from ``seeds.init``. ``steps_per_epoch`` answers from the params alone, without building anything: schedules
    are validated and drawn at that resolution before any trial runs.
    """

    name: str
    defaults: Mapping[str, Any]
    metrics: tuple[str, ...]
    build: Callable[[Mapping[str, Any], Seeds], Workload]  # (params with defaults filled, seeds) -> Workload
    validate_params: Callable[[Mapping[str, Any]], None]  # raises SpecError located relative to params
    steps_per_epoch: Callable[[Mapping[str, Any]], int]  # params with defaults filled -> optimizer steps


WORKLOADS: dict[str, WorkloadSpec] = {}


def register(spec: WorkloadSpec) -> WorkloadSpec:
    WORKLOADS[spec.name] = spec
    return spec


def resolve(name: Any, params: Any) -> tuple[WorkloadSpec, dict[str, Any]]:
    """The registered spec and its params with defaults filled in; SpecError (under ``workload``) if invalid."""
    if not isinstance(name, str) or name not in WORKLOADS:
        raise SpecError(("name",), f"unknown workload {name!r}; one of {sorted(WORKLOADS)}")
    spec = WORKLOADS[name]
    params = dict(params or {})
    unknown = set(params) - set(spec.defaults)
    if unknown:
        raise SpecError(("params", sorted(unknown)[0]),
                        f"unknown parameter of {name!r}; expected {sorted(spec.defaults)}")
    full = {**spec.defaults, **params}
    try:
        spec.validate_params(full)
    except SpecError as err:
        raise err.under("params") from None
    return spec, full


def build_workload(name: str, params: Mapping[str, Any] | None, seed: int | Seeds) -> Workload:
    """The workload ``name`` with ``params``; an int ``seed`` seeds every stream (``Seeds.shared``)."""
    spec, full = resolve(name, params)
    return spec.build(full, seed if isinstance(seed, Seeds) else Seeds.shared(seed))


def steps_per_epoch(name: str, params: Mapping[str, Any] | None) -> int:
    """The workload's optimizer steps per epoch, from its params alone (nothing is built)."""
    spec, full = resolve(name, params)
    return spec.steps_per_epoch(full)
