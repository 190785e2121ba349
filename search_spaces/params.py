"""Hyperparameter specs: a constant, a range ``{"low", "high", "log"?, "step"?, "unit"?}`` or ``{"choices": [...]}``.

A spec is plain JSON. ``parse`` checks its shape, ``suggest`` draws a value from an Optuna trial (define-by-run,
inclusive bounds, Optuna's own distributions: one search-space vocabulary), and ``candidates`` lists the values a spec
can take at its edges so that families can validate ranges before any trial runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from phasetune.search_spaces.checks import finite
from phasetune.search_spaces.errors import Loc, RuleError, SpecError

MAX_CHOICES = 1000  # a categorical this long is a list to sweep, not a search space
RANGE_KEYS = {"low", "high", "log", "step", "unit"}


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` that sampling needs (tests may pass a fixed-params trial)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    unit: str | None = None

    @property
    def is_int(self) -> bool:
        values = (self.low, self.high) + ((self.step,) if self.step is not None else ())
        return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


@dataclass(frozen=True)
class Choices:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class Constant:
    value: Any


Param = Range | Choices | Constant


def _number(value: Any, loc: Loc) -> float:
    if not finite(value):
        raise SpecError(loc, f"must be a finite number, got {str(value)[:40]}")
    return cast(float, value)  # an int or a float: finite() checked


def parse(raw: Any, loc: Loc = ()) -> Param:
    """Check the shape of one hyperparameter spec; ``loc`` locates it in the study spec for error messages."""
    if isinstance(raw, Mapping) and "choices" in raw:
        extra = set(raw) - {"choices"}
        if extra:
            raise SpecError((*loc, sorted(extra)[0]), "a choices spec takes only 'choices'")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError((*loc, "choices"), "must be a non-empty list")
        if len(choices) > MAX_CHOICES:
            raise SpecError((*loc, "choices"), f"at most {MAX_CHOICES} choices, got {len(choices)}")
        return Choices(tuple(choices))
    if isinstance(raw, Mapping) and ("low" in raw or "high" in raw):
        extra = set(raw) - RANGE_KEYS
        if extra:
            raise SpecError((*loc, sorted(extra)[0]), f"unknown key; a range takes {sorted(RANGE_KEYS)}")
        for key in ("low", "high"):
            if key not in raw:
                raise SpecError((*loc, key), "is required in a range")
        low, high = _number(raw["low"], (*loc, "low")), _number(raw["high"], (*loc, "high"))
        if low > high:
            raise RuleError((*loc, "low"), f"low ({low}) must be <= high ({high})")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise SpecError((*loc, "log"), "must be true or false")
        if log and low <= 0:
            raise RuleError((*loc, "low"), f"a log range needs low > 0, got {low}")
        step = raw.get("step")
        if step is not None:
            step = _number(step, (*loc, "step"))
            if step <= 0:
                raise SpecError((*loc, "step"), f"must be > 0, got {step}")
            if log:
                raise RuleError((*loc, "step"), "a range cannot be both log and stepped")
        unit = raw.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise SpecError((*loc, "unit"), "must be a string")
        return Range(low, high, log, step, unit)
    if isinstance(raw, Mapping):
        raise SpecError(loc, "an object here must be a range {low, high} or {choices: [...]}")
    return Constant(raw)


def suggest(trial: TrialLike, name: str, param: Param, units: Mapping[str, float] | None = None) -> Any:
    """Draw the value of ``param`` under Optuna name ``name``; a range with a unit is scaled by ``units[unit]``."""
    if isinstance(param, Constant):
        return param.value
    if isinstance(param, Choices):
        return trial.suggest_categorical(name, list(param.choices))
    if param.is_int:
        value: float = trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1),
                                         log=param.log)
    else:
        value = trial.suggest_float(name, float(param.low), float(param.high), step=param.step, log=param.log)
    if param.unit is None:
        return value
    if units is None or param.unit not in units:
        raise SpecError((name, "unit"), f"unit {param.unit!r} has no value for this study")
    return value * units[param.unit]


def candidates(param: Param) -> list[Any]:
    """The values at the edges of ``param``: enough to check per-value rules (e.g. lr > 0) before sampling.

    A range with a unit is checked in its own units (the absolute value is known only once the probe has run).
    """
    if isinstance(param, Constant):
        return [param.value]
    if isinstance(param, Choices):
        return list(param.choices)
    return [param.low, param.high]
