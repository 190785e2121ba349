"""Warmup: a linear ramp that composes with any family, given as a segment's ``warmup`` key.

``{"family": "cosine", "lr": 0.1, "warmup": {"epochs": 1.0, "start_factor": 0.0}}``: both warmup values may be
searchable ranges or choices. It is a wrapper, not a field copied into each family (timm's anti-pattern).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phasetune.search_spaces.errors import SpecError
from phasetune.search_spaces.families.base import Field, Horizon, LRSchedule, Point, duration, in_unit_interval

WARMUP_FIELDS: dict[str, Field] = {
    "epochs": Field("float", required=True, check=duration),
    "start_factor": Field("float", 0.0, check=in_unit_interval),
}


class Warmup(LRSchedule):
    """The first ``W`` steps ramp linearly to the wrapped family's first value, then the family runs.

    ``lr(t) = inner(0).lr * (s + (1 - s) * t / W)`` for ``t < W`` (momentum: ``inner(0).momentum``), then
    ``inner(t - W)``; the wrapped family is built over the span minus the warmup, so it still ends on time.
    This is torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W), inner], milestones=[W])``.
    ``observe``, ``extra_attrs`` and state pass through to the wrapped family.
    """

    name = "warmup"
    fields = WARMUP_FIELDS

    def __init__(self, inner: LRSchedule, steps: int, start_factor: float) -> None:
        self.inner, self.steps, self.start_factor = inner, steps, start_factor

    @classmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> LRSchedule:
        raise TypeError("Warmup wraps a family: build it with Warmup.wrap")

    @classmethod
    def wrap(cls, family: type[LRSchedule], own: Mapping[str, Any], warmup: Mapping[str, Any],
             horizon: Horizon) -> Warmup:
        """``family`` built from ``own`` over the span after a warmup of ``warmup["epochs"]``."""
        if not isinstance(warmup, Mapping):
            raise SpecError(("warmup",), "must be an object {epochs, start_factor}")
        epochs = warmup.get("epochs")
        start_factor = warmup.get("start_factor", WARMUP_FIELDS["start_factor"].default)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0:
            raise SpecError(("warmup", "epochs"), f"must be a number of epochs > 0, got {epochs!r}")
        if isinstance(start_factor, bool) or not isinstance(start_factor, (int, float)) or not 0 <= start_factor <= 1:
            raise SpecError(("warmup", "start_factor"), f"must be in [0, 1], got {start_factor!r}")
        steps = horizon.steps(epochs)
        if steps < 1:
            raise SpecError(("warmup", "epochs"), f"{epochs} epochs is shorter than one optimizer step")
        if steps >= horizon.total_steps:
            raise SpecError(("warmup", "epochs"), f"warmup ({epochs} epochs = {steps} steps) must be shorter than "
                                                  f"the span it warms up ({horizon.epochs:g} epochs)")
        inner = family.from_params(own, Horizon(horizon.total_steps - steps, horizon.steps_per_epoch))
        return cls(inner, steps, float(start_factor))

    def __call__(self, step: int) -> Point:
        if step >= self.steps:
            return self.inner(step - self.steps)
        first = self.inner(0)
        return Point(first.lr * (self.start_factor + (1 - self.start_factor) * step / self.steps), first.momentum)

    def observe(self, epoch: int, train_loss: float) -> bool:
        return self.inner.observe(epoch, train_loss)

    def loss_driven(self) -> bool:
        return self.inner.loss_driven()

    def awaiting_decay(self) -> bool:  # a warmed-up AutoDecay is still a large-step phase until it decays
        return self.inner.awaiting_decay()

    def extra_attrs(self) -> dict[str, Any]:
        return self.inner.extra_attrs()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Warmup({self.inner!r}, steps={self.steps}, start_factor={self.start_factor})"
