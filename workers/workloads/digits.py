"""scikit-learn's bundled 8x8 digits with a small MLP: a real (if tiny) dataset that needs no download."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from phasetune.search_spaces.errors import SpecError
from phasetune.workers.seeding import generator
from phasetune.workers.workloads.contract import Data, Param, TensorSplit, WorkloadSpec
from phasetune.workers.workloads.models import mlp

N_IMAGES = 1797

PARAMS = {
    "hidden": Param(64, "width of the one hidden layer", low=1, high=65_536),
    "batch_size": Param(64, "examples per step (1438 training images: 23 steps per epoch)", low=1),
    "val_fraction": Param(0.2, "share of the 1797 images held out for validation, split by the study's seed",
                          low=0.0, high=1.0),
}


def validate(params: Mapping[str, Any]) -> None:
    n_val = round(N_IMAGES * params["val_fraction"])
    if not 1 <= n_val <= N_IMAGES - 1:
        raise SpecError(("val_fraction",), "leaves an empty train or validation split")


def train_size(params: Mapping[str, Any]) -> int:
    return N_IMAGES - round(N_IMAGES * params["val_fraction"])


def data(params: Mapping[str, Any], seed: int) -> Data:
    from sklearn.datasets import load_digits  # here, not at import: scikit-learn takes seconds to import

    x_all, y_all = load_digits(return_X_y=True)
    x = torch.as_tensor(x_all, dtype=torch.float32)
    y = torch.as_tensor(y_all, dtype=torch.long)
    order = torch.randperm(len(x), generator=generator(seed, "split"))
    n_val = round(len(x) * params["val_fraction"])
    val_idx, train_idx = order[:n_val], order[n_val:]
    # Standardize with training statistics only; constant pixels (the image border) keep std 1.
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    x = (x - mean) / std
    return Data(train=TensorSplit(x[train_idx], y[train_idx]), val=TensorSplit(x[val_idx], y[val_idx]))


def model(params: Mapping[str, Any], data: Data) -> torch.nn.Module:
    return mlp([64, params["hidden"], 10])


SPEC = WorkloadSpec(
    name="digits", params=PARAMS, data=data, model=model, train_size=train_size, validate=validate,
    description="scikit-learn's 8x8 digits (1797 images, 10 classes), an MLP with one hidden layer",
)
