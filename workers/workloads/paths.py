"""Paths under the data root: a workload's ``path`` parameter names data there, and nothing outside it is opened.

The root is the service's ``PHASETUNE_DATA_ROOT`` (default ``.phasetune/data``), recorded with each study so that
every Ray node reads the same place (in a cluster, a volume mounted at the same path everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from phasetune.search_spaces.errors import SpecError

DATA_ROOT_ENV = "PHASETUNE_DATA_ROOT"
DEFAULT_DATA_ROOT = Path(".phasetune") / "data"


def default_data_root() -> Path:
    """``$PHASETUNE_DATA_ROOT``, else ``.phasetune/data`` (absolute, from the current directory)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).resolve()


def resolve_under(root: str | Path, relative: object, loc: tuple) -> Path:
    """The absolute path that ``relative`` names under ``root``; SpecError at ``loc`` unless it is a relative path
    without ``..`` that, with every symlink resolved, stays inside the root and exists. Only the path is looked
    at (``realpath``): no file is opened here, and none outside the root ever is."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise SpecError(loc, f"must be a path relative to the data root, got {relative!r}")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or \
            PureWindowsPath(relative).drive:
        raise SpecError(loc, f"must be relative to the data root, not absolute: {relative!r}")
    if ".." in PurePosixPath(relative).parts or ".." in PureWindowsPath(relative).parts:
        raise SpecError(loc, f"may not climb out of the data root with '..': {relative!r}")
    try:
        root_real = Path(root).resolve()
        target = (root_real / relative).resolve()
        inside = target.is_relative_to(root_real)
        exists = inside and target.exists()
    except (OSError, RuntimeError, ValueError) as err:  # a name too long, a symlink loop, ...
        raise SpecError(loc, f"cannot be resolved under the data root: {type(err).__name__}") from None
    if not inside:
        raise SpecError(loc, f"resolves outside the data root (a symlink out?): {relative!r}")
    if not exists:
        raise SpecError(loc, f"no such file or directory under the data root {str(root_real)!r}: {relative!r}")
    return target


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies in ``folder`` (a resolved path): checked before each
    listing or read of a file a user's folder names."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):
        return False
