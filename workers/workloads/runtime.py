"""A built workload, as a trial and a probe use it: its model and data on a device, batched, evaluated.

Two data paths behind one interface. Tensors (``TensorSplit``) stay on the device and are batched by index:
no DataLoader, no worker processes (the airbench way, and the fast one on a 2-core machine). A torch ``Dataset`` is
read through a ``DataLoader`` whose sampler visits the same order the tensor path would, so the two paths give the
same curve on the same data (``num_workers`` processes, pinned memory when the device is a GPU).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from phasetune.search_spaces.probes import probe_batch
from phasetune.workers.workloads.contract import Data, Metric, Split, TensorSplit, WorkloadSpec

EVAL_BATCH = 1024  # examples per forward pass when evaluating (larger batches are slower on a CPU for convnets)


class _Order(Sampler[int]):
    """A sampler whose order is set before each pass, so one DataLoader (and its workers) serves every epoch."""

    def __init__(self, n: int) -> None:
        self.order: Sequence[int] = range(n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@dataclass
class Workload:
    spec: WorkloadSpec
    params: Mapping[str, Any]  # as the workload's functions got them (paths resolved)
    model: nn.Module
    data: Data
    batch_size: int
    param_groups: list[dict[str, Any]] | None
    device: torch.device
    reused: Mapping[str, bool] = field(default_factory=dict)  # what a warm worker's cache gave: {"data", "model"}
    _loaders: dict[tuple[int, int], tuple[DataLoader, _Order]] = field(default_factory=dict, repr=False)

    # ---- what the contract declared --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def loss_kind(self) -> str | None:
        return self.spec.loss_kind

    @property
    def metrics(self) -> Mapping[str, Metric]:
        return self.spec.metrics

    @property
    def extra(self) -> dict[str, Any]:
        return self.data.extra

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.spec.loss(output.float(), target)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / self.batch_size)

    # The tensor path's splits (probes, tests and benchmarks read them directly).
    @property
    def train_x(self) -> torch.Tensor:
        return self._tensors(self.data.train).x

    @property
    def train_y(self) -> torch.Tensor:
        return self._tensors(self.data.train).y

    @property
    def val_x(self) -> torch.Tensor:
        return self._tensors(self.data.val).x

    @property
    def val_y(self) -> torch.Tensor:
        return self._tensors(self.data.val).y

    @staticmethod
    def _tensors(split: Split) -> TensorSplit:
        if not isinstance(split, TensorSplit):
            raise TypeError("this split is a Dataset, read through a DataLoader: use batches() or sample()")
        return split

    # ---- running it ----------------------------------------------------------------------------------------------

    @property
    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def to(self, device: torch.device | str) -> Workload:
        """Model and tensor splits on ``device`` (channels_last there, where the workload asks for it on CUDA)."""
        self.device = torch.device(device)
        memory_format = torch.channels_last if self.spec.channels_last and self._on_cuda else None
        if memory_format is not None:
            self.model.to(self.device, memory_format=memory_format)
        else:
            self.model.to(self.device)
        for name in ("train", "val", "test"):
            split = getattr(self.data, name)
            if isinstance(split, TensorSplit):
                setattr(self.data, name, split.to(self.device, memory_format))
        self._loaders.clear()
        return self

    def optimizer_params(self) -> list[dict[str, Any]] | Iterator[nn.Parameter]:
        """What the phased-optimizer driver optimizes: the workload's param groups, or all parameters."""
        return self.param_groups if self.param_groups is not None else self.model.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.spec.autocast and self._on_cuda
                    else contextlib.nullcontext())
        with autocast:
            return self.model(x)

    def batches(self, split: Split, order: torch.Tensor | None = None,
                batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``split`` in minibatches (of the workload's size by default) on the device, visiting ``order`` (a
        permutation of its indices; default: as stored)."""
        size = batch_size or self.batch_size
        if isinstance(split, TensorSplit):
            index = order.to(self.device) if order is not None else None
            for start in range(0, len(split), size):
                if index is None:
                    yield split.x[start:start + size], split.y[start:start + size]
                else:
                    batch = index[start:start + size]
                    yield split.x[batch], split.y[batch]
            return
        loader, sampler = self._loader(split, size)
        sampler.order = order.tolist() if order is not None else range(len(split))
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _loader(self, dataset: Dataset, batch_size: int) -> tuple[DataLoader, _Order]:
        key = (id(dataset), batch_size)
        if key not in self._loaders:
            sampler = _Order(len(dataset))  # type: ignore[arg-type]
            workers = self.spec.num_workers
            loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                pin_memory=self._on_cuda, persistent_workers=workers > 0)
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    @torch.no_grad()
    def evaluate(self, split: Split, prefix: str) -> dict[str, float]:
        """``{prefix}_loss`` and ``{prefix}_<metric>`` for each metric, each the mean over the split."""
        self.model.eval()
        sums = {name: torch.zeros((), device=self.device) for name in ("loss", *self.metrics)}
        for x, y in self.batches(split, batch_size=max(self.batch_size, EVAL_BATCH)):
            out = self.forward(x)
            sums["loss"] += self.loss(out, y) * len(y)
            for name, metric in self.metrics.items():
                values = metric.fn(out.float(), y)
                if values.numel() != len(y):
                    raise ValueError(f"metric {name!r} of workload {self.name!r} gave {values.numel()} values for "
                                     f"{len(y)} examples: a metric returns one value per example (their mean is "
                                     "reported)")
                sums[name] += values.sum()
        n = len(split)
        return {f"{prefix}_{name}": (total / n).item() for name, total in sums.items()}

    def sample(self, split: Split, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random subset of ``k`` examples (all, in order, if there are no more) as tensors on the device:
        what the probes read. Both data paths draw the same examples (``probe_batch``'s draw)."""
        if isinstance(split, TensorSplit):
            return probe_batch(split.x, split.y, max_examples=k, seed=seed)
        n = len(split)
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k] if n > k else torch.arange(n)
        pairs = [split[i] for i in index.tolist()]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs]).to(self.device)
        return x, torch.stack([torch.as_tensor(p[1]) for p in pairs]).to(self.device)
