"""phasetune: hyperparameter search over training schedules, on Optuna and Ray Tune.

The public surface, in the Optuna manner: ``phasetune.attach`` (a searched schedule on your own optimizer),
the spec errors, ``phasetune.workloads`` (the plugin contract) and ``__version__``. The subpackages
``phasetune.service`` (API, CLI), ``phasetune.workers`` (Ray runner, training loop) and
``phasetune.search_spaces`` (schedules, spaces, probes) are the implementation.

Names are resolved lazily (PEP 562): ``import phasetune`` alone, as the CLI does, loads neither torch nor Ray.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__: str = metadata.version("phasetune")  # one place: the installed distribution's metadata
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from phasetune.search_spaces.attach import ScheduleDriver, attach
    from phasetune.search_spaces.errors import RuleError, SpecError

_LAZY = {
    "attach": "phasetune.search_spaces.attach",
    "ScheduleDriver": "phasetune.search_spaces.attach",
    "SpecError": "phasetune.search_spaces.errors",
    "RuleError": "phasetune.search_spaces.errors",
}

__all__ = ["RuleError", "ScheduleDriver", "SpecError", "__version__", "attach", "workloads"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name == "workloads":
        return import_module("phasetune.workloads")
    raise AttributeError(f"module 'phasetune' has no attribute {name!r}")
