"""scikit-learn's bundled 8x8 digits with a small MLP: a real (if tiny) dataset that needs no download."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from sklearn.datasets import load_digits

from search_spaces.errors import SpecError
from workers.seeding import Seeds, generator, seeded_init
from workers.workloads._common import check_float, check_int, mlp
from workers.workloads.base import Workload, WorkloadSpec, register

N_IMAGES = 1797

DEFAULTS: dict[str, Any] = {
    "hidden": 64,  # width of the one hidden layer
    "batch_size": 64,  # 1438 training images -> 23 steps per epoch
    "val_fraction": 0.2,  # of the 1797 images, split by the seed
}


def validate(params: Mapping[str, Any]) -> None:
    check_int(params, "hidden", 1)
    check_int(params, "batch_size", 1)
    check_float(params, "val_fraction", 0.0, 1.0, open_low=True, open_high=True)
    n_val = round(N_IMAGES * params["val_fraction"])
    if not 1 <= n_val <= N_IMAGES - 1:
        raise SpecError(("val_fraction",), "leaves an empty train or validation split")


def steps_per_epoch(params: Mapping[str, Any]) -> int:
    return math.ceil((N_IMAGES - round(N_IMAGES * params["val_fraction"])) / params["batch_size"])


def build(params: Mapping[str, Any], seeds: Seeds) -> Workload:
    x_all, y_all = load_digits(return_X_y=True)
    x = torch.as_tensor(x_all, dtype=torch.float32)
    y = torch.as_tensor(y_all, dtype=torch.long)
    order = torch.randperm(len(x), generator=generator(seeds.data, "split"))
    n_val = round(len(x) * params["val_fraction"])
    val_idx, train_idx = order[:n_val], order[n_val:]
    # Standardize with training statistics only; constant pixels (the image border) keep std 1.
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    x = (x - mean) / std
    with seeded_init(seeds.init):
        model = mlp([64, params["hidden"], 10])
    return Workload(
        name="digits", model=model, train_x=x[train_idx], train_y=y[train_idx], val_x=x[val_idx],
        val_y=y[val_idx], loss_kind="cross_entropy", batch_size=params["batch_size"], metrics=METRICS,
    )


METRICS = ("train_loss", "val_loss", "val_accuracy")
SPEC = register(WorkloadSpec("digits", DEFAULTS, METRICS, build, validate, steps_per_epoch))
