"""Schedule presets: named spaces that expand into a concrete ``phases`` space once the probe units are known.

``{"preset": "regimes", ...options}`` is the two-regimes paper's schedule in the model's own units (issue 5):

* phase 1, the large-step regime: SGD without momentum, ``lr`` log-uniform in
  ``[lr_crit, phase1_upper * lr_div]``: above the plain-GD stability edge, below where the range test diverged;
* phase 2, the small-step regime: ``effective_lr = lr / (1 - momentum)`` log-uniform in
  ``phase2_effective_lr`` × lr_crit (default [0.01, 1.0]) with a high momentum (``phase2_momentum``);
* the transition epoch searched (``transition_epoch``, default [0.3E, 0.9E]).

Validation (at submission) needs no units: options are checked in their own units and the located error names
the option. Expansion happens where the units are known: in the driver, at sampling time (``space.sample``).
Both phases' ranges are stated in units of ``lr_crit``, so a trial's Optuna params read "× lr_crit".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phasetune.search_spaces import params, segment
from phasetune.search_spaces.checks import Interval
from phasetune.search_spaces.errors import RuleError, SpecError
from phasetune.search_spaces.families.base import momentum_range
from phasetune.search_spaces.units import UNITS

PRESET = "preset"
REGIMES = "regimes"
PRESETS = (REGIMES,)

REGIMES_OPTIONS: dict[str, str] = {
    "phase1_upper": "fraction of lr_div that bounds phase 1's lr from above, in (0, 1] (default 1.0)",
    "phase2_effective_lr": "phase 2's lr / (1 - momentum) in units of lr_crit, a range within (0, 1] "
                           "(default {low: 0.01, high: 1.0}, log)",
    "phase2_momentum": "phase 2's momentum: a constant, range or choices in [0, 1) "
                       "(default {choices: [0.9, 0.95, 0.98, 0.99]})",
    "transition_epoch": "the epoch phase 2 starts: a constant or range in [1, epochs - 1] "
                        "(default [0.3, 0.9] x epochs)",
}
# The options' bounds: checked here, published by search_spaces.schema.
PHASE1_UPPER = Interval(0, 1, open_low=True)
PHASE2_EFFECTIVE_LR = Interval(0, 1, open_low=True)  # x lr_crit: phase 2 is the small-step regime
PHASE2_MOMENTUM = momentum_range
DEFAULT_PHASE2_EFFECTIVE_LR = {"low": 0.01, "high": 1.0, "log": True}
DEFAULT_PHASE2_MOMENTUM = {"choices": [0.9, 0.95, 0.98, 0.99]}


def is_preset(space: Any) -> bool:
    return isinstance(space, Mapping) and PRESET in space


def required_units(space: Any) -> set[str]:
    """The units a schedule space needs before it can be sampled (a preset needs both of its units)."""
    found: set[str] = set()
    if is_preset(space):
        found |= set(UNITS)
    if isinstance(space, Mapping):
        if isinstance(space.get("unit"), str) and ("low" in space or "high" in space):
            found.add(space["unit"])
        for value in space.values():
            found |= required_units(value)
    elif isinstance(space, list):
        for value in space:
            found |= required_units(value)
    return found


def default_transition(epochs: int) -> int | dict[str, int]:
    low = min(max(1, round(0.3 * epochs)), epochs - 1)
    high = min(epochs - 1, max(low, round(0.9 * epochs)))
    return low if low == high else {"low": low, "high": high}


def validate(space: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> None:
    """Refuse a preset whose options cannot expand into a valid space; the error names the option."""
    name = space.get(PRESET)
    if name not in PRESETS:
        raise SpecError((PRESET,), f"unknown preset {name!r}; one of {list(PRESETS)}")
    for key in space:
        if key != PRESET and key not in REGIMES_OPTIONS:
            raise SpecError((key,), f"unknown option of preset {name!r}; expected one of {sorted(REGIMES_OPTIONS)}")
    if epochs < 2:
        raise RuleError((PRESET,), f"preset {name!r} has two phases and needs epochs >= 2, got {epochs}")
    upper = space.get("phase1_upper", 1.0)
    if isinstance(upper, bool) or not isinstance(upper, (int, float)) or not PHASE1_UPPER.contains(upper):
        raise SpecError(("phase1_upper",), f"must be a number in (0, 1], got {upper!r}")
    _check_effective_lr(space.get("phase2_effective_lr", DEFAULT_PHASE2_EFFECTIVE_LR))
    momentum = params.parse(space.get("phase2_momentum", DEFAULT_PHASE2_MOMENTUM), ("phase2_momentum",))
    if isinstance(momentum, params.Range) and momentum.unit is not None:
        raise SpecError(("phase2_momentum", "unit"), "a momentum has no unit")
    for value in params.candidates(momentum):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not PHASE2_MOMENTUM.contains(value):
            raise SpecError(("phase2_momentum",), f"must lie in [0, 1), got {value!r}")
    transition = params.parse(space.get("transition_epoch", default_transition(epochs)), ("transition_epoch",))
    if isinstance(transition, params.Choices) or (isinstance(transition, params.Range) and transition.unit):
        raise SpecError(("transition_epoch",), "must be a number of epochs or a range without a unit")
    for value in params.candidates(transition):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= epochs - 1:
            raise RuleError(("transition_epoch",), f"must lie in [1, epochs - 1] = [1, {epochs - 1}], got {value!r}")
    # The expansion with nominal units must be a valid phases space (a safety net: the checks above name options).
    nominal = {"lr_crit": upper, "lr_div": 2.0}  # phase 1 spans [1, 2] x lr_crit (2 / upper overflows a tiny upper)
    for i, phase in enumerate(expand(space, epochs, nominal)["phases"]):
        segment.validate(phase, ("phases", i), epochs, steps_per_epoch, default_family="constant")


def _check_effective_lr(raw: Any) -> None:
    loc = ("phase2_effective_lr",)
    parsed = params.parse(raw, loc)
    if not isinstance(parsed, params.Range):
        raise SpecError(loc, "must be a range {low, high} in units of lr_crit")
    if parsed.unit is not None:
        raise SpecError((*loc, "unit"), "is always lr_crit here; leave 'unit' out")
    if not PHASE2_EFFECTIVE_LR.contains(parsed.low):
        raise SpecError((*loc, "low"), f"must be > 0, got {parsed.low}")
    if not PHASE2_EFFECTIVE_LR.contains(parsed.high):
        raise SpecError((*loc, "high"),
                        f"phase 2 is the small-step regime: must be <= 1 (x lr_crit), got {parsed.high}")


def expand(space: Mapping[str, Any], epochs: int, units: Mapping[str, float]) -> dict[str, Any]:
    """The concrete ``phases`` space of a preset, for a study whose probes gave ``units``."""
    missing = [u for u in UNITS if u not in units]
    if missing:
        raise SpecError((PRESET,), f"preset {space.get(PRESET)!r} needs the probe units {missing}; the probes "
                                   "did not give them for this study")
    lr_crit, lr_div = float(units["lr_crit"]), float(units["lr_div"])
    upper = float(space.get("phase1_upper", 1.0))
    ratio = upper * lr_div / lr_crit  # phase 1's upper end in units of lr_crit
    if ratio <= 1.0:
        raise SpecError(("phase1_upper",), f"phase1_upper * lr_div = {upper * lr_div:.4g} is not above lr_crit = "
                                           f"{lr_crit:.4g}: no large-step regime to search; state the ranges "
                                           "explicitly instead")
    effective = {**space.get("phase2_effective_lr", DEFAULT_PHASE2_EFFECTIVE_LR), "unit": "lr_crit"}
    if "log" not in effective and "step" not in effective:
        effective["log"] = True  # a step size spans decades
    return {
        "family": "phases",
        "phases": [
            {"optimizer": "sgd", "lr": {"low": 1.0, "high": ratio, "log": True, "unit": "lr_crit"},
             "momentum": 0.0},
            {"optimizer": "sgd", "effective_lr": effective,
             "momentum": space.get("phase2_momentum", DEFAULT_PHASE2_MOMENTUM)},
        ],
        "transition_epochs": [space.get("transition_epoch", default_transition(epochs))],
    }
