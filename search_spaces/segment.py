"""A segment: one family plus the optimizer settings it runs with (a phase, or a whole single-family schedule).

``{"family": "cosine", "lr": {...}, "eta_min": 0.0, "optimizer": "sgd", "momentum": 0.9}``: the optimizer keys are
shared by every family, the rest are the family's own fields. Inside ``phases`` the family defaults to ``constant``,
so a two-regimes phase reads ``{"lr": 0.5, "momentum": 0.0}``.

Two more keys work with every family:

* ``"warmup": {"epochs": 1.0, "start_factor": 0.0}`` wraps the family in a linear warmup (``families.Warmup``);
  both values may be searchable.
* ``"effective_lr"`` instead of ``"lr"`` (families with an ``lr`` field; needs ``momentum``): the search runs over
  the effective step ``lr / (1 - momentum)`` and the momentum, which are not confounded (the two-regimes paper's
  equivalence). The concrete schedule records both: ``lr = effective_lr * (1 - momentum)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phasetune.search_spaces import params, units
from phasetune.search_spaces.checks import integral, one_of
from phasetune.search_spaces.errors import Loc, RuleError, SpecError
from phasetune.search_spaces.families import FAMILIES, Field, Horizon, LRSchedule
from phasetune.search_spaces.families.base import check_value, learning_rate, momentum_range, non_negative
from phasetune.search_spaces.families.warmup import WARMUP_FIELDS, Warmup

OPTIMIZERS = ("sgd", "adam", "adamw")
OPTIMIZER_FIELDS: dict[str, Field] = {
    "optimizer": Field("str", "sgd", one_of(*OPTIMIZERS)),
    # None leaves momentum (Adam's beta1) at the optimizer's default.
    "momentum": Field("float", None, momentum_range),
    "nesterov": Field("bool", False),
    "weight_decay": Field("float", 0.0, non_negative),
    # At a phase boundary the optimizer starts fresh (a new algorithm, as in the two-regimes paper) unless this is set.
    "keep_optimizer_state": Field("bool", False),
}
WARMUP = "warmup"
EFFECTIVE_LR = "effective_lr"
EFFECTIVE_LR_FIELD = Field("float", check=learning_rate, required=True)  # given, it is a number


@dataclass(frozen=True)
class OptimizerSettings:
    """What a segment says of its optimizer. None: not stated (a concrete schedule from a study states all).

    An optimizer phasetune makes fills what is unstated with torch's defaults (SGD, no momentum, no weight decay);
    a user's optimizer under ``attach`` keeps its own values for what is unstated.
    """

    name: str | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    keep_state: bool = False

    @property
    def type_name(self) -> str:
        """The optimizer type an optimizer phasetune makes for this segment."""
        return self.name or OPTIMIZER_FIELDS["optimizer"].default


def family_of(spec: Mapping[str, Any], loc: Loc, default: str | None) -> type[LRSchedule]:
    family = spec.get("family", default)
    if family is None:
        raise SpecError((*loc, "family"), f"is required; one of {sorted(FAMILIES)}")
    if not isinstance(family, str) or family not in FAMILIES:
        raise SpecError((*loc, "family"), f"unknown schedule family {family!r}; one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def fields_of(family: type[LRSchedule]) -> dict[str, Field]:
    return {**OPTIMIZER_FIELDS, **family.fields}


def _parse_field(field: Field, raw: Any, loc: Loc) -> params.Param | list[params.Param]:
    """A field's spec; a list field may list one spec per element (e.g. searchable milestones)."""
    if field.kind == "list" and isinstance(raw, list):
        return [params.parse(item, (*loc, i)) for i, item in enumerate(raw)]
    return params.parse(raw, loc)


def _edges(parsed: params.Param | list[params.Param], corner: int) -> Any:
    """The low (corner 0) or high (corner 1) end of a spec, for checking cross-field rules at submission."""
    if isinstance(parsed, list):
        return [_edges(p, corner) for p in parsed]
    values = params.candidates(parsed)
    return values[min(corner, len(values) - 1)] if isinstance(parsed, params.Range) else values[0]


def validate(spec: Any, loc: Loc, span_epochs: float, steps_per_epoch: int, default_family: str | None) -> None:
    """Refuse a segment spec that cannot yield a valid schedule over ``span_epochs``, naming the field."""
    if not isinstance(spec, Mapping):
        raise SpecError(loc, "must be an object")
    family = family_of(spec, loc, default_family)
    fields = fields_of(family)
    for key in spec:
        if key not in ("family", WARMUP, EFFECTIVE_LR) and key not in fields:
            raise SpecError((*loc, key), f"unknown field for family {family.name!r}; expected one of {sorted(fields)}")
    _check_effective_lr(spec, family, loc)
    corners: list[dict[str, Any]] = [{}, {}]
    for key, field in fields.items():
        if key not in spec:
            if field.required and not (key == "lr" and EFFECTIVE_LR in spec):
                raise SpecError((*loc, key), f"is required for family {family.name!r}")
            for corner in corners:
                corner[key] = field.default
            continue
        _add_corners(corners, key, field, spec[key], loc)
    if EFFECTIVE_LR in spec and "lr" not in spec:
        _add_corners(corners, EFFECTIVE_LR, EFFECTIVE_LR_FIELD, spec[EFFECTIVE_LR], loc)
        # The smallest lr pairs the smallest effective step with the largest momentum, and vice versa.
        momentum = [corner["momentum"] for corner in corners]
        for i, corner in enumerate(corners):
            corner["lr"] = corner.pop(EFFECTIVE_LR) * (1 - momentum[1 - i])
    if WARMUP in spec:
        _validate_warmup(spec[WARMUP], corners, (*loc, WARMUP))
    horizon = Horizon(total_steps=round(span_epochs * steps_per_epoch), steps_per_epoch=steps_per_epoch)
    for corner in corners:
        try:
            build(family.name, corner, horizon)
        except SpecError as err:  # every value passed its own check: what fails here relates fields or the span
            raise RuleError.of(err).under(*loc) from None
        except ArithmeticError as err:  # values each allowed, together too large for floats: the client's to fix
            raise RuleError(loc, f"the schedule cannot be computed from these values ({err})") from None


def _add_corners(corners: list[dict[str, Any]], key: str, field: Field, raw: Any, loc: Loc) -> None:
    """Check every value ``raw`` can take against ``field`` and record its low and high ends in ``corners``."""
    parsed = _parse_field(field, raw, (*loc, key))
    if parsed == []:
        raise SpecError((*loc, key), "must list at least one value")
    step = parsed.step if isinstance(parsed, params.Range) else None
    if field.kind == "int" and step is not None and integral(step) != int(step):
        raise SpecError((*loc, key, "step"), f"must be an integer for an int field, got {step}")
    for item_loc, item in _items(parsed, (*loc, key)):
        units.check(item, key, item_loc)
        for value in params.candidates(item):
            if value is None and field.default is None and not field.required:
                continue  # an optional field left unset (e.g. cyclic's step_size_down)
            check_value(_element_field(field, parsed), value, item_loc)
    for i, corner in enumerate(corners):
        corner[key] = _edges(parsed, i)


def _check_effective_lr(spec: Mapping[str, Any], family: type[LRSchedule], loc: Loc) -> None:
    if EFFECTIVE_LR not in spec:
        return
    if "lr" not in family.fields:
        raise SpecError((*loc, EFFECTIVE_LR), f"family {family.name!r} has no 'lr' to reparameterise")
    momentum = spec.get("momentum")
    if momentum is None or None in params.candidates(params.parse(momentum, (*loc, "momentum"))):
        raise SpecError((*loc, "momentum"), "is required with 'effective_lr' (lr = effective_lr * (1 - momentum)), "
                                            "and cannot be null")
    if "lr" in spec and not _recorded_pair(spec):
        raise RuleError((*loc, EFFECTIVE_LR), "give either 'lr' or 'effective_lr', not both (a concrete schedule "
                                             "may record both when lr = effective_lr * (1 - momentum))")


def _recorded_pair(spec: Mapping[str, Any]) -> bool:
    """A concrete schedule records both ``lr`` and ``effective_lr``: fine when they agree."""
    values: list[Any] = [spec.get(k) for k in ("lr", EFFECTIVE_LR, "momentum")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return False
    lr, effective, momentum = values
    return bool(abs(lr - effective * (1 - momentum)) <= 1e-9 * abs(lr))


def _validate_warmup(raw: Any, corners: list[dict[str, Any]], loc: Loc) -> None:
    if not isinstance(raw, Mapping):
        raise SpecError(loc, "must be an object {epochs, start_factor}")
    for key in raw:
        if key not in WARMUP_FIELDS:
            raise SpecError((*loc, key), f"unknown warmup field; expected one of {sorted(WARMUP_FIELDS)}")
    sub: list[dict[str, Any]] = [{}, {}]
    for key, field in WARMUP_FIELDS.items():
        if key in raw:
            _add_corners(sub, key, field, raw[key], loc)
        elif field.required:
            raise SpecError((*loc, key), "is required in a warmup")
        else:
            for corner in sub:
                corner[key] = field.default
    for corner, warmup in zip(corners, sub):
        corner[WARMUP] = warmup


def _items(parsed: params.Param | list[params.Param], loc: Loc) -> list[tuple[Loc, params.Param]]:
    if isinstance(parsed, list):
        return [((*loc, i), p) for i, p in enumerate(parsed)]
    return [(loc, parsed)]


def _element_field(field: Field, parsed: params.Param | list[params.Param]) -> Field:
    """A list field given element-wise checks each element as a number; given whole, as a list."""
    if field.kind == "list" and isinstance(parsed, list):
        return Field("float", check=field.check)
    return field


def sample(trial: params.TrialLike, spec: Mapping[str, Any], prefix: str, default_family: str | None,
           units: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Draw a concrete segment (numbers only, defaults filled in) with Optuna names ``prefix + field``."""
    family = family_of(spec, (), default_family)
    concrete: dict[str, Any] = {"family": family.name}
    for key, field in fields_of(family).items():  # optimizer fields (momentum) come first
        if key == "lr" and EFFECTIVE_LR in spec:
            effective = params.suggest(trial, f"{prefix}{EFFECTIVE_LR}", params.parse(spec[EFFECTIVE_LR]), units)
            concrete[EFFECTIVE_LR] = effective
            concrete["lr"] = effective * (1 - concrete["momentum"])
            continue
        if key not in spec:
            concrete[key] = field.default
            continue
        parsed = _parse_field(field, spec[key], (key,))
        if field.kind == "int" and isinstance(parsed, params.Range):  # 2.0 to 5.0 is an int range (validated)
            parsed = params.Range(integral(parsed.low), integral(parsed.high), parsed.log,
                                  None if parsed.step is None else integral(parsed.step), parsed.unit)
        if isinstance(parsed, list):
            concrete[key] = _sample_increasing(trial, f"{prefix}{key}", parsed, units)
        else:
            concrete[key] = params.suggest(trial, f"{prefix}{key}", parsed, units)
    if WARMUP in spec:
        warmup = spec[WARMUP]
        concrete[WARMUP] = {
            key: params.suggest(trial, f"{prefix}{WARMUP}.{key}", params.parse(warmup[key]), units)
            if key in warmup else field.default
            for key, field in WARMUP_FIELDS.items()
        }
    return concrete


def _sample_increasing(trial: params.TrialLike, name: str, parsed: list[params.Param],
                       units: Mapping[str, float] | None) -> list[Any]:
    """Element-wise list fields (milestones) are increasing: each range starts after the previous draw."""
    values: list[Any] = []
    for i, param in enumerate(parsed):
        if isinstance(param, params.Range) and values and param.unit is None:
            gap = 1 if param.is_int else 1e-3
            low = max(param.low, values[-1] + gap)
            param = params.Range(min(low, param.high), param.high, param.log, param.step)
        values.append(params.suggest(trial, f"{name}{i}", param, units))
    return values


def optimizer_settings(concrete: Mapping[str, Any]) -> OptimizerSettings:
    weight_decay = concrete.get("weight_decay")
    settings = OptimizerSettings(
        name=concrete.get("optimizer"),
        momentum=concrete.get("momentum"),
        nesterov=concrete.get("nesterov"),
        weight_decay=None if weight_decay is None else float(weight_decay),
        keep_state=bool(concrete.get("keep_optimizer_state", False)),
    )
    if settings.nesterov and not (settings.type_name == "sgd" and settings.momentum):
        raise SpecError(("nesterov",), "needs optimizer 'sgd' with momentum > 0")
    return settings


def build(family_name: str, concrete: Mapping[str, Any], horizon: Horizon) -> LRSchedule:
    """The family's schedule over ``horizon`` from a concrete segment (optimizer keys are ignored here)."""
    family = FAMILIES[family_name]
    own = {k: integral(concrete.get(k, f.default)) if f.kind == "int" else concrete.get(k, f.default)
           for k, f in family.fields.items()}
    if EFFECTIVE_LR in concrete and "lr" in family.fields:
        own["lr"] = _lr_from_effective(concrete)
    for key, field in family.fields.items():
        if own[key] is None and field.required:
            raise SpecError((key,), f"is required for family {family_name!r}")
        if own[key] is not None or field.default is not None:
            check_value(field, own[key], (key,))
    optimizer_settings(concrete)
    if concrete.get(WARMUP) is not None:
        return Warmup.wrap(family, own, concrete[WARMUP], horizon)
    return family.from_params(own, horizon)


def _lr_from_effective(concrete: Mapping[str, Any]) -> float:
    effective, momentum = concrete[EFFECTIVE_LR], concrete.get("momentum")
    if momentum is None:
        raise SpecError(("momentum",), "is required with 'effective_lr' (lr = effective_lr * (1 - momentum))")
    check_value(EFFECTIVE_LR_FIELD, effective, (EFFECTIVE_LR,))
    lr = effective * (1 - momentum)
    given = concrete.get("lr")
    if given is not None and abs(given - lr) > 1e-9 * abs(lr):
        raise SpecError(("lr",), f"disagrees with effective_lr * (1 - momentum) = {lr}, got {given}")
    return float(lr)
