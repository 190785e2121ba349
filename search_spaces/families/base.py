"""What every schedule family is: a pure function of the optimizer-step index, plus its declared fields.

A family never touches an optimizer (the training loop writes lr and momentum); it is built from a concrete JSON
dict whose durations are in epochs (fractional allowed) and a ``Horizon`` that converts them to steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from phasetune.search_spaces.checks import Check, Interval, integral
from phasetune.search_spaces.errors import Loc, SpecError


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


@dataclass(frozen=True)
class Field:
    """One parameter of a family: its JSON kind, default, whether required, and the values it allows.

    ``check`` runs on every value a spec can take (constants, choices, range ends), so invalid ranges are refused
    at submission, before any trial runs; it also states the field's bounds in the published JSON Schema.
    """

    kind: str  # "float" | "int" | "bool" | "str" | "list"
    default: Any = None
    check: Check | None = None
    required: bool = False


MAX_FLOAT = 1.7976931348623157e308  # the largest float: a JSON number beyond it (10**400) is no number here
MAX_EPOCHS = 100_000  # the longest study; a duration beyond it would never end (and overflows step counts)
positive = Interval(0, open_low=True)
duration = Interval(0, MAX_EPOCHS, open_low=True, note="epochs")
non_negative = Interval(0)
in_unit_interval = Interval(0, 1)
open_unit_interval = Interval(0, 1, open_low=True, open_high=True)
momentum_range = Interval(0, 1, open_high=True)  # a momentum (or beta1) of 1 never forgets
decay_factor = Interval(0, 1, open_low=True)
# float32's largest number: torch cannot even apply a larger lr to float32 weights ("value cannot be converted to
# type float without overflow"), and any lr near it diverges at the first step. The bound every lr field takes.
LR_MAX = 3.4028234663852886e38
learning_rate = Interval(0, LR_MAX, open_low=True, note="float32's largest")
lr_floor = Interval(0, LR_MAX, note="float32's largest")  # an lr an annealing ends at: 0 allowed


_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
}


def check_value(field: Field, value: Any, loc: Loc) -> None:
    """Refuse a concrete value of the wrong kind or one that breaks the field's rule."""
    types = _KIND_TYPES[field.kind]
    if field.kind == "int":
        value = integral(value)
    if not isinstance(value, types) or (field.kind in ("float", "int") and isinstance(value, bool)):
        raise SpecError(loc, f"must be of kind {field.kind}, got {value!r}")
    if isinstance(value, (int, float)) and field.kind in ("float", "int") and abs(value) > MAX_FLOAT:
        raise SpecError(loc, f"must be a finite number, got {str(value)[:40]}")
    if field.check is not None and (msg := field.check(value)) is not None:
        raise SpecError(loc, msg)


@runtime_checkable
class Stateful(Protocol):
    """A family that learns while it runs (AutoDecay, a warmup around one): what it learned, for checkpoint/resume.
    The others are pure functions of the step and have nothing to save."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


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

    def loss_driven(self) -> bool:
        """Its values depend on the losses it observes, not on the step alone (AutoDecay)."""
        return False

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
