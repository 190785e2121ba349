"""The workload contract: what a package declares so that phasetune can tune schedules on its model.

A workload is one ``WorkloadSpec``, registered under the entry-point group ``phasetune.workloads`` of the package
that defines it (phasetune's own workloads are registered the same way, by its ``pyproject.toml``)::

    [project.entry-points."phasetune.workloads"]
    mycnn = "mypackage.workload:SPEC"

It says:

* its **parameters** (``Param``: default, kind, bounds, choices; a ``path`` names a file or directory under the
  service's data root, and is handed to the workload resolved, never outside the root), plus any cross-parameter
  rule (``validate``, raising ``SpecError((param,), message)``);
* its **data**, ``data(params, seed) -> Data``: train and validation splits (and optionally a test split, evaluated
  once when a trial ends), each tensors (``TensorSplit``: kept on the trial's device and batched by index, the fast
  path) or any torch ``Dataset`` of ``(input, target)`` pairs (read through a ``DataLoader``, for data that does not
  fit in memory). ``seed`` is the study's data seed; torch's global RNG is seeded with it too;
* its **model**, ``model(params, data) -> nn.Module``, built while torch's global RNG is seeded with the trial's
  init seed (the study's seed policy decides which), so a plain ``nn.Linear(...)`` is seeded correctly;
* its **loss** (any callable ``(outputs, targets) -> mean loss``) and ``loss_kind``, which of ``LOSS_KINDS`` it is:
  the curvature probe (``lr_crit``) needs the loss's output Hessian and supports only those; ``None`` (another loss)
  makes the probe, and any range in units of ``lr_crit``, a clear error. The LR range test (``lr_div``) works with
  any loss;
* its **metrics** (``Metric``: per-example values averaged over the validation split, and whether higher is
  better), reported per epoch as ``val_<name>`` beside ``train_loss`` and ``val_loss``; the study's objective may
  be any of them;
* optionally its **parameter groups** (``param_groups(model, params)``): torch param groups whose ``lr_scale`` and
  ``weight_decay_scale`` (default 1) multiply the schedule's lr and the phase's weight decay (0: no decay on, say,
  biases and norms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from phasetune.search_spaces.checks import integral
from phasetune.search_spaces.errors import SpecError

# The losses whose output Hessian the curvature probe knows (``phasetune.search_spaces.probes.LOSS_KINDS``):
#   "cross_entropy": mean softmax cross-entropy over the batch, targets are class indices;
#   "mse": torch MSELoss(reduction="mean") over all output entries;
#   "half_sum_squares": 0.5 * ||f - y||^2 summed over outputs, mean over examples.
LOSSES: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = MappingProxyType({
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
    "half_sum_squares": lambda out, y: 0.5 * ((out - y) ** 2).sum(dim=-1).mean(),
})
LOSS_KINDS = tuple(LOSSES)
PARAM_KINDS = ("int", "float", "bool", "str", "path")


@dataclass(frozen=True)
class Param:
    """One workload parameter. ``kind`` defaults to the default's type (write ``1.0`` for a float that defaults to
    one); a ``path`` is relative to the data root. The default itself must pass the checks."""

    default: Any = None
    help: str = ""
    kind: str = ""
    low: float | None = None  # inclusive bounds, for numbers
    high: float | None = None
    choices: Sequence[Any] | None = None
    required: bool = False  # no default: the study must give it

    def __post_init__(self) -> None:
        if not self.required:
            self.check(self.default, "default")  # a bad default would be blamed on the client

    @property
    def type_name(self) -> str:
        if self.kind:
            return self.kind
        return {bool: "bool", int: "int", float: "float"}.get(type(self.default), "str")

    def json_schema(self) -> dict[str, Any]:
        """What ``check`` allows, as JSON Schema (the API publishes it)."""
        kind = self.type_name
        schema: dict[str, Any] = {"type": {"int": "integer", "float": "number", "bool": "boolean"}.get(kind, "string")}
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if not self.required:
            schema["default"] = self.default
        if self.help or kind == "path":
            schema["description"] = self.help + (" (a path relative to the data root)" if kind == "path" else "")
        return schema

    def check(self, value: Any, name: str) -> None:
        """Refuse a value of the wrong kind, out of bounds or not among the choices (a SpecError at ``(name,)``)."""
        kind = self.type_name
        numeric = kind in ("int", "float")
        if kind == "int":
            value = integral(value)
        wrong = (
            (kind == "bool" and not isinstance(value, bool))
            or (numeric and (isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float))))
            or (kind in ("str", "path") and not isinstance(value, str))
        )
        if wrong:
            raise SpecError((name,), f"must be of kind {kind}, got {value!r}")
        if numeric:
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int beyond any float
                finite = False
            if not finite:
                raise SpecError((name,), f"must be a finite number, got {str(value)[:40]}")
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                raise SpecError((name,), f"must lie in [{self.low}, {self.high}], got {value}")
        if self.choices is not None and value not in self.choices:
            raise SpecError((name,), f"must be one of {list(self.choices)}, got {value!r}")


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=-1) == targets).float()


@dataclass(frozen=True)
class Metric:
    """A validation metric: ``fn(outputs, targets)`` gives per-example values, the metric is their mean."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool
    help: str = ""


ACCURACY = Metric(_accuracy, higher_is_better=True, help="fraction of examples whose top class is the target")


@dataclass
class TensorSplit:
    """A split held as tensors: moved to the trial's device once and batched by index (no DataLoader)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> TensorSplit:
        x = self.x.to(device)
        if memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        return TensorSplit(x, self.y.to(device))


Split = TensorSplit | torch.utils.data.Dataset


@dataclass
class Data:
    train: Split
    val: Split
    test: Split | None = None  # evaluated once, when a trial ends: never part of the objective
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the workload wants to keep (tests read it)


def _batch_size_param(params: Mapping[str, Any]) -> int:
    return int(params["batch_size"])


_INFER = "infer"  # loss_kind's default: the kind whose loss ``loss`` is, else None

@dataclass(frozen=True)
class WorkloadSpec:
    """A workload as a package declares it (see the module docstring)."""

    name: str
    params: Mapping[str, Param]
    data: Callable[[Mapping[str, Any], int], Data]
    model: Callable[[Mapping[str, Any], Data], nn.Module]
    train_size: Callable[[Mapping[str, Any]], int]  # training examples, from the params alone (nothing loaded)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    # Which of LOSS_KINDS ``loss`` is (the curvature probe uses its output Hessian). Left out, it is inferred: the
    # kind whose function ``loss`` is, else None (a loss of your own: the curvature probe refuses it).
    loss_kind: str | None = _INFER
    metrics: Mapping[str, Metric] = field(default_factory=lambda: {"accuracy": ACCURACY})
    batch_size: Callable[[Mapping[str, Any]], int] = _batch_size_param
    validate: Callable[[Mapping[str, Any]], None] | None = None
    param_groups: Callable[[nn.Module, Mapping[str, Any]], list[dict[str, Any]]] | None = None
    has_test: bool = False  # its data() gives a test split, reported once per trial as test_<metric>
    num_workers: int = 0  # DataLoader worker processes for Dataset splits
    channels_last: bool = False  # on CUDA: model and 4-d inputs in channels_last
    autocast: bool = False  # on CUDA: forward passes under bfloat16 autocast
    description: str = ""
    # Why it cannot run on this machine (its data or a package missing), or None: a study on it is then a 422
    # naming what to install, and GET /workloads says so.
    unavailable: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        if self.loss_kind == _INFER:
            inferred = next((kind for kind, fn in LOSSES.items() if fn is self.loss), None)
            object.__setattr__(self, "loss_kind", inferred)
        if self.loss_kind is not None and self.loss_kind not in LOSS_KINDS:
            raise ValueError(f"workload {self.name!r}: loss_kind must be one of {LOSS_KINDS} or None")
        if self.batch_size is _batch_size_param and "batch_size" not in self.params:
            raise ValueError(f"workload {self.name!r}: declare a 'batch_size' param or pass batch_size=")
        for name, param in self.params.items():
            if param.type_name not in PARAM_KINDS:
                raise ValueError(f"workload {self.name!r}: param {name!r} has kind {param.type_name!r}")
        clash = {"loss"} & set(self.metrics)
        if clash:
            raise ValueError(f"workload {self.name!r}: a metric may not be called {sorted(clash)[0]!r}")

    @property
    def defaults(self) -> dict[str, Any]:
        return {name: param.default for name, param in self.params.items() if not param.required}

    def epoch_metrics(self) -> dict[str, bool]:
        """What every epoch reports, with whether higher is better: what a study's objective may be."""
        return {"train_loss": False, "val_loss": False,
                **{f"val_{name}": metric.higher_is_better for name, metric in self.metrics.items()}}

    def final_metrics(self) -> dict[str, bool]:
        """What a trial reports once, at its end, on the test split (if the workload has one)."""
        if not self.has_test:
            return {}
        return {"test_loss": False, **{f"test_{n}": m.higher_is_better for n, m in self.metrics.items()}}
