"""The schedule's published JSON Schema agrees with its validation: what the schema accepts, validation accepts or
refuses only for a rule the schema says it cannot state (RuleError); what validation refuses for any other reason,
the schema refuses too. Checked over every family's searchable space and the validation tests' bad specs; the
API's fuzz test (test_schemathesis) checks the same over generated requests."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from phasetune.search_spaces import FAMILIES, SpecError, validate_schedule
from phasetune.search_spaces.errors import RuleError
from phasetune.search_spaces.families.base import LR_MAX
from phasetune.search_spaces.schema import standalone
from phasetune.search_spaces.segment import OPTIMIZER_FIELDS
from tests.factories import EPOCHS, INVALID, SPACES, SPE, UNIT_ERRORS

SCHEMA = standalone()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_phase_ps10.json"
MORE_VALID = [
    {"preset": "regimes"},
    {"preset": "regimes", "phase1_upper": 0.5, "phase2_momentum": 0.9, "transition_epoch": {"low": 3, "high": 7}},
    {"choices": [{"family": "cosine", "lr": 0.1}, {"preset": "regimes"},
                 {"family": "phases", "phases": [{"lr": 0.5, "momentum": 0.0},
                                                 {"effective_lr": 0.05, "momentum": 0.9}],
                  "transition_epochs": [5]}]},
    {"family": "autodecay", "lr": 0.1, "window": 3.0},  # JSON does not tell 3 from 3.0
    {"family": "cosine", "lr": 0.05, "effective_lr": 0.1, "momentum": 0.5},  # a concrete schedule records both
    {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1, "step_size_down": None},
    json.loads(EXAMPLE.read_text())["schedule"],
]


def test_the_schema_is_valid_json_schema_and_names_every_family_and_field():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for name, family in FAMILIES.items():
        properties = SCHEMA["$defs"][f"Segment.{name}"]["properties"]
        assert set(family.fields) | set(OPTIMIZER_FIELDS) <= set(properties), name
        assert properties["family"] == {"const": name}


@pytest.mark.parametrize("space", [*SPACES.values(), *MORE_VALID],
                         ids=[*SPACES, *(f"more{i}" for i in range(len(MORE_VALID)))])
def test_what_validation_accepts_the_schema_accepts(space: dict):
    validate_schedule(space, EPOCHS, SPE)
    errors = [e.message for e in VALIDATOR.iter_errors(space)]
    assert not errors, errors[:3]


@pytest.mark.parametrize(("space", "loc"), INVALID + UNIT_ERRORS,
                         ids=[".".join(map(str, loc)) for _, loc in INVALID + UNIT_ERRORS])
def test_what_validation_refuses_the_schema_refuses_unless_it_is_a_rule_across_fields(space: dict, loc: tuple):
    with pytest.raises(SpecError) as err:
        validate_schedule(space, EPOCHS, SPE)
    if isinstance(err.value, RuleError):
        return  # across fields or against the study: the schema says it does not state these
    assert not VALIDATOR.is_valid(space), f"the schema accepts what validation refuses: {err.value}"


@pytest.mark.parametrize("space", [
    {"family": "cosine", "lr": 0.1, "eta_min": 0.2},  # eta_min above lr: across fields
    {"family": "constant", "lr": {"low": 0.5, "high": 0.1}},  # low above high
    {"family": "phases", "phases": [{"lr": 0.5}, {"lr": 0.1}], "transition_epochs": [12]},  # beyond epochs
    {"family": "step", "lr": 0.1, "step_size": 0.01},  # shorter than one of the workload's steps
], ids=["cross-field", "low-high", "transition", "span"])
def test_rules_the_schema_cannot_state_are_rule_errors(space: dict):
    assert VALIDATOR.is_valid(space)
    with pytest.raises(RuleError):
        validate_schedule(space, EPOCHS, SPE)


@pytest.mark.parametrize("space", [
    {"family": "sgdr", "lr": 0.1, "t_0": 0.5, "t_mult": {"choices": [1.0459602646578245e308, 1.5]}},
    {"preset": "regimes", "phase1_upper": 5e-324, "phase2_effective_lr": {"low": 5e-324, "high": 5e-324}},
    {"family": "cosine", "lr": LR_MAX, "weight_decay": 1.7976931348623157e308},  # an lr's end: float32's largest
    {"family": "exponential", "lr": LR_MAX, "gamma": 5e-324},
], ids=["sgdr-t_mult", "preset-upper", "cosine-huge", "exponential-tiny"])
def test_extreme_values_the_schema_allows_are_accepted_or_rule_errors(space: dict):
    """Values each within their bounds, at the ends of the floats (what the fuzzer found as 500s): validation
    accepts them or refuses them as a rule, never raises anything else."""
    assert VALIDATOR.is_valid(space)
    try:
        validate_schedule(space, 486, 8)
    except RuleError:
        pass


@pytest.mark.parametrize("space", [
    {"family": "constant", "lr": 1e39},
    {"family": "cyclic", "base_lr": 0.1, "max_lr": {"low": 1.0, "high": 1e308}, "step_size_up": 1},
    {"family": "phases", "phases": [{"lr": 0.1, "eta_min": 1e300, "family": "cosine"}]},
], ids=["constant", "cyclic-range", "eta_min"])
def test_an_lr_beyond_float32_is_refused_by_schema_and_validation_alike(space: dict):
    """torch cannot apply a larger lr to float32 weights (issue 24: lr up to 1e308 ran, and failed with a raw
    RuntimeError): the schema and the check say the same."""
    assert not VALIDATOR.is_valid(space)
    with pytest.raises(SpecError, match="float32"):
        validate_schedule(space, EPOCHS, SPE)
