"""Generic checks of the spec's values, for the schedules and everything else the spec holds (early stopping,
branching, workloads, the API's schemas): the bounds a number takes (``Interval``), the values a string takes
(``OneOf``), integral floats (``integral``), finite numbers (``finite``), and one parser for the options of the
spec's sub-objects (``Options``). Nothing here knows a schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces.errors import SpecError


@dataclass(frozen=True)
class Interval:
    """The numbers a field allows: one statement gives the check at submission and the JSON Schema the API
    publishes, so the two cannot drift. A list value (e.g. milestones) is checked element by element."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""

    def __call__(self, value: Any) -> str | None:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                return f"must list numbers, got {item!r}"
            if not self.contains(item):
                return f"must be {self.describe()}, got {item}"
        return None

    def contains(self, v: float) -> bool:
        above = self.low is None or (v > self.low if self.open_low else v >= self.low)
        below = self.high is None or (v < self.high if self.open_high else v <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            text = f"{'>' if self.open_low else '>='} {self.low:g}"
        elif self.low is None:
            text = f"{'<' if self.open_high else '<='} {self.high:g}"
        else:
            text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return f"{text} ({self.note})" if self.note else text

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.low is not None:
            schema["exclusiveMinimum" if self.open_low else "minimum"] = self.low
        if self.high is not None:
            schema["exclusiveMaximum" if self.open_high else "maximum"] = self.high
        return schema


@dataclass(frozen=True)
class OneOf:
    """The values a string field allows (its check and its JSON Schema ``enum``)."""

    allowed: tuple[Any, ...]

    def __call__(self, value: Any) -> str | None:
        return None if value in self.allowed else f"must be one of {list(self.allowed)}, got {value!r}"

    def json_schema(self) -> dict[str, Any]:
        return {"enum": list(self.allowed)}


Check = Interval | OneOf


def one_of(*allowed: Any) -> OneOf:
    return OneOf(allowed)


def integral(value: Any) -> Any:
    """An integral float as the int it is (JSON does not tell 5 from 5.0, and JSON Schema calls both integers);
    anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def finite(value: Any) -> bool:
    """A number JSON can mean (an int beyond any float, such as 10**400, is not: math would overflow on it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Options:
    """The options of one of the spec's sub-objects (``early_stopping``, ``branching``): numbers within their
    bounds (some integers) and booleans. One parser, so every sub-object refuses the same way: a SpecError naming
    ``(<where>, <field>)``."""

    where: str
    numbers: Mapping[str, Interval]
    integers: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw``'s options, each checked and typed (bool, int or float); a None value is left out (the default)."""
        known = [*self.flags, *self.numbers]
        out: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None:
                continue
            if name not in known:
                raise SpecError((self.where, name), f"unknown field; {self.where} takes {known}")
            out[name] = self.value(name, value)
        return out

    def value(self, name: str, value: Any) -> bool | int | float:
        """One option, checked and typed."""
        if name in self.flags:
            if not isinstance(value, bool):
                raise SpecError((self.where, name), f"must be true or false, got {value!r}")
            return value
        bounds, integer = self.numbers[name], name in self.integers
        if not finite(value) or (integer and not isinstance(integral(value), int)) or not bounds.contains(value):
            kind = "an integer" if integer else "a number"
            raise SpecError((self.where, name), f"must be {kind} {bounds.describe()}, got {value!r}")
        return int(value) if integer else float(value)
