"""The generic checks of the spec (phasetune.search_spaces.checks): one owner, outside the schedule families, and
one parser for the options of the spec's sub-objects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from phasetune.search_spaces import SpecError, checks
from phasetune.search_spaces.checks import Interval, Options

ROOT = Path(__file__).resolve().parents[1]
GENERIC = {"Interval", "OneOf", "Check", "one_of", "integral", "finite", "Options"}
OPTIONS = Options("thing", {"share": Interval(0, 1), "count": Interval(1, 10)}, integers=frozenset({"count"}),
                  flags=frozenset({"on"}))


def test_options_are_typed_and_none_is_the_default():
    assert OPTIONS.parse({"on": True, "share": 1, "count": 2.0, "later": None}) == {"on": True, "share": 1.0,
                                                                                     "count": 2}
    assert type(OPTIONS.parse({"share": 1})["share"]) is float and type(OPTIONS.parse({"count": 2.0})["count"]) is int


@pytest.mark.parametrize("raw,field", [
    ({"other": 1}, "other"),          # unknown
    ({"on": 1}, "on"),                # a flag takes only a bool
    ({"share": True}, "share"),       # a bool is no number
    ({"share": "0.5"}, "share"),
    ({"share": [0.5]}, "share"),      # Interval alone takes a list element by element: an option is one number
    ({"share": 1.5}, "share"),        # out of bounds
    ({"count": 2.5}, "count"),        # not integral
    ({"count": 10**400}, "count"),    # no finite number
    ({"share": float("nan")}, "share"),
])
def test_a_bad_option_is_a_spec_error_naming_it(raw, field):
    with pytest.raises(SpecError) as err:
        OPTIONS.parse(raw)
    assert err.value.loc == ("thing", field)


def _imported_from(path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    return {(node.module or "", alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def test_nothing_takes_the_generic_checks_from_the_schedules():
    """Early stopping, branching, workloads and the API import them from their own module, not from
    ``families.base`` or ``params`` (where they lived)."""
    owners = {"phasetune.search_spaces.families.base", "phasetune.search_spaces.params"}
    found = [(str(path.relative_to(ROOT)), name)
             for folder in ("search_spaces", "workers", "service", "phasetune", "bench", "tests")
             for path in (ROOT / folder).rglob("*.py")
             for module, name in _imported_from(path) if module in owners and name in GENERIC]
    assert found == []
    assert all(hasattr(checks, name) for name in GENERIC)
