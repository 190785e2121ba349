"""The schedule language as JSON Schema, generated from the registries that validation reads (families and their
fields, optimizer and warmup fields, presets, units, the limits), so the published schema and the checks cannot
drift: a new family or field appears in both.

The schema states shapes, kinds, enums and per-value bounds. What it cannot state is left to ``space.validate``,
which raises ``RuleError`` for it: rules across fields (``low <= high``, increasing milestones, ``base_momentum <=
max_momentum``) and rules against the study (transition epochs within ``[1, epochs - 1]``, durations of at least
one optimizer step of the workload). ``schedule_schema`` returns the root and its named definitions; the API puts
the definitions under ``components/schemas``.
"""

from __future__ import annotations

from typing import Any

from phasetune.search_spaces import params, presets, space, units
from phasetune.search_spaces.families import FAMILIES, Field
from phasetune.search_spaces.families.base import MAX_FLOAT
from phasetune.search_spaces.families.warmup import WARMUP_FIELDS
from phasetune.search_spaces.segment import EFFECTIVE_LR, EFFECTIVE_LR_FIELD, OPTIMIZER_FIELDS, WARMUP

_KINDS = {"float": "number", "int": "integer", "bool": "boolean", "str": "string"}
ROOT = "Schedule"


def _value(field: Field) -> dict[str, Any]:
    """One concrete value of ``field``."""
    kind = "float" if field.kind == "list" else field.kind  # a list field's elements
    schema: dict[str, Any] = {"type": _KINDS[kind], **(field.check.json_schema() if field.check else {})}
    if kind in ("float", "int"):  # a JSON number beyond any float (10**400) is none here
        if "exclusiveMinimum" not in schema:
            schema.setdefault("minimum", -MAX_FLOAT)
        if "exclusiveMaximum" not in schema:
            schema.setdefault("maximum", MAX_FLOAT)
    return schema


def _range(value: dict[str, Any], unit: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"low": value, "high": value, "log": {"type": "boolean"},
                                  "step": {"type": value["type"], "exclusiveMinimum": 0}}
    if unit:
        properties["unit"] = {"enum": list(units.UNITS), "description": "lr_crit = 2/lambda0 (curvature probe), "
                                                                       "lr_div = the range test's divergence LR"}
    return {"type": "object", "properties": properties, "required": ["low", "high"], "additionalProperties": False,
            "description": "searched between low and high, inclusive (low <= high; log needs low > 0; not both "
                           "log and step)"}


def _choices(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["choices"], "additionalProperties": False,
            "properties": {"choices": {"type": "array", "items": value, "minItems": 1,
                                       "maxItems": params.MAX_CHOICES}}}


def param(value: dict[str, Any], *, searchable_range: bool = True, unit: bool = False) -> dict[str, Any]:
    """A hyperparameter: a constant, a range (numbers only) or choices."""
    options = [value]
    if searchable_range and value.get("type") in ("number", "integer"):
        options.append(_range(value, unit))
    options.append(_choices(value))
    return {"anyOf": options}


def _field(name: str, field: Field) -> dict[str, Any]:
    value = _value(field)
    if field.kind == "list":  # whole (choices of lists) or element by element (each a hyperparameter)
        whole = {"type": "array", "items": value, "minItems": 1}
        schema: dict[str, Any] = {"anyOf": [{"type": "array", "minItems": 1, "items": param(value)},
                                            _choices(whole)]}
    else:
        schema = param(value, unit=name in units.LR_FIELDS)
    if field.default is None and not field.required:  # null (unset) is a value too, alone or among choices
        nullable = {"anyOf": [{"type": "null"}, value]}
        schema = {"anyOf": [{"type": "null"}, *schema["anyOf"][:-1], _choices(nullable)]}
    if field.default is not None:
        schema["default"] = field.default
    return schema


def _ref(name: str, prefix: str) -> dict[str, str]:
    return {"$ref": f"{prefix}{name}"}


def _segment(family: str, in_phases: bool, prefix: str) -> dict[str, Any]:
    """One family with its optimizer settings (a whole schedule, or a phase where ``constant`` is the default)."""
    cls = FAMILIES[family]
    fields = {**OPTIMIZER_FIELDS, **cls.fields}
    properties: dict[str, Any] = {"family": {"const": family}}
    properties.update({name: _field(name, field) for name, field in fields.items()})
    properties[WARMUP] = _ref("Warmup", prefix)
    required = [name for name, field in fields.items() if field.required]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False,
                              "title": family, "description": (cls.__doc__ or "").strip().split("\n\n")[0]}
    if "lr" in cls.fields:
        # lr, or the effective step lr / (1 - momentum) with the momentum (the two-regimes parameterisation).
        properties[EFFECTIVE_LR] = _field(EFFECTIVE_LR, EFFECTIVE_LR_FIELD)
        # With effective_lr the momentum is required and not null; a concrete schedule records both lr and
        # effective_lr (a rule_error unless they agree).
        schema["anyOf"] = [{"required": ["lr"], "not": {"required": [EFFECTIVE_LR]}},
                           {"required": [EFFECTIVE_LR, "momentum"],
                            "properties": {"momentum": param(_value(OPTIMIZER_FIELDS["momentum"]))}}]
        required = [name for name in required if name != "lr"]
    if not (in_phases and family == "constant"):
        required = ["family", *required]
    if required:
        schema["required"] = required
    return schema


def _transition() -> dict[str, Any]:
    epochs = {"type": "number", "minimum": 1}
    return {"anyOf": [epochs, _range(epochs, unit=False)],
            "description": "the epoch a phase starts: in [1, epochs - 1], increasing along the list"}


def _phases(prefix: str) -> dict[str, Any]:
    phase = {"anyOf": [_ref(f"Segment.{name}", prefix) for name in FAMILIES] + [_ref("Phase.constant", prefix)]}
    return {"type": "object", "title": "phases", "additionalProperties": False,
            "required": ["family", "phases"],
            "description": "phases run one after the other, each with its own family and optimizer settings; a "
                           "phase's family defaults to constant",
            "properties": {"family": {"const": space.PHASES},
                           "phases": {"type": "array", "items": phase, "minItems": 1, "maxItems": space.MAX_PHASES},
                           "transition_epochs": {"type": "array", "items": _transition(),
                                                 "maxItems": space.MAX_PHASES - 1,
                                                 "description": "one epoch per boundary: as many as phases - 1"}}}


def _preset() -> dict[str, Any]:
    momentum = param({"type": "number", **presets.PHASE2_MOMENTUM.json_schema()})
    effective = _range({"type": "number", **presets.PHASE2_EFFECTIVE_LR.json_schema()}, unit=False)
    properties: dict[str, Any] = {
        presets.PRESET: {"enum": list(presets.PRESETS)},
        "phase1_upper": {"type": "number", **presets.PHASE1_UPPER.json_schema()},
        "phase2_effective_lr": effective,
        "phase2_momentum": momentum,
        "transition_epoch": _transition(),
    }
    for name, text in presets.REGIMES_OPTIONS.items():
        properties[name] = {**properties[name], "description": text}
    return {"type": "object", "title": "preset", "required": [presets.PRESET], "additionalProperties": False,
            "properties": properties, "description": (presets.__doc__ or "").strip().split("\n\n")[0]}


def schedule_schema(prefix: str = "#/$defs/") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The schedule's JSON Schema: the root (a ``$ref``) and the definitions it refers to, by name, where
    ``prefix`` is how the document that holds them refers to them."""
    defs: dict[str, dict[str, Any]] = {}
    for name in FAMILIES:
        defs[f"Segment.{name}"] = _segment(name, in_phases=False, prefix=prefix)
    defs["Phase.constant"] = _segment("constant", in_phases=True, prefix=prefix)
    defs["Warmup"] = {"type": "object", "additionalProperties": False,
                      "required": [k for k, f in WARMUP_FIELDS.items() if f.required],
                      "properties": {k: _field(k, f) for k, f in WARMUP_FIELDS.items()},
                      "description": "a linear ramp to the family's first lr over its first epochs"}
    defs["Phases"] = _phases(prefix)
    defs["Preset"] = _preset()
    one = [_ref(f"Segment.{name}", prefix) for name in FAMILIES] + [_ref("Phases", prefix), _ref("Preset", prefix)]
    defs["ScheduleOption"] = {"anyOf": one}
    defs[ROOT] = {
        "description": "a single family, phases, a preset, or choices across them (searched as a categorical)",
        "anyOf": [*one, {"type": "object", "required": ["choices"], "additionalProperties": False,
                         "properties": {"choices": {"type": "array", "minItems": 1,
                                                    "maxItems": space.MAX_SCHEDULE_CHOICES,
                                                    "items": _ref("ScheduleOption", prefix)}}}]}
    return _ref(ROOT, prefix), defs


def standalone() -> dict[str, Any]:
    """The schema as one self-contained JSON Schema document (for editors and ``jsonschema``)."""
    root, defs = schedule_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **root, "$defs": defs}
