"""The one JSON-safety rule (phasetune.search_spaces.jsonsafe): what every stored or answered value goes through."""

from __future__ import annotations

import enum
import json

from phasetune.search_spaces.jsonsafe import json_safe


class Colour(str, enum.Enum):
    RED = "red"


def test_non_finite_numbers_are_null_and_the_rest_is_kept():
    value = {"a": [1.5, float("inf"), float("-inf"), float("nan")], "b": (2, None, True), "c": Colour.RED}
    assert json_safe(value) == {"a": [1.5, None, None, None], "b": [2, None, True], "c": "red"}


def test_a_lone_surrogate_keeps_its_escape_and_encodes():
    safe = json_safe({"bi-\ud800": "x\udfff"})
    assert safe == {"bi-\\ud800": "x\\udfff"}
    json.dumps(safe, allow_nan=False).encode("utf-8")  # what a strict encoder (Starlette's) does


def test_the_probe_results_and_the_422_echo_use_it():
    """The helpers it replaced held two conventions (a string "inf" in the 422 echo, null elsewhere)."""
    from phasetune.search_spaces.probes import result_to_dict
    from phasetune.search_spaces.probes.curvature import CurvatureResult
    from phasetune.service import errors

    assert errors.json_safe is json_safe
    diverged = CurvatureResult(lambda0=float("nan"), lr_crit=float("inf"), iterations=3, batch_size=8, mode="eval",
                               loss_kind="cross_entropy", converged=False)
    stored = result_to_dict(diverged)
    assert stored["lambda0"] is None and stored["lr_crit"] is None and stored["iterations"] == 3
