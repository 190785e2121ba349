"""Paths under the data root: a workload's ``path`` parameter names data there, and nothing outside it is opened.

The root is the service's ``PHASETUNE_DATA_ROOT`` (default ``.phasetune/data``), recorded with each study so that
every Ray node reads the same place (in a cluster, a volume mounted at the same path everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from search_spaces.errors import SpecError

DATA_ROOT_ENV = "PHASETUNE_DATA_ROOT"
DEFAULT_DATA_ROOT = Path(".phasetune") / "data"


def default_data_root() -> Path:
    """``$PHASETUNE_DATA_ROOT``, else ``.phasetune/data`` (absolute, from the current directory)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).resolve()


def resolve_under(root: str | Path, relative: object, loc: tuple) -> Path:
    """The absolute path that ``relative`` names under ``root``; SpecError at ``loc`` unless it is a relative path
    without ``..`` that, with every symlink resolved, stays inside the root and exists. Only the path is looked
    at (``realpath``): no file is opened here, and none outside the root ever is."""
    if not isinstance(relative, str) or not relative:
        raise SpecError(loc, f"must be a path relative to the data root, got {relative!r}")
    if Path(relative).is_absolute() or PurePosixPath(relative).is_absolute():
        raise SpecError(loc, f"must be relative to the data root, not absolute: {relative!r}")
    if ".." in PurePosixPath(relative).parts or ".." in Path(relative).parts:
        raise SpecError(loc, f"may not climb out of the data root with '..': {relative!r}")
    root_real = Path(root).resolve()
    target = (root_real / relative).resolve()
    if not target.is_relative_to(root_real):
        raise SpecError(loc, f"resolves outside the data root (a symlink out?): {relative!r}")
    if not target.exists():
        raise SpecError(loc, f"no such file or directory under the data root {str(root_real)!r}: {relative!r}")
    return target
