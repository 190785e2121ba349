"""What every schedule family is: a pure function of the optimizer-step index, plus its declared fields.

A family never touches an optimizer (the training loop writes lr and momentum); it is built from a concrete JSON
dict whose durations are in epochs (fractional allowed) and a ``Horizon`` that converts them to steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from search_spaces.errors import SpecError


class Point(NamedTuple):
    """What the optimizer should use at one step. ``momentum`` is None where the family leaves momentum alone."""

    lr: float
    momentum: float | None = None


@dataclass(frozen=True)
class Horizon:
    """The span a schedule runs over: ``total_steps`` optimizer steps, ``steps_per_epoch`` of them an epoch."""

    total_steps: int
    steps_per_epoch: int

    def steps(self, epochs: float) -> int:
        """A duration in (possibly fractional) epochs as a whole number of steps."""
        return int(round(epochs * self.steps_per_epoch))

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch


Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    """One parameter of a family: its JSON kind, default (``REQUIRED`` if none) and a per-value rule.

    ``check`` returns an error message or None; it runs on every value a spec can take (constants, choices,
    range ends), so invalid ranges are refused at submission, before any trial runs.
    """

    kind: str  # "float" | "int" | "bool" | "str" | "list"
    default: Any = None
    check: Check | None = None
    required: bool = False


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def in_unit_interval(v: Any) -> str | None:
    return None if 0 <= v <= 1 else f"must be in [0, 1], got {v}"


def one_of(*allowed: Any) -> Check:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"must be one of {list(allowed)}, got {v!r}"

    return check


_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
}


def check_value(field: Field, value: Any, loc: tuple) -> None:
    """Refuse a concrete value of the wrong kind or one that breaks the field's rule."""
    types = _KIND_TYPES[field.kind]
    if not isinstance(value, types) or (field.kind in ("float", "int") and isinstance(value, bool)):
        raise SpecError(loc, f"must be of kind {field.kind}, got {value!r}")
    if field.check is not None and (msg := field.check(value)) is not None:
        raise SpecError(loc, msg)


class LRSchedule(ABC):
    """A schedule family. Subclasses declare ``name`` and ``fields`` and implement ``from_params`` and ``__call__``."""

    name: ClassVar[str]
    fields: ClassVar[Mapping[str, Field]]

    @classmethod
    @abstractmethod
    def from_params(cls, params: Mapping[str, Any], horizon: Horizon) -> LRSchedule:
        """Build from concrete params (defaults already filled in); raise SpecError for cross-field violations."""

    @abstractmethod
    def __call__(self, step: int) -> Point:
        """The lr (and momentum, if the family drives it) at optimizer step ``step`` (0-based, local to the span)."""

    def observe(self, epoch: int, train_loss: float) -> bool:
        """Feed the epoch's mean training loss; return False to end training. Only loss-driven families care."""
        return True

    def awaiting_decay(self) -> bool:
        """Still at its initial LR until a loss-driven decay comes (AutoDecay before its first): a large-step
        phase whose end is not known in advance, which early stopping must not judge."""
        return False

    def extra_attrs(self) -> dict[str, Any]:
        """Anything the family learned while running that a trial should record (e.g. AutoDecay's saved epochs)."""
        return {}


FAMILIES: dict[str, type[LRSchedule]] = {}


def register(cls: type[LRSchedule]) -> type[LRSchedule]:
    """Add a family to the registry under its ``name`` (the study spec's ``family``)."""
    if cls.name in FAMILIES:
        raise ValueError(f"schedule family {cls.name!r} registered twice")
    FAMILIES[cls.name] = cls
    return cls
