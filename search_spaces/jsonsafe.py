"""The one rule for making a value JSON-safe, used wherever phasetune stores or answers a value JSON must carry.

JSON has no NaN or Infinity, and a strict encoder (Starlette's ``JSONResponse``, PostgreSQL's ``json``) refuses
them, so a non-finite float becomes ``null``: "no number", as JavaScript's ``JSON.stringify`` writes it (a diverged
probe's NaN loss, a client's echoed ``1e999``). A string UTF-8 cannot encode (a lone surrogate a client sent) keeps
that character as its backslash escape. Enums become their values; tuples become lists.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """``value``, recursively, as JSON can carry it (the module's rule)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
