# examples/phasetune-example-plugin/phasetune_example.py
"""A phasetune workload: fit a noisy sine wave with a small MLP, under a Huber loss."""
import torch
from torch import nn

from phasetune.workloads import Data, Metric, Param, TensorSplit, WorkloadSpec


def data(params, seed):  # seed: the study's data seed
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(params["n"], 1, generator=gen) * 6 - 3
    y = torch.sin(2 * x) + 0.1 * torch.randn(params["n"], 1, generator=gen)
    n_val = params["n"] // 5
    return Data(train=TensorSplit(x[n_val:], y[n_val:]), val=TensorSplit(x[:n_val], y[:n_val]))


def model(params, data):  # built with torch's RNG seeded by the trial's init seed
    return nn.Sequential(nn.Linear(1, params["hidden"]), nn.Tanh(), nn.Linear(params["hidden"], 1))


SPEC = WorkloadSpec(
    name="sines", data=data, model=model, train_size=lambda p: p["n"] - p["n"] // 5,
    params={"n": Param(1000, "examples, a fifth held out", low=10), "hidden": Param(32, "hidden units", low=1),
            "batch_size": Param(50, "examples per step", low=1)},
    loss=nn.functional.smooth_l1_loss, loss_kind=None,  # a loss the curvature probe does not know
    metrics={"close": Metric(lambda out, y: ((out - y).abs() < 0.2).float(), higher_is_better=True)},
)
