"""Model builders the built-in workloads share. Call them inside a workload's ``model`` (torch's RNG is seeded)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def cnn(in_channels: int, n_classes: int, width: int) -> nn.Sequential:
    """A small airbench-style CNN: three conv-BN-ReLU blocks (width, 2 width, 4 width), pooling after each, then a
    linear head. Works on any image size of at least 4x4 (the last pooling is global)."""
    def block(c_in: int, c_out: int, pool: nn.Module) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), pool]

    return nn.Sequential(
        *block(in_channels, width, nn.MaxPool2d(2)),
        *block(width, 2 * width, nn.MaxPool2d(2)),
        *block(2 * width, 4 * width, nn.AdaptiveMaxPool2d(1)),
        nn.Flatten(),
        nn.Linear(4 * width, n_classes),
    )


def no_decay_on_biases_and_norms(model: nn.Module) -> list[dict]:
    """Two param groups: weights of convs and linears decay, biases and norm parameters do not."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_norm = isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay_scale": 0.0}]
