"""The study spec's ``schedule``: a single family, ``phases``, or ``{"choices": [...]}`` across schedules.

``validate`` refuses a bad space with a ``SpecError`` naming the field (relative to ``schedule``); ``sample`` draws a
concrete schedule from an Optuna trial, define-by-run, so a family's parameters exist only in trials that chose it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from phasetune.search_spaces import params, presets, segment, units
from phasetune.search_spaces.errors import Loc, RuleError, SpecError

PHASES = "phases"
# Limits that keep a spec (stored, returned by every read, expanded per trial) small; far above real searches.
MAX_SCHEDULE_CHOICES = 64
MAX_PHASES = 16


def validate(space: Any, epochs: int, steps_per_epoch: int) -> None:
    """Refuse a space that cannot yield a valid schedule over ``epochs`` epochs of ``steps_per_epoch`` steps (the
    workload's own: a duration that rounds to zero steps there is refused here, not in a trial)."""
    if isinstance(space, Mapping) and "choices" in space:
        if set(space) != {"choices"}:
            raise SpecError((sorted(set(space) - {"choices"})[0],), "a schedule choice takes only 'choices'")
        options = space["choices"]
        if not isinstance(options, list) or not options:
            raise SpecError(("choices",), "must be a non-empty list of schedules")
        if len(options) > MAX_SCHEDULE_CHOICES:
            raise SpecError(("choices",), f"at most {MAX_SCHEDULE_CHOICES} schedules, got {len(options)}")
        for i, option in enumerate(options):
            if isinstance(option, Mapping) and "choices" in option:
                raise SpecError(("choices", i), "schedule choices cannot nest")
            try:
                validate(option, epochs, steps_per_epoch)
            except SpecError as err:
                raise err.under("choices", i) from None
        return
    if presets.is_preset(space):
        presets.validate(space, epochs, steps_per_epoch)
        return
    if isinstance(space, Mapping) and space.get("family") == PHASES:
        _validate_phases(space, epochs, steps_per_epoch)
        return
    segment.validate(space, (), epochs, steps_per_epoch, default_family=None)


def _validate_phases(space: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> None:
    extra = set(space) - {"family", "phases", "transition_epochs"}
    if extra:
        raise SpecError((sorted(extra)[0],), "unknown field; 'phases' takes 'phases' and 'transition_epochs'")
    phases = space.get("phases")
    if not isinstance(phases, list) or not phases:
        raise SpecError(("phases",), "must be a non-empty list of phases")
    if len(phases) > MAX_PHASES:
        raise SpecError(("phases",), f"at most {MAX_PHASES} phases, got {len(phases)}")
    transitions = space.get("transition_epochs", [])
    if not isinstance(transitions, list):
        raise SpecError(("transition_epochs",), "must be a list of epochs (one per boundary)")
    if len(transitions) != len(phases) - 1:
        raise RuleError(("transition_epochs",), f"must list {len(phases) - 1} epochs (one per boundary)")
    bounds = [(0, 0), *_transition_bounds(transitions, epochs), (epochs, epochs)]
    for i, phase in enumerate(phases):
        # Checked over the longest span the phase can get: what fails there fails in every trial, so it is refused
        # now (with constant boundaries, the exact span); what fails only in shorter draws ends those trials FAIL.
        longest = bounds[i + 1][1] - bounds[i][0]
        segment.validate(phase, ("phases", i), longest, steps_per_epoch, default_family="constant")


def _transition_bounds(transitions: list[Any], epochs: int) -> list[tuple[float, float]]:
    """Each boundary's (low, high) in epochs, checked: within [1, epochs - 1], strictly increasing."""
    found: list[tuple[float, float]] = []
    previous: params.Param | None = None
    for i, raw in enumerate(transitions):
        loc = ("transition_epochs", i)
        parsed = params.parse(raw, loc)
        if isinstance(parsed, params.Choices):
            raise SpecError(loc, "a transition epoch is a number or a range, not choices")
        units.check(parsed, "transition_epochs", loc)
        low, high = _bounds(parsed, loc)
        if low < 1 or high > epochs - 1:
            raise RuleError(loc, f"must lie in [1, epochs - 1] = [1, {epochs - 1}], got [{low}, {high}]")
        if previous is not None:
            prev_low, prev_high = _bounds(previous, loc)
            if low <= prev_low or high <= prev_high:
                raise RuleError(loc, "transition epochs must be strictly increasing")
        previous = parsed
        found.append((low, high))
    return found


def _bounds(parsed: params.Param, loc: Loc) -> tuple[float, float]:
    if isinstance(parsed, params.Range):
        return parsed.low, parsed.high
    value = parsed.value  # type: ignore[union-attr]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(loc, f"must be a number of epochs, got {value!r}")
    return value, value


def choice_labels(options: list[Mapping[str, Any]]) -> list[str]:
    """Stable, readable labels for schedule choices: the family name, numbered when a family repeats."""
    names = [str(option.get("family", option.get(presets.PRESET))) for option in options]
    return [name if names.count(name) == 1 else f"{name}{i}" for i, name in enumerate(names)]


def check_expandable(space: Mapping[str, Any], epochs: int, units: Mapping[str, float]) -> None:
    """Refuse a space whose presets cannot expand with the study's probe ``units`` (no regime left to search):
    a property of the study, not of one sample, so it fails the study before any trial runs."""
    for option in space["choices"] if "choices" in space else [space]:
        if presets.is_preset(option):
            presets.expand(option, epochs, units)


# Optuna param names: written by ``sample`` and read back by whatever groups a trial's params by schedule position
# (``workers.branching``), so the naming has this one owner. An option of ``choices`` prefixes its params with
# "<label>.".
CHOICE_PARAM = "schedule"  # the categorical between the options of a space with ``choices``
_PHASE_PARAM = re.compile(r"^(?:[^.]+\.)?phase(\d+)\.")
_BOUNDARY_PARAM = re.compile(r"^(?:[^.]+\.)?transition_epoch(\d+)$")


def _phase_prefix(prefix: str, index: int) -> str:
    return f"{prefix}phase{index}."


def _boundary_param(prefix: str, index: int) -> str:
    return f"{prefix}transition_epoch{index}"


def phase_index(name: str) -> int | None:
    """The phase whose setting param ``name`` is (None: not a phase's)."""
    return int(match.group(1)) if (match := _PHASE_PARAM.match(name)) else None


def boundary_index(name: str) -> int | None:
    """``i`` when param ``name`` is the transition epoch between phases ``i`` and ``i + 1`` (None: it is not)."""
    return int(match.group(1)) if (match := _BOUNDARY_PARAM.match(name)) else None


def sample(trial: params.TrialLike, space: Mapping[str, Any], epochs: int,
           units: Mapping[str, float] | None = None, prefix: str = "") -> dict[str, Any]:
    """A concrete schedule (numbers only) drawn from ``space``; Optuna param names are prefixed by the path."""
    if "choices" in space:
        labels = choice_labels(space["choices"])
        label = trial.suggest_categorical(f"{prefix}{CHOICE_PARAM}", labels)
        return sample(trial, space["choices"][labels.index(label)], epochs, units, prefix=f"{label}.")
    if presets.is_preset(space):  # expanded here: only the driver knows the study's probe units
        return sample(trial, presets.expand(space, epochs, units or {}), epochs, units, prefix)
    if space.get("family") != PHASES:
        return segment.sample(trial, space, prefix, default_family=None, units=units)
    phases = [
        segment.sample(trial, phase, _phase_prefix(prefix, i), default_family="constant", units=units)
        for i, phase in enumerate(space["phases"])
    ]
    transitions: list[float] = []
    for i, raw in enumerate(space.get("transition_epochs", [])):
        parsed = params.parse(raw)
        if isinstance(parsed, params.Range) and transitions:
            # Keep boundaries strictly increasing: the next one starts after the previous draw.
            gap = 1 if parsed.is_int else 1e-3
            parsed = params.Range(max(parsed.low, transitions[-1] + gap), parsed.high, parsed.log, parsed.step)
        transitions.append(params.suggest(trial, _boundary_param(prefix, i), parsed, units))
    return {"family": PHASES, "phases": phases, "transition_epochs": transitions}


def checkpoint_epochs(space: Mapping[str, Any], epochs: int) -> tuple[int, ...]:
    """The epochs (0-based) at whose end a later phase of some sample of ``space`` could begin: the transition-epoch
    grid, each candidate boundary ``t`` as the last full epoch before it, ``floor(t) - 1``. A checkpoint there is
    where a branch of the trial could start (``phasetune.workers.branching``). Empty for a space without phases."""
    grid: set[int] = set()
    for option in space["choices"] if "choices" in space else [space]:
        if presets.is_preset(option):
            transitions = [option.get("transition_epoch", presets.default_transition(epochs))]
        elif option.get("family") == PHASES:
            transitions = list(option.get("transition_epochs", []))
        else:
            continue
        for raw in transitions:
            parsed = params.parse(raw)
            if isinstance(parsed, params.Range):
                grid.update(range(math.floor(parsed.low) - 1, math.floor(parsed.high)))
            else:
                grid.update(math.floor(float(value)) - 1 for value in params.candidates(parsed))
    return tuple(sorted(e for e in grid if 0 <= e < epochs - 1))
